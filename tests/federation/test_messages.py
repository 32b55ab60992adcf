from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phx.codec import DecodeError
from phx.crypto import SUITE_1
from phx.federation.messages import (
    MessageResult,
    MessageStatus,
    QsToQsBatch,
    QsToQsBatchResponse,
    QsToQsMessage,
    content_of,
    digest_of,
)
from phx.identifiers import Fqdn
from phx.queuing.messages import ClientQueueConfig, FanOutMessage, SealedQueueConfig

from .helpers import fan_out, message, new_group

A, B = Fqdn("a.test"), Fqdn("b.test")
SK, PK = SUITE_1.generate_signature_key_pair()


def sample(body: bytes = b"hi", message_id: bytes = bytes(range(16))) -> QsToQsMessage:
    return QsToQsMessage.sign(message_id, 1_700_000_000, A, B, fan_out([], new_group(A), body), SK)


def test_signed_frame_round_trips_and_verifies() -> None:
    msg = sample()
    frame = msg.encode()
    assert QsToQsMessage.decode(frame) == msg
    assert msg.verify(PK)
    decoded, tbs = QsToQsMessage.split(frame)
    assert tbs == msg.tbs() and frame.startswith(tbs)
    assert msg.digest() == digest_of(tbs)


def test_every_signed_field_is_covered() -> None:
    msg = sample()
    other_payload = fan_out([], new_group(A), b"other")
    for changed in (
        QsToQsMessage(os.urandom(16), msg.created_at, A, B, msg.payload, msg.signature),
        QsToQsMessage(msg.message_id, msg.created_at + 1, A, B, msg.payload, msg.signature),
        QsToQsMessage(msg.message_id, msg.created_at, Fqdn("c.test"), B, msg.payload, msg.signature),
        QsToQsMessage(msg.message_id, msg.created_at, A, Fqdn("c.test"), msg.payload, msg.signature),
        QsToQsMessage(msg.message_id, msg.created_at, A, B, other_payload, msg.signature),
    ):
        assert not changed.verify(PK)
    assert not msg.verify(SUITE_1.generate_signature_key_pair()[1])


def test_signature_is_a_phoenix_label_not_an_mls_one() -> None:
    msg = sample()
    # The same key and content under the MLS prefix must not verify (docs/decisions.md).
    assert not SUITE_1.verify_with_label(PK, b"QsToQsMessage", msg.tbs(), msg.signature)


def test_golden_layout_of_the_frame_header() -> None:
    frame = sample().encode()
    assert frame[:16] == bytes(range(16))
    assert frame[16:24] == (1_700_000_000).to_bytes(8, "big")
    assert frame[24:31] == b"\x06a.test" and frame[31:38] == b"\x06b.test"


def test_message_ids_are_16_bytes() -> None:
    with pytest.raises(ValueError):
        QsToQsMessage.sign_encoded(b"short", 0, A, B, b"", SK)


def test_batch_and_response_round_trip() -> None:
    batch = QsToQsBatch(A, (sample().encode(), b"\x00junk"))
    assert QsToQsBatch.decode(batch.encode()) == batch
    resp = QsToQsBatchResponse((MessageResult(bytes(16), MessageStatus.REJECTED, (), "decode_error"),), 1500)
    assert QsToQsBatchResponse.decode(resp.encode()) == resp


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_decoding_arbitrary_bytes_fails_cleanly(data: bytes) -> None:
    for cls in (QsToQsMessage, QsToQsBatch, QsToQsBatchResponse):
        try:
            cls.decode(data)
        except DecodeError:
            pass


def test_content_is_sliced_from_the_signed_bytes() -> None:
    configs = tuple(
        ClientQueueConfig(B, SealedQueueConfig(os.urandom(32), os.urandom(n))) for n in (40, 70, 300)
    )
    payload = FanOutMessage(configs, message(new_group(A), b"x" * 500))
    msg = QsToQsMessage.sign(os.urandom(16), 5, A, B, payload, SK)
    assert content_of(msg.tbs()) == payload.message_content.encode()
