"""The DS with the real QS in the same process: fan-outs land in queues, deleted queues come back."""

from __future__ import annotations

import httpx
import pytest

from phx.delivery.fanout import HttpQsSink, LocalQsSink
from phx.delivery.messages import Operation, SendMessageParams
from phx.errors import Unavailable
from phx.identifiers import GroupId
from phx.mls.messages import ContentType, MLSMessage, PrivateMessage, Remove
from phx.queuing.messages import (
    FanOutMessage,
    LocalEnqueueResponse,
    MessageContent,
    MessageContentType,
    QueueConfig,
    QueueDeleted,
    seal_queue_config,
)
from phx.storage import Database
from tests.delivery.helpers import DOMAIN, Client, Harness, new_qs_cid
from tests.queuing import helpers as qs_helpers


async def test_fan_out_through_the_local_qs(db: Database) -> None:
    qs = await qs_helpers.make_service(db)
    h = await Harness.start(db)
    h.service.sink = LocalQsSink(qs)
    qs_alice, qs_bob = await qs_helpers.register(qs), await qs_helpers.register(qs)
    alice = Client.new("alice", qs_alice.queue_config())
    bob = Client.new("bob", qs_bob.queue_config())
    # carol's config names a queue that does not exist on the QS
    gone = QueueConfig(None, new_qs_cid())
    carol = Client.new("carol", seal_queue_config(qs.queue_config_encryption_key, qs_helpers.DOMAIN, gone))
    await h.create(alice)
    await h.add(alice, [bob], [carol])  # carol's WelcomeBundle finds no queue: the QS says so
    msg = alice.g.send(b"hello bob")
    await h.as_member(Operation.SEND_MESSAGE, SendMessageParams(msg, h.ear_key), alice)
    items = await qs_bob.read_queue()
    kinds = [p.content.content_type for p in items]
    # bob's Welcome, then the DS's proposal to remove carol (decided on this request), then the message
    assert kinds == [
        MessageContentType.WELCOME_BUNDLE,
        MessageContentType.COMMIT,
        MessageContentType.APPLICATION,
    ]
    proposal = items[1].content.body
    assert isinstance(proposal, MLSMessage) and proposal.public_message is not None
    body = proposal.public_message.content.proposal
    assert body is not None and isinstance(body.value, Remove) and body.value.removed == carol.leaf
    assert items[2].content.body == msg
    # alice gets the DS's proposal but not her own message
    assert [p.content.body for p in await qs_alice.read_queue()] == [proposal]


async def test_http_sink() -> None:
    gid = GroupId.random(DOMAIN)
    sent: list[bytes] = []
    qc = Client.new("x").qc

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/qs/v1/local_enqueue"
        sent.append(request.content)
        if len(sent) == 2:
            return httpx.Response(503, json={"error": "unavailable"})
        if len(sent) == 3:
            return httpx.Response(200, content=b"\x01garbage")
        return httpx.Response(200, content=LocalEnqueueResponse((QueueDeleted(qc, gid),)).encode())

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    sink = HttpQsSink("http://qs.example.com/", client=client)
    message = FanOutMessage((qc,), MessageContent(MessageContentType.APPLICATION, _app(gid)))
    assert await sink.fan_out(message, 0) == [QueueDeleted(qc, gid)]
    assert FanOutMessage.decode(sent[0]) == message
    with pytest.raises(Unavailable):
        await sink.fan_out(message, 0)
    with pytest.raises(Unavailable):
        await sink.fan_out(message, 0)
    await client.aclose()

    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    sink = HttpQsSink("http://qs.example.com", client=httpx.AsyncClient(transport=httpx.MockTransport(down)))
    with pytest.raises(Unavailable):
        await sink.fan_out(message, 0)
    await sink.client.aclose()


def _app(gid: GroupId) -> MLSMessage:
    return MLSMessage(PrivateMessage(gid.to_mls(), 1, ContentType.APPLICATION, b"", b"sd", b"ct"))
