"""Wire structs of QS-to-QS federation (book: queuing_service.md, "Federated QS-to-QS communication").

The book's frame is ``QsToQsMessage { source, destination, payload: FanOutMessage, signature }``. Ours adds
two signed fields in front (docs/decisions.md, "QS-to-QS frames: ids, batches, per-message signatures"):

* ``message_id`` (16 random bytes) — the receiver remembers ``(source, message_id)`` for at least 24 h and
  answers a repeat with the first answer instead of enqueuing again;
* ``created_at`` (unix seconds when the origin QS queued it) — a frame older than the receiver's
  de-duplication memory is refused, so no replay can outlive the record that would catch it.

The signature is ``SignWithLabel(source QS signing key, "QsToQsMessage", tbs)`` with the ``phx 1.0 ``
prefix, where ``tbs`` is the encoding of every field before it. Each frame is signed on its own so it stays
verifiable whatever batch carries it.

Frames travel in batches: ``POST /qs/v1/federated_enqueue`` with a :class:`QsToQsBatch` (frames as opaque
vectors, so one malformed frame is refused alone) answered by a :class:`QsToQsBatchResponse` that has one
:class:`MessageResult` per frame for a prefix of the batch, in order; the rest was not looked at and
``retry_after_ms`` says when to send it again (the receiver's rate limits cut the batch there).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Annotated

from phx.codec import U8, U32, U64, Fixed, MaxLen, Struct, WireEnum, Writer, decode_varint, encode_varint
from phx.crypto import PHX_PREFIX, SUITE_1, CipherSuite
from phx.identifiers import Fqdn
from phx.queuing.messages import FanOutMessage, QueueDeleted

__all__ = [
    "LABEL_QS_TO_QS",
    "MAX_BATCH_FRAMES",
    "MAX_FRAME_SIZE",
    "MESSAGE_ID_LENGTH",
    "MessageResult",
    "MessageStatus",
    "QsToQsBatch",
    "QsToQsBatchResponse",
    "QsToQsMessage",
    "content_of",
    "digest_of",
]

LABEL_QS_TO_QS = b"QsToQsMessage"
MESSAGE_ID_LENGTH = 16
#: Largest single frame a receiver looks at; larger ones are refused (``payload_too_large``).
MAX_FRAME_SIZE = 1 << 20
#: Most frames in one batch.
MAX_BATCH_FRAMES = 1000

MessageId = Annotated[bytes, Fixed(MESSAGE_ID_LENGTH)]


@dataclass(frozen=True, slots=True)
class QsToQsMessage(Struct):
    message_id: MessageId
    created_at: Annotated[int, U64]
    source: Fqdn
    destination: Fqdn
    payload: FanOutMessage
    signature: Annotated[bytes, MaxLen(128)]

    @staticmethod
    def tbs_of(message_id: bytes, created_at: int, source: Fqdn, destination: Fqdn, payload: bytes) -> bytes:
        """The signed bytes, from an already encoded payload (the sender stores payloads encoded)."""
        w = Writer()
        w.raw(message_id)
        w.u64(created_at)
        source._write(w)
        destination._write(w)
        w.raw(payload)
        return w.getvalue()

    def tbs(self) -> bytes:
        return self.tbs_of(
            self.message_id, self.created_at, self.source, self.destination, self.payload.encode()
        )

    @staticmethod
    def sign_encoded(
        message_id: bytes,
        created_at: int,
        source: Fqdn,
        destination: Fqdn,
        payload: bytes,
        signing_key: bytes,
        *,
        cs: CipherSuite = SUITE_1,
    ) -> bytes:
        """The encoded, signed frame for an encoded payload (no decode/re-encode round trip)."""
        if len(message_id) != MESSAGE_ID_LENGTH:
            raise ValueError("message ids are 16 bytes")
        tbs = QsToQsMessage.tbs_of(message_id, created_at, source, destination, payload)
        sig = cs.sign_with_label(signing_key, LABEL_QS_TO_QS, tbs, prefix=PHX_PREFIX)
        w = Writer()
        w.raw(tbs)
        w.opaque(sig)
        return w.getvalue()

    @classmethod
    def sign(
        cls,
        message_id: bytes,
        created_at: int,
        source: Fqdn,
        destination: Fqdn,
        payload: FanOutMessage,
        signing_key: bytes,
        *,
        cs: CipherSuite = SUITE_1,
    ) -> QsToQsMessage:
        frame = cls.sign_encoded(
            message_id, created_at, source, destination, payload.encode(), signing_key, cs=cs
        )
        return cls.decode(frame)

    @classmethod
    def split(cls, frame: bytes) -> tuple[QsToQsMessage, bytes]:
        """Decode a frame and return it with its signed bytes, sliced from the frame rather than
        re-encoded (decoding is strict, so the encoding is canonical: the frame is ``tbs || opaque(sig)``)."""
        msg = cls.decode(frame)
        sig_len = len(msg.signature)
        return msg, frame[: len(frame) - sig_len - len(encode_varint(sig_len))]

    def verify(self, verifying_key: bytes, *, cs: CipherSuite = SUITE_1) -> bool:
        return cs.verify_with_label(
            verifying_key, LABEL_QS_TO_QS, self.tbs(), self.signature, prefix=PHX_PREFIX
        )

    def digest(self) -> bytes:
        """What the receiver remembers with the id: a hash of the signed content (not the signature), so
        the same id with another payload is recognised as a conflict, not a duplicate."""
        return digest_of(self.tbs())


def digest_of(tbs: bytes) -> bytes:
    return hashlib.sha256(tbs).digest()


def content_of(tbs: bytes) -> bytes:
    """The encoded ``MessageContent`` inside the signed bytes of a frame that decoded (so the layout is
    known good): sliced out, so the receiver need not encode it again for the queues."""
    pos = MESSAGE_ID_LENGTH + 8
    for _ in range(2):  # source, destination
        n, pos = decode_varint(tbs, pos)
        pos += n
    n, pos = decode_varint(tbs, pos)  # the client_queue_configs vector
    return tbs[pos + n :]


Frame = Annotated[bytes, MaxLen(MAX_FRAME_SIZE)]


@dataclass(frozen=True, slots=True)
class QsToQsBatch(Struct):
    """Request body of ``POST /qs/v1/federated_enqueue``: frames of one source, in outbox order."""

    source: Fqdn
    frames: Annotated[tuple[Frame, ...], MaxLen(MAX_BATCH_FRAMES)]


class MessageStatus(WireEnum):
    __wire_width__ = U8
    #: Enqueued now.
    ACCEPTED = 1
    #: Seen before with the same content: not enqueued again; ``queue_deleted`` is the first answer's.
    DUPLICATE = 2
    #: Refused for good (``error`` says why); the sender drops it and counts it.
    REJECTED = 3


@dataclass(frozen=True, slots=True)
class MessageResult(Struct):
    message_id: MessageId
    status: MessageStatus
    queue_deleted: tuple[QueueDeleted, ...]
    error: Annotated[str, MaxLen(64)]


@dataclass(frozen=True, slots=True)
class QsToQsBatchResponse(Struct):
    results: tuple[MessageResult, ...]
    #: Non-zero: the frames after ``results`` were not processed; send them again after this many ms.
    retry_after_ms: Annotated[int, U32]
