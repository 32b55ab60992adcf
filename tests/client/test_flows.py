"""The client library against two real homeservers (TLS on loopback, SQLite): every flow across them."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from phx.auth.client import sign_connection_establishment_package
from phx.auth.messages import EnqueueMessageParams, UserClientsParams
from phx.auth.opaque import OpaqueAuthError
from phx.client import ClientError, PhxClient, ServiceError
from phx.client.account import PACKAGES_LEFT, packages_left
from phx.client.session import user_id_for
from phx.client.wire import seal_connection_establishment
from phx.credentials import (
    ExpirationData,
    create_intermediate_credential,
    issue_client_credential,
    new_as_credential,
    new_client_csr,
)
from phx.identifiers import ClientId, Fqdn, GroupId
from phx.queues import QueueItemType
from phx.queuing.messages import AddPackageParams

from .conftest import Clients, connect, has, sync_until
from .harness import homeservers, queuing_service, rotating_services


async def test_cross_homeserver_conversation(clients: Clients) -> None:
    alice = await clients.user("alice@a.test")
    bob = await clients.user("bob@b.test")
    request = await alice.connect("bob@b.test")
    assert [r.user for r in alice.requests()] == ["bob@b.test"] and request.status == "pending"
    events = await sync_until(bob, has("request"))
    (incoming,) = [e for e in events if e.kind == "request"]
    assert incoming.sender == "alice@a.test"
    (view,) = bob.requests()
    assert view.direction == "in" and view.fingerprint == alice.whoami()["fingerprint"]
    await bob.accept(incoming.request_id)
    events = await sync_until(alice, has("connected"))
    assert [e.sender for e in events if e.kind == "connected"] == ["bob@b.test"]
    await sync_until(bob, has("ready", sender="alice@a.test"))
    (contact,) = alice.contacts()
    assert contact.user == "bob@b.test" and contact.ready
    assert contact.fingerprints == [bob.whoami()["fingerprint"]]  # the chain alice verified, for comparing
    assert alice.requests() == [] and bob.requests() == []
    await alice.create_group("team")
    await alice.invite("team", "bob@b.test")
    events = await sync_until(bob, has("joined"))
    assert [(e.group, e.sender) for e in events if e.kind == "joined"] == [("team", "alice@a.test")]
    (group,) = bob.groups()
    assert group.name == "team" and group.members == ["alice@a.test", "bob@b.test"]
    await alice.send("team", "hello from a")
    await bob.send("team", "hello from b")
    got_b = await sync_until(bob, has("message"))
    got_a = await sync_until(alice, has("message"))
    assert [(e.sender, e.text) for e in got_b if e.kind == "message"] == [("alice@a.test", "hello from a")]
    assert [(e.sender, e.text) for e in got_a if e.kind == "message"] == [("bob@b.test", "hello from b")]
    assert [(m.text, m.outgoing) for m in alice.messages("team")] == [
        ("hello from a", True),
        ("hello from b", False),
    ]


async def test_rejected_request_is_reported_to_the_initiator(clients: Clients) -> None:
    alice = await clients.user("alice@a.test")
    bob = await clients.user("bob@b.test")
    await alice.connect("bob@b.test")
    events = await sync_until(bob, has("request"))
    await bob.reject(next(e.request_id for e in events if e.kind == "request"))
    await sync_until(alice, has("declined", sender="bob@b.test"))
    assert alice.contacts() == [] and bob.contacts() == []
    assert [r.status for r in alice.requests(pending_only=False)] == ["rejected"]
    # the declined connection group is gone from the DS as well
    assert [g.status for g in alice.session.state.groups("connection")] == ["deleted"]
    with pytest.raises(ClientError, match="not a contact"):
        await alice.invite("anything", "bob@b.test")


async def test_membership_changes(clients: Clients) -> None:
    alice = await clients.user("alice@a.test")
    bob = await clients.user("bob@b.test")
    carol = await clients.user("carol@a.test")
    await connect(alice, bob)
    await connect(alice, carol)
    await alice.create_group("g")
    await alice.invite("g", "bob@b.test")
    await alice.invite("g", "carol@a.test")
    # bob joins by the Welcome of the first invitation; carol's addition is a later commit, which may
    # reach his queue (through federation) in the same sync or a later one.
    await sync_until(bob, lambda seen: has("joined")(seen) and has("added", sender="carol@a.test")(seen))
    await sync_until(carol, has("joined"))
    assert bob.groups()[0].members == ["alice@a.test", "bob@b.test", "carol@a.test"]
    # bob and carol are not contacts, but each sees the other's name (checked against the user id)
    await carol.send("g", "carol here")
    events = await sync_until(bob, has("message"))
    assert [(e.sender, e.text) for e in events if e.kind == "message"] == [("carol@a.test", "carol here")]
    # an admin removes carol; everybody learns it
    await alice.remove("g", "carol@a.test")
    await sync_until(carol, has("removed", group="g"))
    assert carol.groups() == []
    await sync_until(bob, has("removed", sender="carol@a.test"))
    # … and can invite her again
    await alice.invite("g", "carol@a.test")
    await sync_until(carol, has("joined", group="g"))
    await alice.remove("g", "carol@a.test")
    await sync_until(carol, has("removed", group="g"))
    # bob leaves: a self-remove proposal that alice (the designated committer) commits on her next sync
    await bob.leave("g")
    assert bob.groups()[0].status == "leaving"
    await sync_until(alice, has("removed", sender="bob@b.test"))
    await sync_until(bob, has("left", group="g"))
    assert bob.groups() == [] and alice.groups()[0].members == ["alice@a.test"]
    # messages go on; the group can be deleted by its admin
    await alice.delete_group("g")
    assert alice.groups() == []


async def test_disconnect_rotates_the_friendship_token(clients: Clients) -> None:
    alice = await clients.user("alice@a.test")
    bob = await clients.user("bob@b.test")
    carol = await clients.user("carol@a.test")
    await connect(bob, alice)
    await connect(bob, carol)
    old_token = bob.session.me().friendship_token
    await bob.disconnect("alice@a.test")
    assert [c.user for c in bob.contacts()] == ["carol@a.test"]
    assert bob.session.me().friendship_token != old_token
    await sync_until(alice, has("disconnected", sender="bob@b.test"))
    assert alice.contacts() == []
    # the old token no longer fetches bob's KeyPackages; carol received the new one and still can
    from phx.client import ServiceError

    with pytest.raises(ServiceError) as e:
        await alice.session.api.add_packages(bob.session.domain, AddPackageParams(old_token))
    assert e.value.code == "not_found"
    new_token = bob.session.me().friendship_token
    bob_id = bob.session.me().user_id

    def carol_has_new_token(_: object) -> bool:
        contact = carol.session.state.contact(bob_id)
        return contact is not None and contact.friendship_token == new_token

    await sync_until(carol, carol_has_new_token)
    await carol.create_group("still")
    await carol.invite("still", "bob@b.test")
    await sync_until(bob, has("joined", group="still"))


async def test_delete_account(clients: Clients) -> None:
    alice = await clients.user("alice@a.test")
    bob = await clients.user("bob@b.test")
    await connect(alice, bob)
    with pytest.raises(OpaqueAuthError):
        await bob.delete_account(b"wrong password")
    assert bob.whoami()["registered"] is True  # nothing was deleted
    await bob.delete_account(b"password of bob@b.test")
    with pytest.raises(ClientError, match="not registered"):
        bob.whoami()
    fresh = clients.client("someone")
    await fresh.register("dave@a.test", b"pw")
    with pytest.raises(ServiceError, match="no connection package"):
        await fresh.connect("bob@b.test")
    assert isinstance(alice, PhxClient)


async def test_connect_by_alias(clients: Clients) -> None:
    alice = await clients.user("alice@a.test")
    bob = await clients.user("bob@b.test")
    assert await bob.add_alias("Bobby Tables") == "Bobby Tables@b.test"
    assert bob.aliases() == ["Bobby Tables@b.test"]
    request = await alice.connect_alias("Bobby Tables@b.test")
    assert [r.user for r in alice.requests()] == ["alias:Bobby Tables@b.test"]
    events = await sync_until(bob, has("request", sender="alice@a.test"))
    await bob.accept(next(e.request_id for e in events if e.kind == "request"))
    # only now does alice learn who owns the alias
    await sync_until(alice, has("connected", sender="bob@b.test"))
    assert [c.user for c in alice.contacts()] == ["bob@b.test"]
    assert alice.session.state.request(request.id).user_id == bob.session.me().user_id  # type: ignore[union-attr]
    await bob.remove_alias("Bobby Tables")
    assert bob.aliases() == []
    with pytest.raises(ServiceError, match="no connection package"):
        await alice.connect_alias("Bobby Tables@b.test")


async def test_queue_key_updates_are_followed(tmp_path: Path) -> None:
    """With a ratchet key update before every queued item, the clients still read both their queues."""
    async with homeservers(tmp_path / "dev", factory=rotating_services) as rotating:
        clients = Clients(rotating, tmp_path / "homes")
        try:
            alice = await clients.user("alice@a.test")
            bob = await clients.user("bob@b.test")
            await connect(alice, bob)
            await alice.create_group("g")
            await alice.invite("g", "bob@b.test")
            await sync_until(bob, has("joined"))
            qs = queuing_service(rotating.servers[1])
            await alice.send("g", "after many key updates")
            # look into bob's queue before he reads it: a key update precedes the message
            cid = bob.session.me().qs_cid
            assert cid is not None

            async def queued() -> list[QueueItemType]:
                return [i.item_type for i in await qs.queue_items(cid)]

            for _ in range(100):
                if QueueItemType.MESSAGE in await queued():
                    break
                await asyncio.sleep(0.05)
            types = await queued()
            assert types[-2:] == [QueueItemType.KEY_UPDATE, QueueItemType.MESSAGE]
            events = await sync_until(bob, has("message"))
            assert [e.text for e in events if e.kind == "message"] == ["after many key updates"]
        finally:
            await clients.close()


async def test_connection_and_key_packages_are_refilled(clients: Clients) -> None:
    alice = await clients.user("alice@a.test")
    bob = await clients.user("bob@b.test")
    s = bob.session
    assert packages_left(s) == 5 and len(s.state.connection_keys()) == 5
    with s.state.tx() as c:
        s.state.put(c, PACKAGES_LEFT, b"2")  # as if three requests had arrived before
    await connect(alice, bob)
    assert packages_left(s) == 6 and len(s.state.connection_keys()) == 10
    # alice invites bob into groups until his published KeyPackages run low: he publishes new ones
    assert s.state.unused_key_packages() == 5
    for i in range(4):
        await alice.create_group(f"g{i}")
        await alice.invite(f"g{i}", "bob@b.test")
        await sync_until(bob, has("joined", group=f"g{i}"))
    assert s.state.unused_key_packages() == 6  # one left, then five more
    assert sorted(g.name for g in bob.groups()) == ["g0", "g1", "g2", "g3"]


async def test_refused_tokens_are_replaced(clients: Clients) -> None:
    alice = await clients.user("alice@a.test")
    state = alice.session.state
    domain = alice.session.domain.value
    state.drop_tokens(domain)
    state.add_tokens(domain, [b"\x00\x05" + bytes(160)] * 3, 0)  # well-formed, but never issued
    await alice.create_group("g")  # the DS refuses the first token; the client fetches a fresh batch
    assert state.token_count(domain) > 0 and alice.groups()[0].name == "g"


async def test_a_forged_credential_chain_is_refused(clients: Clients) -> None:
    """A connection request signed by a client credential from an AS root that is not a.test's own."""
    alice = await clients.user("alice@a.test")
    bob = await clients.user("bob@b.test")
    now = int(time.time())
    root, root_key = new_as_credential(Fqdn("a.test"), ExpirationData(now - 60, now + 86_400))
    inter, inter_key = create_intermediate_credential(
        root, root_key, ExpirationData(now - 60, now + 3600), now=now
    )
    mallory = ClientId.random(user_id_for("mallory", Fqdn("a.test")))
    csr, key = new_client_csr(mallory, inter, ExpirationData(now - 30, now + 3000))
    forged = issue_client_credential(
        csr, intermediate=inter, intermediate_private_key=inter_key, as_credential=root, now=now
    )
    package = (
        await alice.session.api.connection_package(UserClientsParams(bob.session.me().user_id))
    ).connection_package
    gid = GroupId.random(Fqdn("a.test"))
    cep = sign_connection_establishment_package(forged, key, gid, os.urandom(32), os.urandom(32))
    ctxt = seal_connection_establishment(package.payload.encryption_key, cep.encode())
    await alice.session.api.enqueue_message(EnqueueMessageParams(package.client_credential.client_id, ctxt))
    events = await sync_until(bob, has("warning"))
    assert not any(e.kind == "request" for e in events) and bob.requests() == []
    assert "no known intermediate AS credential" in next(e.text for e in events if e.kind == "warning")
