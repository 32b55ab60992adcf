"""The inbound QS-to-QS endpoint: ``POST /qs/v1/federated_enqueue`` (book: queuing_service.md,
"Federated QS-to-QS communication").

For a :class:`~.messages.QsToQsBatch` from ``source``, in this order (cheap refusals first):

1. the batch decodes (else 400) and the policy accepts ``source`` (else 403 ``policy_denied``);
2. this instance has not just seen the source domain's bucket refuse it (else 429 at once, no work);
3. the source QS's verifying key is known or fetchable over TLS (else 503: we cannot check, so we accept
   nothing; the sender retries);
4. per frame, without touching the database: it decodes, names ``source`` and *this* homeserver, carries a
   valid signature (a failure refetches the key once, rate-bounded, in case the peer rotated it), is
   neither older than our de-duplication memory nor from the future, and every queue config in it is for
   this homeserver (we never relay: a peer cannot use us to reach a third homeserver). A frame failing
   any of these is answered ``REJECTED`` with a reason and never enqueued;
5. in one transaction: a frame whose ``(source, message_id)`` we have seen is answered ``DUPLICATE``
   with the first answer (or ``REJECTED conflict`` if the content differs: a replayed id with an altered
   payload); the request is charged once against the buckets shared by every instance
   (:class:`~.ratelimit_store.InboundLimits`): the source domain's (else 429 with ``Retry-After``, nothing
   charged), then in frame order each new frame's per-queue-config and per-queue buckets — the first
   frame they refuse stops processing and the response says when to send the rest (``retry_after_ms``),
   so order is kept; each admitted frame's id is recorded and it is enqueued exactly as a local DS's
   fan-out would be;
6. after commit: live-listener wake-ups and pushes; a peer that proved itself with a valid signature is
   "contacted", which wakes our own sender's back-off towards it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from phx.codec import Reader, Writer
from phx.config import RateLimitConfig
from phx.crypto import PHX_PREFIX, SUITE_1, CipherSuite
from phx.errors import DecodeError, RateLimited
from phx.identifiers import Fqdn
from phx.queuing.messages import FanOutMessage, QueueDeleted
from phx.storage import Connection, Database

from .keyring import Keyring
from .messages import (
    LABEL_QS_TO_QS,
    MESSAGE_ID_LENGTH,
    MessageResult,
    MessageStatus,
    QsToQsBatch,
    QsToQsBatchResponse,
    QsToQsMessage,
    content_of,
    digest_of,
)
from .metrics import FederationMetrics
from .outbox_store import FederationStore, ReceivedRecord
from .policy import FederationPolicy
from .qs_bridge import LocalQueues
from .ratelimit_store import Admission, InboundLimits, MessageKeys

__all__ = ["Receiver", "decode_queue_deleted", "encode_queue_deleted"]

log = logging.getLogger("phx.federation.receiver")

_NO_ID = bytes(MESSAGE_ID_LENGTH)


def encode_queue_deleted(items: list[QueueDeleted] | tuple[QueueDeleted, ...]) -> bytes:
    if not items:
        return b""
    w = Writer()
    w.vector(items, lambda w2, item: item._write(w2))
    return w.getvalue()


def decode_queue_deleted(blob: bytes) -> tuple[QueueDeleted, ...]:
    if not blob:
        return ()
    r = Reader(blob)
    items = tuple(r.vector(QueueDeleted.read))
    r.finish()
    return items


@dataclass(slots=True)
class _Frame:
    message_id: bytes
    error: str = ""
    message: QsToQsMessage | None = None
    digest: bytes = b""
    content: bytes = b""
    results: list[QueueDeleted] = field(default_factory=list)


class Receiver:
    def __init__(
        self,
        *,
        db: Database,
        store: FederationStore,
        queues: LocalQueues,
        policy: FederationPolicy,
        keyring: Keyring[bytes],
        rate_limit: RateLimitConfig,
        clock: Callable[[], float],
        dedup_retention: int,
        max_clock_skew: int = 300,
        on_contact: Callable[[Fqdn], None] | None = None,
        metrics: FederationMetrics | None = None,
        cs: CipherSuite = SUITE_1,
        limits: InboundLimits | None = None,
    ) -> None:
        self.db = db
        self.store = store
        self.queues = queues
        self.policy = policy
        self.keyring = keyring
        self.clock = clock
        self.dedup_retention = dedup_retention
        self.max_clock_skew = max_clock_skew
        self.on_contact = on_contact
        self.metrics = metrics if metrics is not None else FederationMetrics()
        self.cs = cs
        self.limits = limits if limits is not None else InboundLimits(rate_limit)

    def _refuse(self, reason: str) -> None:
        self.metrics.refused.inc(reason=reason)

    async def handle(self, body: bytes) -> bytes:
        """Process one encoded batch; returns the encoded :class:`QsToQsBatchResponse`."""
        now = self.clock()
        try:
            batch = QsToQsBatch.decode(body)
        except DecodeError:
            self._refuse("decode_error")
            raise
        source = batch.source
        if not self.policy.permits(source):
            self._refuse("policy")
        self.policy.check_inbound(source)
        blocked = self.limits.blocked(source, now)
        if blocked > 0:
            self._refuse("rate_limit_domain")
            raise RateLimited(f"too many requests from {source}", retry_after=blocked)
        if not batch.frames:
            if not self.limits.unlimited:
                async with self.db.transaction() as conn:
                    await self._admit(conn, source, [], now)
            return QsToQsBatchResponse((), 0).encode()
        key = await self.keyring.get(source)
        frames = [self._check(raw, source, key, now) for raw in batch.frames]
        if any(f.error == "bad_signature" for f in frames):
            fresh = await self.keyring.refresh(source)
            if fresh is not None and fresh != key:
                frames = [self._check(raw, source, fresh, now) for raw in batch.frames]
        for f in frames:
            if f.error:
                self._refuse(f.error)
        if self.on_contact is not None and any(f.message is not None for f in frames):
            self.on_contact(source)
        results, retry_after = await self._deliver(source, frames, now)
        return QsToQsBatchResponse(
            tuple(results), min(int(retry_after * 1000) + 1, 2**32 - 1) if retry_after else 0
        ).encode()

    def _check(self, raw: bytes, source: Fqdn, key: bytes, now: float) -> _Frame:
        try:
            msg, tbs = QsToQsMessage.split(raw)
        except DecodeError:
            return _Frame(_NO_ID, "decode_error")
        f = _Frame(msg.message_id)
        home = self.queues.domain.value
        if msg.source.value != source.value:
            f.error = "wrong_source"
        elif msg.destination.value != home:
            f.error = "wrong_destination"
        elif not self.cs.verify_with_label(key, LABEL_QS_TO_QS, tbs, msg.signature, prefix=PHX_PREFIX):
            f.error = "bad_signature"
        elif msg.created_at > now + self.max_clock_skew:
            f.error = "from_the_future"
        elif msg.created_at < now - (self.dedup_retention - self.max_clock_skew):
            # Older than our de-duplication memory is guaranteed to reach: a repeat could not be caught.
            f.error = "expired"
        elif not msg.payload.client_queue_configs:
            f.error = "no_recipients"
        elif any(c.client_homeserver_domain.value != home for c in msg.payload.client_queue_configs):
            f.error = "relay_refused"
        else:
            try:
                msg.payload.message_content.group_id()
            except DecodeError:
                f.error = "no_group_id"
        if not f.error:
            f.message = msg
            f.digest = digest_of(tbs)
            f.content = content_of(tbs)
        return f

    async def _admit(self, conn: Connection, source: Fqdn, keys: list[MessageKeys], now: float) -> Admission:
        admission = await self.limits.charge(conn, source, keys, now)
        if admission.domain_wait > 0:
            self._refuse("rate_limit_domain")
            raise RateLimited(f"too many requests from {source}", retry_after=admission.domain_wait)
        return admission

    def _rate_keys(self, fan_out: FanOutMessage) -> MessageKeys:
        if self.limits.queues_unlimited:
            return [], []
        configs: list[bytes] = []
        queues: list[bytes] = []
        for c in fan_out.client_queue_configs:
            configs.append(c.sealed_config.kem_output)
            u = self.queues.unseal(c)
            if u is not None:
                queues.append(u.queue_id)
        return configs, queues

    async def _deliver(
        self, source: Fqdn, frames: list[_Frame], now: float
    ) -> tuple[list[MessageResult], float]:
        results: list[MessageResult] = []
        retry_after = 0.0
        # (index in results, frame) of frames to record and enqueue, in order.
        fresh: list[tuple[int, _Frame]] = []
        deliveries = []
        async with self.db.transaction() as conn:
            valid = [f.message_id for f in frames if f.message is not None]
            seen = await self.store.received(conn, source, valid)
            in_batch: dict[bytes, bytes] = {}
            # Per frame: None for a new one (to charge), else the earlier record it repeats.
            plan: list[tuple[_Frame, ReceivedRecord | None]] = []
            keys: list[MessageKeys] = []
            for f in frames:
                msg = f.message
                prior: ReceivedRecord | None = None
                if msg is not None:
                    prior = seen.get(f.message_id)
                    if prior is None and f.message_id in in_batch:
                        prior = ReceivedRecord(f.message_id, in_batch[f.message_id], b"")
                    if prior is None:
                        in_batch[f.message_id] = f.digest
                        keys.append(self._rate_keys(msg.payload))
                plan.append((f, prior))
            admission = await self._admit(conn, source, keys, now)
            charged = 0
            for f, prior in plan:
                if f.message is None:
                    results.append(MessageResult(f.message_id, MessageStatus.REJECTED, (), f.error))
                elif prior is not None:
                    results.append(self._repeat(f, prior))
                elif charged == admission.admitted:
                    self._refuse("rate_limit_queue")
                    retry_after = admission.wait
                    break
                else:
                    charged += 1
                    fresh.append((len(results), f))
                    results.append(MessageResult(f.message_id, MessageStatus.ACCEPTED, (), ""))
            if fresh:
                recorded = await self.store.remember_many(
                    conn, source, [(f.message_id, f.digest) for _, f in fresh], int(now)
                )
                raced = [f.message_id for _, f in fresh if f.message_id not in recorded]
                if raced:
                    # A concurrent copy of these frames (another request) committed first.
                    again = await self.store.received(conn, source, raced)
                    for index, f in fresh:
                        if f.message_id not in recorded:
                            results[index] = self._repeat(f, again[f.message_id])
                    fresh = [(i, f) for i, f in fresh if f.message_id in recorded]
            if fresh:
                outcome = await self.queues.enqueue(
                    conn,
                    [f.message.payload for _, f in fresh if f.message is not None],
                    int(now),
                    [f.content for _, f in fresh],
                )
                deliveries = outcome.deliveries
                for (index, f), deleted in zip(fresh, outcome.deleted, strict=True):
                    if deleted:
                        await self.store.set_result(conn, source, f.message_id, encode_queue_deleted(deleted))
                        results[index] = MessageResult(
                            f.message_id, MessageStatus.ACCEPTED, tuple(deleted), ""
                        )
        await self.queues.after_commit(deliveries)
        for r in results:
            self.metrics.received.inc(status=r.status.name.lower())
        return results, retry_after

    def _repeat(self, f: _Frame, prior: ReceivedRecord) -> MessageResult:
        if prior.digest != f.digest:
            log.warning("message id %s reused with other content", f.message_id.hex())
            self._refuse("conflict")
            return MessageResult(f.message_id, MessageStatus.REJECTED, (), "conflict")
        return MessageResult(f.message_id, MessageStatus.DUPLICATE, decode_queue_deleted(prior.result), "")
