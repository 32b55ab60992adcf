"""What an answer means for the outbox (pure), and the sender against a scripted peer."""

from __future__ import annotations

import os

import pytest

from phx.federation.discovery import PeerResponse, PeerUnreachable
from phx.federation.messages import MessageResult, MessageStatus, QsToQsBatchResponse
from phx.federation.outbox import ResultKind
from phx.federation.outbox_store import QueuedMessage
from phx.federation.sender import interpret
from phx.identifiers import Fqdn
from phx.queuing.messages import QueueDeleted

from .helpers import new_group

B = Fqdn("b.test")


def rows(n: int) -> list[QueuedMessage]:
    return [QueuedMessage(i + 1, B, os.urandom(16), 0, b"payload") for i in range(n)]


def ok(results: list[MessageResult], retry_after_ms: int = 0) -> PeerResponse:
    return PeerResponse(200, {}, QsToQsBatchResponse(tuple(results), retry_after_ms).encode())


def res(row: QueuedMessage, status: MessageStatus, error: str = "") -> MessageResult:
    return MessageResult(row.message_id, status, (), error)


def test_all_answered() -> None:
    sent = rows(3)
    out = interpret(
        ok(
            [
                res(sent[0], MessageStatus.ACCEPTED),
                res(sent[1], MessageStatus.DUPLICATE),
                res(sent[2], MessageStatus.REJECTED, "bad_signature"),
            ]
        ),
        sent,
        0.0,
    )
    assert out.kind == ResultKind.SUCCESS
    assert out.done == [1, 2] and out.dropped == [(3, "bad_signature")]


def test_queue_deleted_reports_are_collected() -> None:
    sent = rows(1)
    from phx.queuing.messages import ClientQueueConfig, SealedQueueConfig

    qd = QueueDeleted(ClientQueueConfig(B, SealedQueueConfig(b"k", b"c")), new_group(B))
    out = interpret(ok([MessageResult(sent[0].message_id, MessageStatus.ACCEPTED, (qd,), "")]), sent, 0.0)
    assert out.queue_deleted == [qd]


def test_cut_short_by_rate_limit_is_throttled_with_the_peers_delay() -> None:
    sent = rows(4)
    out = interpret(ok([res(sent[0], MessageStatus.ACCEPTED)], retry_after_ms=2500), sent, 0.0)
    assert (out.kind, out.done, out.retry_after) == (ResultKind.THROTTLED, [1], 2.5)
    out = interpret(ok([res(sent[0], MessageStatus.ACCEPTED)]), sent, 0.0)
    assert out.kind == ResultKind.TRANSIENT and out.done == [1]


def test_an_answer_that_does_not_match_is_not_trusted() -> None:
    sent = rows(2)
    wrong = MessageResult(os.urandom(16), MessageStatus.ACCEPTED, (), "")
    assert interpret(ok([wrong]), sent, 0.0).kind == ResultKind.TRANSIENT
    too_many = [res(sent[0], MessageStatus.ACCEPTED)] * 3
    assert interpret(ok(too_many), sent, 0.0).done == []
    assert interpret(PeerResponse(200, {}, b"\xff"), sent, 0.0).kind == ResultKind.TRANSIENT


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408])
def test_server_errors_are_transient(status: int) -> None:
    out = interpret(PeerResponse(status, {}, b""), rows(2), 0.0)
    assert out.kind == ResultKind.TRANSIENT and not out.done and not out.dropped


def test_network_errors_are_transient() -> None:
    out = interpret(PeerUnreachable("reset"), rows(2), 0.0)
    assert out.kind == ResultKind.TRANSIENT and not out.done and not out.dropped


def test_429_honours_retry_after() -> None:
    out = interpret(PeerResponse(429, {"retry-after": "12"}, b""), rows(2), 0.0)
    assert (out.kind, out.retry_after) == (ResultKind.THROTTLED, 12)
    out = interpret(PeerResponse(429, {}, b""), rows(2), 0.0, default_retry_after=3.0)
    assert out.retry_after == 3.0


def test_413_splits_the_batch_then_drops_a_single_message() -> None:
    assert interpret(PeerResponse(413, {}, b""), rows(2), 0.0).kind == ResultKind.TOO_LARGE
    one = interpret(PeerResponse(413, {}, b'{"error":"payload_too_large"}'), rows(1), 0.0)
    assert one.kind == ResultKind.SUCCESS and one.dropped == [(1, "payload_too_large")]


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409])
def test_other_4xx_are_permanent(status: int) -> None:
    out = interpret(PeerResponse(status, {}, b'{"error":"policy_denied"}'), rows(3), 0.0)
    assert out.kind == ResultKind.SUCCESS and [i for i, _ in out.dropped] == [1, 2, 3]
    assert out.dropped[0][1] == "policy_denied"
