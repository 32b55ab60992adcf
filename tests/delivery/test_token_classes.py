"""The DS with the AS's real redeemer: the class of a Privacy Pass token (issued to a client of this
homeserver or of another one) decides who may request group ids and create groups; tokens of other
homeservers' ASes are refused outright."""

from __future__ import annotations

from pathlib import Path

import pytest

from phx.auth import AsService
from phx.config import AsConfig
from phx.delivery.core import LocalClientsOnly
from phx.delivery.messages import (
    CreateGroupParams,
    DsSenderId,
    Operation,
    RequestGroupIdResponse,
    SendMessageParams,
    make_roles_extension,
)
from phx.errors import TokenError
from phx.identifiers import Fqdn, UserId
from phx.mls.group import Group
from phx.mls.messages import make_external_senders_extension
from phx.privacypass import (
    IssuerKeyring,
    TokenClass,
    finalize_tokens,
    phoenix_challenge,
    request_tokens,
)
from phx.storage import Database, migrate, open_database
from tests.auth.helpers import Client as AsClient
from tests.auth.helpers import RemoteAs
from tests.delivery.helpers import CAPS, CS, DOMAIN, Client, FakeClock, Harness, Redeeming

OTHER = Fqdn("other.example")
REMOTE = Fqdn("remote.example")


async def as_service(db: Database, domain: Fqdn, clock: FakeClock, **kw: object) -> AsService:
    await migrate(db, "as")
    service = AsService(db, domain, AsConfig(), clock=clock, **kw)  # type: ignore[arg-type]
    await service.keys.ensure(clock())
    return service


@pytest.fixture
async def setup(db: Database) -> tuple[Harness, AsClient, AsClient]:
    """A DS redeeming with its AS's redeemer, a local client and a client of remote.example, with tokens."""
    clock = FakeClock()
    remote_as = RemoteAs(REMOTE, clock())
    auth = await as_service(db, DOMAIN, clock, remote_credentials=remote_as)
    local = await AsClient.new(auth).register(tokens=40)
    remote = remote_as.as_client(auth)
    await remote.fetch_tokens(40)
    h = await Harness.start(db, redeemer=Redeeming(auth.redeemer))
    h.tokens = lambda federated: (remote if federated else local).token()
    return h, local, remote


async def creation_params(h: Harness, creator: Client) -> CreateGroupParams:
    """Request a group id (with a local token) and build the creator's group and CreateGroupParams."""
    h.gid = RequestGroupIdResponse.decode(await h.call(Operation.REQUEST_GROUP_ID, None)).group_id
    ds = h.service.verifying_key_response().external_sender
    creator.group = Group.create(
        CS, creator.credential, creator.sig_priv, now=h.now, group_id=h.group_id.to_mls(), capabilities=CAPS,
        extensions=[make_external_senders_extension([ds]), make_roles_extension((0,))],
    )  # fmt: skip
    gi = creator.g.group_info(ratchet_tree=True, external_pub=True).group_info
    assert gi is not None
    return CreateGroupParams(h.group_id, creator.credential_info, creator.qc, gi, h.ear_key)


async def test_federated_tokens_cannot_create_groups(setup: tuple[Harness, AsClient, AsClient]) -> None:
    h, _, remote = setup
    with pytest.raises(LocalClientsOnly) as refused:
        await h.call(Operation.REQUEST_GROUP_ID, None, remote=True)
    assert (refused.value.status, refused.value.code) == (403, "local_clients_only")
    alice = Client.new("alice")
    params = await creation_params(h, alice)
    with pytest.raises(LocalClientsOnly):
        await h.call(Operation.CREATE_GROUP, params, alice.sig_priv, DsSenderId.leaf(0), remote=True)
    # The refused request spent its token: it cannot be used again, not even where it would be allowed.
    token = remote.token()
    with pytest.raises(LocalClientsOnly):
        await h.call(Operation.REQUEST_GROUP_ID, None, token=token)
    with pytest.raises(TokenError, match="already been spent"):
        await h.call(Operation.CREATE_GROUP, params, alice.sig_priv, DsSenderId.leaf(0), token=token)
    # The same creation with a local token succeeds: the reservation was untouched by the refusals.
    await h.call(Operation.CREATE_GROUP, params, alice.sig_priv, DsSenderId.leaf(0))
    assert h.service.cache._items[h.group_id.encode()]


async def test_federated_tokens_send_and_commit(setup: tuple[Harness, AsClient, AsClient]) -> None:
    h, _, _ = setup
    alice, bob = Client.new("alice"), Client.new("bob")  # bob stands for a client of remote.example
    await h.create(alice)
    await h.add(alice, [bob])
    h.sink.take()
    msg = bob.g.send(b"hello from afar")
    await h.as_member(Operation.SEND_MESSAGE, SendMessageParams(msg, h.ear_key), bob, remote=True)
    assert len(h.sink.take()) == 1
    params = h.update_params(bob)
    await h.as_member(Operation.UPDATE_CLIENT, params, bob, remote=True)
    bob.g.merge_pending_commit()
    alice.g.process(params.commit, now=h.now)
    assert alice.g.epoch == bob.g.epoch
    assert len(h.sink.take()) == 1
    # Local tokens do all of it as well.
    await h.update(alice, [bob])
    msg = alice.g.send(b"hello back")
    await h.as_member(Operation.SEND_MESSAGE, SendMessageParams(msg, h.ear_key), alice)
    assert len(h.sink.take()) == 2


async def test_tokens_of_another_homeserver_are_refused(
    setup: tuple[Harness, AsClient, AsClient], tmp_path: Path
) -> None:
    h, _, _ = setup
    other_db = await open_database(f"sqlite://{tmp_path / 'other.db'}")
    try:
        clock = FakeClock()
        other = await as_service(other_db, OTHER, clock)
        # Genuine tokens of as.other.example, for its own client: they answer another challenge.
        theirs = await AsClient.new(other, UserId.random(OTHER)).register(tokens=1)
        with pytest.raises(TokenError, match="another homeserver"):
            await h.call(Operation.REQUEST_GROUP_ID, None, token=theirs.token())
        # Another AS minting tokens that claim to be ours, in either class: its keys are not ours.
        keys = await IssuerKeyring(other_db, AsConfig().token_time_frame).current(clock())
        for token_class in TokenClass:
            key = keys.key_for(token_class)
            pending = request_tokens(key.public_key, phoenix_challenge(DOMAIN), 1)
            (forged,) = finalize_tokens(pending, key.issue(pending.request, max_batch=1))
            with pytest.raises(TokenError, match="unknown or rotated out"):
                await h.call(Operation.REQUEST_GROUP_ID, None, token=forged.encode())
    finally:
        await other_db.close()
