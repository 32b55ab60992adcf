"""Where federation meets the Queuing Service, in both directions.

Outbound, :class:`OutboxForwarder` is the QS's :class:`~phx.queuing.service.RemoteForwarder`: the QS calls
it inside the fan-out's transaction with the queue configs of one other homeserver, and it writes one
outbox row there (after the policy check: a blocked destination fails the whole fan-out with 403
``policy_denied``, so the DS learns it and nothing is dropped silently).

Inbound, the receiver needs three things the QS's public interface does not offer yet, reached here
through its internals until it does (see the federation report; nothing else in phx.federation touches
QS internals):

* enqueue a fan-out **inside a transaction the caller owns** (``QsService.enqueue_fan_out`` opens its own),
  so the de-duplication record commits with the queue items and several frames share one commit;
* the post-commit work of a delivery (``FanOutDeliverer._after_delivery``: live-listener wake-up or push);
* the QS signing key (``QsService._signing_key``) to sign outgoing frames.

:class:`QsQueues` does this with the QS's own pure rules (:func:`phx.queuing.core.classify_configs`,
:func:`~phx.queuing.core.plan_deliveries`) and store, i.e. exactly as the QS handles a local DS's fan-out.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from phx.identifiers import Fqdn
from phx.queues import QueueState
from phx.queuing import core
from phx.queuing.messages import (
    ClientQueueConfig,
    FanOutMessage,
    FanOutQueuePayload,
    MessageContent,
    QueueDeleted,
)
from phx.queuing.service import QsService
from phx.storage import Connection

from .outbox_store import FederationStore
from .policy import FederationPolicy

__all__ = ["EnqueueOutcome", "LocalQueues", "OutboxForwarder", "QsQueues"]


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
        self, conn: Connection, domain: Fqdn, configs: Sequence[ClientQueueConfig], content: MessageContent
    ) -> None:
        self.policy.check_outbound(domain)
        payload = FanOutMessage(tuple(configs), content).encode()
        await self.store.enqueue(conn, domain, self.random(16), int(self.clock()), payload)
        if self.on_enqueued is not None and conn.engine == "sqlite":
            # On SQLite the sender's claim queues behind this transaction on the single writer, so an early
            # wake-up sees the row. PostgreSQL wakes senders by NOTIFY, delivered at commit.
            self.on_enqueued(domain)


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
    """:class:`LocalQueues` over a :class:`~phx.queuing.service.QsService`: the same rules and store calls
    as the QS's own fan-out (:class:`phx.queuing.fanout.FanOutDeliverer`), in the caller's transaction."""

    def __init__(self, service: QsService) -> None:
        self.service = service

    @property
    def domain(self) -> Fqdn:
        return self.service.domain

    @property
    def signing_key(self) -> bytes:
        return self.service._signing_key

    def unseal(self, config: ClientQueueConfig) -> core.Unsealed | None:
        return self.service.fan_out.unseal(config)

    async def enqueue(
        self,
        conn: Connection,
        fan_outs: Sequence[FanOutMessage],
        now: int,
        contents: Sequence[bytes] | None = None,
    ) -> EnqueueOutcome:
        s = self.service
        jobs = []
        stamp = now.to_bytes(8, "big")
        for i, fan_out in enumerate(fan_outs):
            classified = core.classify_configs(fan_out.client_queue_configs, s.domain, s.fan_out.unseal)
            if classified.remote:
                raise ValueError("a federated fan-out may only name local queues")  # the receiver checks
            content = fan_out.message_content
            # FanOutQueuePayload is {u64 timestamp, MessageContent}: prefix the bytes we already have.
            payload = (
                stamp + contents[i] if contents is not None else FanOutQueuePayload(now, content).encode()
            )
            jobs.append((classified, content.group_id(), payload))
        owners = {r.unsealed.queue_id: r.unsealed.qs_uid for c, _, _ in jobs for r in c.local}
        targets, states = await s.store.lock_delivery_targets(conn, owners)
        changed: dict[bytes, QueueState] = {}
        items = []
        deleted: list[list[QueueDeleted]] = []
        latest: dict[bytes, core.Delivery] = {}
        for classified, group_id, payload in jobs:
            plan = core.plan_deliveries(
                s.cs,
                classified.local,
                targets,
                states,
                group_id,
                payload,
                now,
                rotation_interval=s.config.ratchet_key_rotation_interval,
                random=s.random,
            )
            states.update(plan.states)
            changed.update(plan.states)
            items.extend(plan.items)
            deleted.append([QueueDeleted(c, group_id) for c in (*plan.deleted, *classified.unusable)])
            for d in plan.delivered:
                latest[d.queue_id] = d
        await s.store.queues.save(conn, changed, items)
        return EnqueueOutcome(deleted, list(latest.values()))

    async def after_commit(self, deliveries: Sequence[core.Delivery]) -> None:
        for d in deliveries:
            await self.service.fan_out._after_delivery(d)
