"""Where federation meets the Queuing Service, in both directions.

Outbound, :class:`OutboxForwarder` is the QS's :class:`~phx.queuing.service.RemoteForwarder`: the QS calls
it inside the fan-out's transaction with the queue configs of one other homeserver, and it writes one
outbox row there (after the policy check: a blocked destination fails the whole fan-out with 403
``policy_denied``, so the DS learns it and nothing is dropped silently).

Inbound, :class:`QsQueues` delivers frames exactly as the QS delivers a local DS's fan-out, but **inside
the receiver's transaction** (``FanOutDeliverer.enqueue_in``), so the de-duplication record commits with
the queue items and a whole batch of frames shares one commit; the per-queue rate limit uses the QS's
cached ``unseal``; outgoing frames are signed with ``QsService.signing_key``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from phx.codec import Writer
from phx.identifiers import Fqdn
from phx.queuing import core
from phx.queuing.fanout import PreparedFanOut
from phx.queuing.messages import (
    ClientQueueConfig,
    FanOutMessage,
    MessageContent,
    QueueDeleted,
)
from phx.queuing.service import QsService
from phx.storage import Connection

from .outbox_store import FederationStore
from .policy import FederationPolicy

__all__ = ["EnqueueOutcome", "LocalQueues", "OutboxForwarder", "QsQueues", "encode_fan_out"]


class OutboxForwarder:
    """The QS's RemoteForwarder: remote queue configs go to the durable outbox, in the QS's transaction."""

    def __init__(
        self,
        store: FederationStore,
        policy: FederationPolicy,
        clock: Callable[[], float],
        on_enqueued: Callable[[Fqdn], None] | None = None,
        *,
        random: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.store = store
        self.policy = policy
        self.clock = clock
        self.on_enqueued = on_enqueued
        self.random = random

    async def forward(
        self,
        conn: Connection,
        domain: Fqdn,
        configs: Sequence[ClientQueueConfig],
        content: MessageContent,
        encoded_content: bytes | None = None,
    ) -> None:
        """``encoded_content``: ``content.encode()`` when the caller holds it (saves encoding it again)."""
        await self.forward_many(conn, [(domain, configs, content, encoded_content)])

    async def forward_many(
        self,
        conn: Connection,
        items: Sequence[tuple[Fqdn, Sequence[ClientQueueConfig], MessageContent, bytes | None]],
    ) -> None:
        """:meth:`forward` for several fan-outs of one transaction at once (one outbox statement for all:
        on SQLite a database round trip costs more than everything else forwarding does). The policy is
        checked for every destination before anything is written."""
        for domain, _, _, _ in items:
            self.policy.check_outbound(domain)
        now = int(self.clock())
        rows = [
            (domain, self.random(16), now, encode_fan_out(configs, content, encoded))
            for domain, configs, content, encoded in items
        ]
        await self.store.enqueue_many(conn, rows)
        if self.on_enqueued is not None and conn.engine == "sqlite":
            # On SQLite the sender's claim queues behind this transaction on the single writer, so an early
            # wake-up sees the row. PostgreSQL wakes senders by NOTIFY, delivered at commit.
            for domain in {d for d, _, _, _ in items}:
                self.on_enqueued(domain)


def encode_fan_out(
    configs: Sequence[ClientQueueConfig], content: MessageContent, encoded_content: bytes | None = None
) -> bytes:
    """``FanOutMessage(configs, content).encode()``, reusing the content's encoding when given."""
    if encoded_content is None:
        return FanOutMessage(tuple(configs), content).encode()
    w = Writer()
    w.vector(configs, _write_config)
    w.raw(encoded_content)
    return w.getvalue()


def _write_config(w: Writer, config: ClientQueueConfig) -> None:
    config._write(w)


@dataclass(frozen=True, slots=True)
class EnqueueOutcome:
    #: Per fan-out, in order: the configs whose queue does not exist.
    deleted: list[list[QueueDeleted]]
    #: Queues that grew (for listener wake-ups and pushes after commit).
    deliveries: list[core.Delivery]


class LocalQueues(Protocol):
    """What the receiver needs from the local QS."""

    @property
    def domain(self) -> Fqdn: ...

    @property
    def signing_key(self) -> bytes: ...

    def unseal(self, config: ClientQueueConfig) -> core.Unsealed | None: ...

    async def enqueue(
        self,
        conn: Connection,
        fan_outs: Sequence[FanOutMessage],
        now: int,
        contents: Sequence[bytes] | None = None,
    ) -> EnqueueOutcome:
        """Deliver fan-outs (every config for this domain) to local queues, in order, inside ``conn``.
        ``contents``: each fan-out's ``MessageContent`` already encoded (saves encoding it again)."""
        ...

    async def after_commit(self, deliveries: Sequence[core.Delivery]) -> None: ...


class QsQueues:
    """:class:`LocalQueues` over a :class:`~phx.queuing.service.QsService`, through the QS's fan-out API for
    callers that own the transaction (``prepare`` / ``enqueue_in`` / ``after_commit``): the same rules, the
    same store calls and the same batching as the QS's own fan-out."""

    def __init__(self, service: QsService) -> None:
        self.service = service

    @property
    def domain(self) -> Fqdn:
        return self.service.domain

    @property
    def signing_key(self) -> bytes:
        return self.service.signing_key

    def unseal(self, config: ClientQueueConfig) -> core.Unsealed | None:
        return self.service.fan_out.unseal(config)

    async def enqueue(
        self,
        conn: Connection,
        fan_outs: Sequence[FanOutMessage],
        now: int,
        contents: Sequence[bytes] | None = None,
    ) -> EnqueueOutcome:
        deliverer = self.service.fan_out
        stamp = now.to_bytes(8, "big")
        prepared = []
        for i, fan_out in enumerate(fan_outs):
            if contents is None:
                p = deliverer.prepare(fan_out, now)
            else:
                # prepare() without encoding the content again: FanOutQueuePayload is {u64 timestamp,
                # MessageContent}, and we hold the content's bytes.
                content = fan_out.message_content
                classified = deliverer.classify(fan_out.client_queue_configs)
                p = PreparedFanOut(content.group_id(), content, classified, stamp + contents[i], now)
            if p.classified.remote:
                # The receiver refuses such frames; enqueue_in would hand them to the forwarder (a relay).
                raise ValueError("a federated fan-out may only name local queues")
            prepared.append(p)
        result = await deliverer.enqueue_in(conn, prepared)
        return EnqueueOutcome(result.deleted, list(result.deliveries))

    async def after_commit(self, deliveries: Sequence[core.Delivery]) -> None:
        await self.service.fan_out.after_commit(deliveries)
