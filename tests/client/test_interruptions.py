"""Losing the network mid-command leaves the client state consistent; the next command carries on."""

from __future__ import annotations

import httpx
import pytest

from phx.errors import Unavailable
from phx.federation.discovery import tls_context

from .conftest import Clients, connect, has, sync_until


class Faults(httpx.AsyncBaseTransport):
    """Real HTTPS, except that the next call to a chosen path loses its request or its response."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.fail: dict[str, str] = {}  # path -> "request" | "response"
        self.failed: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        how = self.fail.pop(request.url.path, None)
        if how == "request":
            self.failed.append(request.url.path)
            raise httpx.ConnectError("network unreachable", request=request)
        response = await self.inner.handle_async_request(request)
        if how == "response":
            await response.aread()
            self.failed.append(request.url.path)
            raise httpx.ReadError("connection reset before the answer", request=request)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


def faulty(clients: Clients) -> Faults:
    return Faults(httpx.AsyncHTTPTransport(verify=tls_context(clients.net.setup.ca_file)))


async def test_registration_resumes_after_a_lost_answer(clients: Clients) -> None:
    faults = faulty(clients)
    alice = clients.client("alice", transport=faults)
    faults.fail["/as/v1/finish_user_registration"] = "response"
    with pytest.raises(Unavailable):
        await alice.register("alice@a.test", b"pw")
    assert alice.whoami()["registered"] is False
    faults.fail["/qs/v1/publish_key_packages"] = "request"
    with pytest.raises(Unavailable):
        await alice.register("alice@a.test", b"pw")  # the AS part is found done; the QS part fails
    await alice.register("alice@a.test", b"pw")
    assert alice.whoami()["registered"] is True
    assert faults.failed == ["/as/v1/finish_user_registration", "/qs/v1/publish_key_packages"]
    bob = await clients.user("bob@b.test")
    await connect(bob, alice)  # the registration is complete: connection packages, KeyPackages, queues


async def test_commits_and_messages_survive_lost_answers(clients: Clients) -> None:
    faults = faulty(clients)
    alice = clients.client("alice", transport=faults)
    await alice.register("alice@a.test", b"pw")
    bob = await clients.user("bob@b.test")
    await connect(alice, bob)
    await alice.create_group("g")
    # the DS takes the invitation, but alice never hears back
    faults.fail["/ds/v1/add_users"] = "response"
    with pytest.raises(Unavailable):
        await alice.invite("g", "bob@b.test")
    assert alice.session.load_group(alice.session.find_group("g")).pending_commit is not None
    # the next command settles the pending commit with the DS first
    faults.fail["/ds/v1/send_message"] = "request"
    with pytest.raises(Unavailable):
        await alice.send("g", "lost on the way")
    assert alice.groups()[0].members == ["alice@a.test", "bob@b.test"]
    await sync_until(bob, has("joined"))
    await alice.send("g", "this one arrives")
    events = await sync_until(bob, has("message"))
    assert [e.text for e in events if e.kind == "message"] == ["this one arrives"]
    # a commit whose request never left is dropped, and the group goes on at its epoch
    faults.fail["/ds/v1/remove_users"] = "request"
    with pytest.raises(Unavailable):
        await alice.remove("g", "bob@b.test")
    await bob.send("g", "still here")
    events = await sync_until(alice, has("message"))
    assert [(e.sender, e.text) for e in events if e.kind == "message"] == [("bob@b.test", "still here")]
    assert alice.groups()[0].members == ["alice@a.test", "bob@b.test"]


async def test_sync_and_accept_resume_after_lost_answers(clients: Clients) -> None:
    faults = faulty(clients)
    alice = await clients.user("alice@a.test")
    bob = clients.client("bob", transport=faults)
    await bob.register("bob@b.test", b"pw")
    await alice.connect("bob@b.test")
    events = await sync_until(bob, has("request"))
    request_id = next(e.request_id for e in events if e.kind == "request")
    faults.fail["/ds/v1/join_connection_group"] = "response"
    with pytest.raises(Unavailable):
        await bob.accept(request_id)
    assert bob.contacts() == []
    await bob.sync()  # finds out that the DS took the join, completes the acceptance, sends its keys
    assert [c.user for c in bob.contacts()] == ["alice@a.test"]
    await sync_until(alice, has("connected", sender="bob@b.test"))
    await sync_until(bob, has("ready", sender="alice@a.test"))
    await alice.create_group("g")
    await alice.invite("g", "bob@b.test")
    # a welcome whose processing needs the network: the item stays queued until it can be handled
    faults.fail["/ds/v1/welcome_info"] = "request"
    with pytest.raises(Unavailable):
        await sync_until(bob, has("joined"))
    await sync_until(bob, has("joined"))
    assert bob.groups()[0].members == ["alice@a.test", "bob@b.test"]


async def test_a_client_that_lost_track_of_the_epoch_rejoins(clients: Clients) -> None:
    alice = await clients.user("alice@a.test")
    bob = await clients.user("bob@b.test")
    carol = await clients.user("carol@a.test")
    await connect(alice, bob)
    await connect(alice, carol)
    await alice.create_group("g")
    await alice.invite("g", "bob@b.test")
    await sync_until(bob, has("joined"))
    stale = bob.session.find_group("g")  # bob's state as a backup would have it
    await alice.invite("g", "carol@a.test")
    await sync_until(bob, has("added", sender="carol@a.test"))
    with bob.session.state.tx() as tx:
        bob.session.state.put_group(tx, stale)  # restored from the backup: one epoch behind
    await alice.send("g", "you missed an epoch")
    await sync_until(bob, has("warning"))  # a message from an epoch bob never reached
    assert bob.session.load_group(bob.session.find_group("g")).epoch == 3  # rejoined after the invite
    await alice.sync()  # processes bob's ReSync commit
    await carol.sync()
    await alice.send("g", "welcome back")
    events = await sync_until(bob, has("message"))
    assert [e.text for e in events if e.kind == "message"] == ["welcome back"]
    await bob.send("g", "thanks")
    for member in (alice, carol):
        await sync_until(member, has("message", text="thanks"))
    assert sorted(bob.groups()[0].members) == ["alice@a.test", "bob@b.test", "carol@a.test"]
