"""Bad input and attackers: every refusal leaves the group as it was."""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from dataclasses import replace

import pytest

from phx.config import DsConfig
from phx.delivery.core import LocalClientsOnly, NotAdmin, PendingProposals
from phx.delivery.messages import (
    AddUsersParams,
    AddUsersParamsAad,
    CreateGroupParams,
    DeleteGroupParams,
    DsRequest,
    DsSenderId,
    Operation,
    RemoveUsersParams,
    RequestGroupIdResponse,
    SelfRemoveUserParams,
    SendMessageParams,
    UserCredentialInformation,
    WelcomeAttributionCiphertexts,
    make_roles_extension,
)
from phx.delivery.state import WrongEarKey
from phx.errors import (
    AuthError,
    BadRequest,
    Conflict,
    ExpiredError,
    MlsError,
    NotFound,
    SignatureError,
    TokenError,
    ValidationError,
    WrongEpoch,
)
from phx.identifiers import Fqdn, GroupId
from phx.mls.group import Group
from phx.mls.messages import (
    Extension,
    MLSMessage,
    PublicMessage,
    make_external_senders_extension,
)
from phx.storage import Database
from tests.delivery.helpers import (
    CAPS,
    CS,
    DOMAIN,
    Client,
    Harness,
    SingleUse,
    pending_gi_update,
)


@pytest.fixture
async def h(db: Database) -> Harness:
    return await Harness.start(db)


async def group_of_three(h: Harness) -> tuple[Client, Client, Client]:
    alice, bob, carol = Client.new("alice"), Client.new("bob"), Client.new("carol")
    await h.create(alice)
    await h.add(alice, [bob], [carol])
    h.sink.take()
    return alice, bob, carol


def rebuilt(
    params: AddUsersParams, committer: Client, commit: MLSMessage, welcome: MLSMessage | None
) -> AddUsersParams:
    assert welcome is not None
    return replace(params, commit=commit, group_info_update=pending_gi_update(committer.g), welcome=welcome)


async def still_works(h: Harness, committer: Client, others: list[Client]) -> None:
    """The group accepts a fresh, valid commit at the epoch it was at."""
    await h.update(committer, others)


async def test_non_admin_cannot_add_remove_or_delete(h: Harness) -> None:
    alice, bob, carol = await group_of_three(h)
    dave = Client.new("dave")
    params = h.add_params(bob, [[dave]])
    with pytest.raises(NotAdmin):
        await h.as_member(Operation.ADD_USERS, params, bob)
    bob.g.clear_pending_commit()
    res = bob.g.commit(now=h.now, remove=[carol.leaf])
    with pytest.raises(NotAdmin):
        await h.as_member(
            Operation.REMOVE_USERS, RemoveUsersParams(res.commit, h.ear_key, pending_gi_update(bob.g)), bob
        )
    bob.g.clear_pending_commit()
    res = bob.g.commit(now=h.now, remove=[alice.leaf, carol.leaf])
    with pytest.raises(NotAdmin):
        await h.as_member(Operation.DELETE_GROUP, DeleteGroupParams(res.commit, h.ear_key), bob)
    bob.g.clear_pending_commit()
    # a member cannot make itself admin with a roles change either
    upd = h.update_params(bob, group_context_extensions=[*alice.g.extensions[:1], make_roles_extension((1,))])
    with pytest.raises(ValidationError, match="stored proposals"):
        await h.as_member(Operation.UPDATE_CLIENT, upd, bob)
    bob.g.clear_pending_commit()
    assert h.sink.take() == []
    await still_works(h, alice, [bob, carol])


async def test_wrong_ear_key(h: Harness) -> None:
    alice, bob, _ = await group_of_three(h)
    bad = SendMessageParams(bob.g.send(b"x"), os.urandom(32))
    with pytest.raises(WrongEarKey):  # the cached state
        await h.as_member(Operation.SEND_MESSAGE, bad, bob)
    h.service.cache.clear()
    with pytest.raises(WrongEarKey):  # decrypting from the database
        await h.as_member(Operation.SEND_MESSAGE, bad, bob)
    params = h.update_params(bob)
    with pytest.raises(WrongEarKey):  # a commit
        await h.as_member(Operation.UPDATE_CLIENT, replace(params, group_state_ear_key=os.urandom(32)), bob)
    bob.g.clear_pending_commit()
    assert h.sink.take() == []
    await h.as_member(Operation.SEND_MESSAGE, SendMessageParams(bob.g.send(b"y"), h.ear_key), bob)
    assert len(h.sink.take()) == 1


async def test_auth_token_checks(h: Harness) -> None:
    alice, bob, carol = await group_of_three(h)
    params = SendMessageParams(bob.g.send(b"x"), h.ear_key)
    age = DsConfig().max_auth_token_age
    with pytest.raises(ExpiredError):
        await h.as_member(Operation.SEND_MESSAGE, params, bob, timestamp=h.now - age - 1)
    with pytest.raises(ExpiredError):
        await h.as_member(Operation.SEND_MESSAGE, params, bob, timestamp=h.now + 3600)
    await h.as_member(Operation.SEND_MESSAGE, params, bob, timestamp=h.now - age)  # exactly the maximal age
    with pytest.raises(AuthError, match="needs a DsAuthToken"):
        await h.call(Operation.SEND_MESSAGE, params)
    with pytest.raises(SignatureError):  # signed by carol, claims bob's leaf
        await h.call(Operation.SEND_MESSAGE, params, carol.sig_priv, DsSenderId.leaf(bob.leaf))
    with pytest.raises(AuthError, match="not a member"):
        await h.call(Operation.SEND_MESSAGE, params, bob.sig_priv, DsSenderId.leaf(7))
    with pytest.raises(AuthError, match="LeafIndex"):
        await h.call(Operation.SEND_MESSAGE, params, bob.sig_priv, DsSenderId.key_package(b"\x01" * 32))
    # a token for another group
    other = GroupId.random(DOMAIN)
    with pytest.raises(AuthError, match="another group"):
        await h.as_member(Operation.SEND_MESSAGE, params, bob, group_id=other)
    # a token signed for other params or another operation does not transfer
    req = DsRequest.signed(
        Operation.SEND_MESSAGE.value, params, h.group_id, DsSenderId.leaf(bob.leaf), bob.sig_priv, h.now,
        privacy_pass_token=b"t1",
    )  # fmt: skip
    other_params = SendMessageParams(bob.g.send(b"other"), h.ear_key)
    forged = replace(req, params=other_params.encode(), privacy_pass_token=b"t2")
    with pytest.raises(SignatureError):
        await h.service.handle(Operation.SEND_MESSAGE.value, forged.encode())
    res = alice.g.commit(now=h.now, remove=[carol.leaf])
    rm = RemoveUsersParams(res.commit, h.ear_key, pending_gi_update(alice.g))
    req = DsRequest.signed(
        Operation.UPDATE_CLIENT.value, rm, h.group_id, DsSenderId.leaf(alice.leaf), alice.sig_priv, h.now,
        privacy_pass_token=b"t3",
    )  # fmt: skip
    with pytest.raises(SignatureError):
        await h.service.handle(Operation.REMOVE_USERS.value, req.encode())
    alice.g.clear_pending_commit()


async def test_privacy_pass_token_required_and_single_use(db: Database) -> None:
    h = await Harness.start(db, redeemer=SingleUse())
    alice, bob, _ = await group_of_three(h)
    params = SendMessageParams(bob.g.send(b"x"), h.ear_key)
    with pytest.raises(TokenError):
        await h.as_member(Operation.SEND_MESSAGE, params, bob, token=None)
    with pytest.raises(TokenError):
        await h.call(Operation.REQUEST_GROUP_ID, None, token=None)
    req = DsRequest.signed(
        Operation.SEND_MESSAGE.value, params, h.group_id, DsSenderId.leaf(bob.leaf), bob.sig_priv, h.now,
        privacy_pass_token=b"once",
    )  # fmt: skip
    await h.service.handle(Operation.SEND_MESSAGE.value, req.encode())
    assert len(h.sink.take()) == 1
    with pytest.raises(TokenError, match="spent"):  # the replayed request
        await h.service.handle(Operation.SEND_MESSAGE.value, req.encode())
    assert h.sink.take() == []


async def test_commits_failing_mls_validation(h: Harness) -> None:
    alice, bob, carol = await group_of_three(h)
    params = h.update_params(bob)
    pm = params.commit.public_message
    assert pm is not None
    sig = bytearray(pm.auth.signature)
    sig[0] ^= 1
    tampered = MLSMessage(
        PublicMessage(pm.content, replace(pm.auth, signature=bytes(sig)), pm.membership_tag)
    )
    with pytest.raises(SignatureError):
        await h.as_member(Operation.UPDATE_CLIENT, replace(params, commit=tampered), bob)
    # the commit is fine but the GroupInfo signature is not
    bad_gi = replace(params.group_info_update, signature=bytes(64))
    with pytest.raises(SignatureError):
        await h.as_member(Operation.UPDATE_CLIENT, replace(params, group_info_update=bad_gi), bob)
    # bob's commit, sent with carol's authentication
    with pytest.raises(AuthError, match="authenticated leaf"):
        await h.as_member(Operation.UPDATE_CLIENT, params, carol)
    # a commit as a PrivateMessage cannot be validated
    with pytest.raises(ValidationError, match="PublicMessage"):
        await h.as_member(Operation.UPDATE_CLIENT, replace(params, commit=bob.g.send(b"x")), bob)
    bob.g.clear_pending_commit()
    assert h.sink.take() == []
    # two valid commits for one epoch: the second is stale
    first = h.update_params(bob)
    second = h.update_params(carol)
    await h.as_member(Operation.UPDATE_CLIENT, first, bob)
    bob.g.merge_pending_commit()
    with pytest.raises(WrongEpoch):
        await h.as_member(Operation.UPDATE_CLIENT, second, carol)
    with pytest.raises(WrongEpoch):  # a replayed commit
        await h.as_member(Operation.UPDATE_CLIENT, first, bob)


async def test_proposal_store_rules(h: Harness) -> None:
    alice, bob, bob2 = Client.new("alice"), Client.new("bob"), Client.new("bob2")
    await h.create(alice)
    await h.add(alice, [bob, bob2])
    h.sink.take()
    prop = bob.g.propose_remove(bob2.leaf, now=h.now)
    await h.as_member(Operation.SELF_REMOVE_USER, SelfRemoveUserParams(prop.message, h.ear_key), bob)
    alice.g.process(prop.message, now=h.now)
    # no other commit than a client update that includes the stored proposal
    with pytest.raises(PendingProposals):
        await h.as_member(Operation.ADD_USERS, h.add_params(alice, [[Client.new("dave")]]), alice)
    alice.g.clear_pending_commit()
    params = h.update_params(alice, by_reference=False)
    with pytest.raises(PendingProposals):
        await h.as_member(Operation.UPDATE_CLIENT, params, alice)
    alice.g.clear_pending_commit()
    # the same removal cannot be proposed twice, nor another user's client
    with pytest.raises(ValidationError, match="already proposed"):
        again = bob2.g.propose_remove(bob2.leaf, now=h.now)
        await h.as_member(Operation.SELF_REMOVE_USER, SelfRemoveUserParams(again.message, h.ear_key), bob2)
    not_mine = bob.g.propose_remove(alice.leaf, now=h.now)
    with pytest.raises(ValidationError, match="own clients"):
        await h.as_member(Operation.SELF_REMOVE_USER, SelfRemoveUserParams(not_mine.message, h.ear_key), bob)
    # a proposal sent by someone else than the authenticated leaf
    with pytest.raises(AuthError):
        await h.as_member(Operation.SELF_REMOVE_USER, SelfRemoveUserParams(prop.message, h.ear_key), bob2)
    await h.update(alice, [bob])
    assert alice.g.member(bob2.leaf) is None


async def test_add_users_input_checks(h: Harness) -> None:
    alice, bob, carol = await group_of_three(h)
    dave, erin = Client.new("dave"), Client.new("erin")
    # a KeyPackage without a QueueConfig extension
    kp = dave.key_package(h.now, extensions=[]).key_package
    aad = AddUsersParamsAad((UserCredentialInformation((b"c",)),)).encode()
    res = alice.g.commit(now=h.now, add=[kp], authenticated_data=aad)
    assert res.welcome is not None
    no_qc = AddUsersParams(
        res.commit,
        h.ear_key,
        pending_gi_update(alice.g),
        res.welcome,
        (WelcomeAttributionCiphertexts(b"", b""),),
    )
    with pytest.raises(ValidationError, match="QueueConfig"):
        await h.as_member(Operation.ADD_USERS, no_qc, alice)
    alice.g.clear_pending_commit()
    # a KeyPackage older than the maximal KeyPackage age
    dave.key_package(h.now - DsConfig().key_package_max_age - 10, lifetime=400 * 86400)
    assert dave.bundle is not None
    res = alice.g.commit(now=h.now, add=[dave.bundle.key_package], authenticated_data=aad)
    assert res.welcome is not None
    old = rebuilt(no_qc, alice, res.commit, res.welcome)
    with pytest.raises(ValidationError, match="older than"):
        await h.as_member(Operation.ADD_USERS, old, alice)
    alice.g.clear_pending_commit()
    # credential information that does not match the Adds
    good = h.add_params(alice, [[dave], [erin]])
    alice.g.clear_pending_commit()
    wrong_aad = AddUsersParamsAad((UserCredentialInformation((b"only one",)),)).encode()
    res = alice.g.commit(
        now=h.now, add=[dave.key_package(h.now).key_package, erin.key_package(h.now).key_package],
        authenticated_data=wrong_aad,
    )  # fmt: skip
    assert res.welcome is not None
    mismatched = replace(
        good, commit=res.commit, group_info_update=pending_gi_update(alice.g), welcome=res.welcome
    )
    with pytest.raises(ValidationError, match="credential information"):
        await h.as_member(Operation.ADD_USERS, mismatched, alice)
    alice.g.clear_pending_commit()
    # a Welcome of another commit
    two = AddUsersParamsAad((UserCredentialInformation((b"d",)), UserCredentialInformation((b"e",)))).encode()
    res = alice.g.commit(
        now=h.now, add=[dave.key_package(h.now).key_package, erin.key_package(h.now).key_package],
        authenticated_data=two,
    )  # fmt: skip
    with pytest.raises(ValidationError, match="Welcome"):
        await h.as_member(
            Operation.ADD_USERS,
            replace(good, commit=res.commit, group_info_update=pending_gi_update(alice.g)),
            alice,
        )
    alice.g.clear_pending_commit()
    # a commit that also removes somebody is not an add
    res = alice.g.commit(
        now=h.now, add=[dave.key_package(h.now).key_package], remove=[carol.leaf],
        authenticated_data=AddUsersParamsAad((UserCredentialInformation((b"d",)),)).encode(),
    )  # fmt: skip
    assert res.welcome is not None
    with pytest.raises(ValidationError, match="remove proposal"):
        await h.as_member(
            Operation.ADD_USERS,
            replace(
                rebuilt(good, alice, res.commit, res.welcome),
                welcome_attribution_info=good.welcome_attribution_info[:1],
            ),
            alice,
        )  # fmt: skip
    alice.g.clear_pending_commit()
    assert h.sink.take() == []
    await still_works(h, alice, [bob, carol])


async def test_remove_users_whole_users_only(h: Harness) -> None:
    alice, bob, bob2 = Client.new("alice"), Client.new("bob"), Client.new("bob2")
    await h.create(alice)
    await h.add(alice, [bob, bob2])
    res = alice.g.commit(now=h.now, remove=[bob2.leaf])
    with pytest.raises(ValidationError, match="every client"):
        await h.as_member(
            Operation.REMOVE_USERS,
            RemoveUsersParams(res.commit, h.ear_key, pending_gi_update(alice.g)),
            alice,
        )
    alice.g.clear_pending_commit()
    # the DS must stay an external sender
    roles = make_roles_extension((0,))
    res = alice.g.commit(now=h.now, remove=[bob.leaf, bob2.leaf], group_context_extensions=[roles])
    with pytest.raises(ValidationError, match="external_senders"):
        await h.as_member(
            Operation.REMOVE_USERS,
            RemoveUsersParams(res.commit, h.ear_key, pending_gi_update(alice.g)),
            alice,
        )
    alice.g.clear_pending_commit()


async def test_application_message_checks(h: Harness) -> None:
    alice, bob, carol = await group_of_three(h)
    old = bob.g.send(b"old epoch")
    await h.update(alice, [bob, carol])
    h.sink.take()
    with pytest.raises(WrongEpoch):
        await h.as_member(Operation.SEND_MESSAGE, SendMessageParams(old, h.ear_key), bob)
    res = alice.g.commit(now=h.now, path=True)
    with pytest.raises(ValidationError, match="PrivateMessages"):
        await h.as_member(Operation.SEND_MESSAGE, SendMessageParams(res.commit, h.ear_key), alice)
    alice.g.clear_pending_commit()
    gid, other = h.group_id, Client.new("other")
    await h.create(other)  # another group on the same DS
    h.gid = gid
    foreign = other.g.send(b"elsewhere")
    with pytest.raises(AuthError, match="another group"):  # requests are routed by the message's group
        await h.as_member(Operation.SEND_MESSAGE, SendMessageParams(foreign, h.ear_key), bob)


async def test_group_creation_checks(h: Harness) -> None:
    alice = Client.new("alice")
    with pytest.raises(LocalClientsOnly):
        await h.call(Operation.REQUEST_GROUP_ID, None, remote=True)
    gid = RequestGroupIdResponse.decode(await h.call(Operation.REQUEST_GROUP_ID, None)).group_id
    h.gid = gid
    ds = h.service.verifying_key_response().external_sender

    def params(extensions: Sequence[Extension], group_id: GroupId = gid) -> CreateGroupParams:
        alice.group = Group.create(
            CS, alice.credential, alice.sig_priv, now=h.now, group_id=group_id.to_mls(), capabilities=CAPS,
            extensions=extensions,
        )  # fmt: skip
        gi = alice.g.group_info(ratchet_tree=True, external_pub=True).group_info
        assert gi is not None
        return CreateGroupParams(group_id, b"cred", alice.qc, gi, h.ear_key)

    async def create(p: CreateGroupParams, **kw: object) -> bytes:
        return await h.call(Operation.CREATE_GROUP, p, alice.sig_priv, DsSenderId.leaf(0), **kw)  # type: ignore[arg-type]

    good = [make_external_senders_extension([ds]), make_roles_extension((0,))]
    with pytest.raises(ValidationError, match="external_senders"):
        await create(params([make_roles_extension((0,))]))
    not_ds = make_external_senders_extension([replace(ds, signature_key=CS.generate_signature_key_pair()[1])])
    with pytest.raises(ValidationError, match="does not list this DS"):
        await create(params([not_ds, make_roles_extension((0,))]))
    with pytest.raises(NotAdmin):
        await create(params([make_external_senders_extension([ds]), make_roles_extension(())]))
    with pytest.raises(LocalClientsOnly):
        await create(params(good), remote=True)
    unreserved = GroupId.random(DOMAIN)
    with pytest.raises(NotFound, match="reservation"):
        await create(params(good, unreserved), group_id=unreserved)
    foreign = GroupId.random(Fqdn("other.example"))
    with pytest.raises(ValidationError, match="not this DS"):
        await create(params(good, foreign), group_id=foreign)
    p = params(good)
    with pytest.raises(SignatureError):
        await h.call(Operation.CREATE_GROUP, p, Client.new("mallory").sig_priv, DsSenderId.leaf(0))
    await create(p)
    with pytest.raises(Conflict):
        await create(p)
    # reservations lapse
    gid2 = RequestGroupIdResponse.decode(await h.call(Operation.REQUEST_GROUP_ID, None)).group_id
    h.clock.now += DsConfig().group_id_reservation + 1
    with pytest.raises(NotFound, match="lapsed"):
        await create(params(good, gid2), group_id=gid2)


async def test_garbage_is_a_bad_request(h: Harness) -> None:
    alice, bob, _ = await group_of_three(h)
    valid = DsRequest.signed(
        Operation.SEND_MESSAGE.value, SendMessageParams(bob.g.send(b"x"), h.ear_key), h.group_id,
        DsSenderId.leaf(bob.leaf), bob.sig_priv, h.now, privacy_pass_token=b"t",
    ).encode()  # fmt: skip
    rng = random.Random(7)
    for i in range(300):
        data = bytearray(valid)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if i % 3 == 0:
            data = data[: rng.randrange(len(data))]
        try:
            await h.service.handle(Operation.SEND_MESSAGE.value, bytes(data))
        except (BadRequest, AuthError, NotFound, MlsError):
            pass
    with pytest.raises(NotFound):
        await h.service.handle("no_such_operation", valid)
    with pytest.raises(BadRequest):
        await h.service.handle(Operation.UPDATE_CLIENT.value, valid)


async def test_a_new_member_does_not_inherit_a_removed_admins_role(h: Harness) -> None:
    alice, bob, dave = Client.new("alice"), Client.new("bob"), Client.new("dave")
    await h.create(alice)
    ds_ext = alice.g.extensions[0]
    admins = [ds_ext, make_roles_extension((0, 1))]  # bob joins as an admin
    params = h.add_params(alice, [[bob]], group_context_extensions=admins)
    await h.as_member(Operation.ADD_USERS, params, alice)
    alice.g.merge_pending_commit()
    res = alice.g.commit(now=h.now, remove=[1])  # the roles keep naming leaf 1
    await h.as_member(
        Operation.REMOVE_USERS, RemoveUsersParams(res.commit, h.ear_key, pending_gi_update(alice.g)), alice
    )
    alice.g.merge_pending_commit()
    params = h.add_params(alice, [[dave]])  # dave would land on leaf 1
    with pytest.raises(ValidationError, match="roles"):
        await h.as_member(Operation.ADD_USERS, params, alice)
    alice.g.clear_pending_commit()
    params = h.add_params(alice, [[dave]], group_context_extensions=[ds_ext, make_roles_extension((0,))])
    await h.as_member(Operation.ADD_USERS, params, alice)
    alice.g.merge_pending_commit()
    assert alice.g.member(1) is not None
