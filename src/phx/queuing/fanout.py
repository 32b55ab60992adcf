"""Fan-out delivery with group commit.

Each fan-out is prepared outside any transaction (group id, config unsealing through a bounded cache keyed
by the sealed bytes, the payload encoded once). Fan-outs that arrive while a transaction is running are
delivered together in the next one: one client lookup, one locking read of the queue states, one batch of
state updates and one of inserts, one commit (one fsync on SQLite) for all of them. A fan-out is never
split across transactions, so "all deliveries of one fan-out are one transaction" holds. If a shared
transaction fails, each of its fan-outs is retried alone, so one fan-out's failure (say, a remote
recipient without federation) never fails another's.

A caller that checks its own rows may pass a :class:`Guard` (:meth:`FanOutDeliverer.deliver_prepared`):
it runs in the batch's transaction before anything is written, once per batch for all its keys, and a
fan-out whose key no longer holds fails with :class:`GuardFailed` having written nothing. Fan-outs with an
``order`` key (the DS uses the group) are never in two transactions in flight at once (PostgreSQL runs
two), so they commit in the order they were submitted.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from phx.config import QsConfig
from phx.crypto import CipherSuite
from phx.errors import PhxError, Unavailable, ValidationError
from phx.identifiers import Fqdn, GroupId
from phx.queues import Random
from phx.storage import Connection, Database

from . import core
from .listeners import ListenerRegistry, PushNotifier
from .messages import (
    ClientQueueConfig,
    FanOutMessage,
    MessageContent,
    QueueDeleted,
    decrypt_push_token,
    unseal_queue_config,
)
from .store import QsStore

__all__ = [
    "DEFAULT_BATCH",
    "DEFAULT_CONFIG_CACHE",
    "DEFAULT_PARALLEL",
    "EnqueueResult",
    "FanOutDeliverer",
    "FederationUnavailable",
    "Guard",
    "GuardFailed",
    "PreparedFanOut",
    "RemoteForwarder",
]

log = logging.getLogger("phx.queuing")

#: Bound on the cache of unsealed queue configs (an entry is ~300 bytes).
DEFAULT_CONFIG_CACHE = 100_000
#: Most fan-outs delivered in one transaction.
DEFAULT_BATCH = 64
#: Most fan-out transactions in flight at once (PostgreSQL; SQLite always runs one).
DEFAULT_PARALLEL = 2


class RemoteForwarder(Protocol):
    async def forward(
        self, conn: Connection, domain: Fqdn, configs: Sequence[ClientQueueConfig], content: MessageContent
    ) -> None:
        """Hand ``content`` for ``configs`` (all of ``domain``) to federation, inside the fan-out's
        transaction ``conn`` (so an outbox row commits with the local deliveries, or not at all). A
        ``QueueDeleted`` from the remote QS reaches the DS asynchronously, through federation.

        A forwarder may also offer ``forward_many(conn, items)`` (items: ``(domain, configs, content,
        content.encode())``): a transaction's remote fan-outs then go in one call (one outbox statement)."""
        ...


#: ``(domain, configs, content, encoded content)``: one remote fan-out for ``forward_many``.
RemoteItem = tuple[Fqdn, Sequence[ClientQueueConfig], MessageContent, bytes | None]


class Guard(Protocol):
    async def hold(self, conn: Connection, keys: Collection[Hashable]) -> Collection[Hashable]:
        """Inside a batch's transaction, before anything is delivered: which of ``keys`` (those of the
        batch's fan-outs guarded by this guard, each once) still hold. The others fail with
        :class:`GuardFailed`."""
        ...


class GuardFailed(Exception):
    """The fan-out's guard did not hold in its transaction: nothing of it was delivered. An internal
    signal to the caller (who retries its own way), not an error of any peer."""


class FederationUnavailable:
    """The forwarder until federation exists: a fan-out with remote recipients fails with 503."""

    async def forward(
        self, conn: Connection, domain: Fqdn, configs: Sequence[ClientQueueConfig], content: MessageContent
    ) -> None:
        raise Unavailable(f"cannot forward to {domain}: federation is not available on this server")


@dataclass(frozen=True, slots=True)
class PreparedFanOut:
    group_id: GroupId
    content: MessageContent
    classified: core.Classified
    #: The encoded FanOutQueuePayload: the 8-byte time ``now``, then ``content`` encoded.
    payload: bytes
    now: int


@dataclass(frozen=True, slots=True)
class EnqueueResult:
    #: Per fan-out, in order: the configs whose queue does not exist.
    deleted: list[list[QueueDeleted]]
    #: The last delivery into each queue that grew (for :meth:`FanOutDeliverer.after_commit`).
    deliveries: list[core.Delivery]


@dataclass(slots=True)
class _Job:
    prepared: Sequence[PreparedFanOut]
    future: asyncio.Future[list[list[QueueDeleted]]]
    guard: Guard | None = None
    key: Hashable = None
    order: Hashable = None


class FanOutDeliverer:
    def __init__(
        self,
        db: Database,
        store: QsStore,
        config: QsConfig,
        domain: Fqdn,
        queue_config_key: bytes,
        *,
        cs: CipherSuite,
        clock: Callable[[], int],
        forwarder: RemoteForwarder,
        listeners: ListenerRegistry,
        notifier: PushNotifier,
        random: Random,
        cache_size: int = DEFAULT_CONFIG_CACHE,
        batch: int = DEFAULT_BATCH,
        parallel: int = DEFAULT_PARALLEL,
    ) -> None:
        self.db = db
        self.store = store
        self.config = config
        self.domain = domain
        self.cs = cs
        self.clock = clock
        self.forwarder = forwarder
        self.listeners = listeners
        self.notifier = notifier
        self.random = random
        self._qc_private = queue_config_key
        self._cache: OrderedDict[tuple[bytes, bytes], core.LocalRecipient | None] = OrderedDict()
        self._cache_size = cache_size
        self._batch = max(1, batch)
        self._pending: list[_Job] = []
        # SQLite has one writer, so a second transaction would only wait for the first; PostgreSQL can
        # execute one batch while this process encrypts the next.
        self._max_drainers = 1 if db.engine == "sqlite" else max(1, parallel)
        self._drainers: set[asyncio.Task[None]] = set()
        # Order keys of the fan-outs in transactions now running.
        self._running: set[Hashable] = set()

    def unseal(self, config: ClientQueueConfig) -> core.Unsealed | None:
        """What a sealed config addressed to this QS holds, None if it does not open (cached)."""
        r = self._recipient(config)
        return None if r is None else r.unsealed

    def _recipient(self, config: ClientQueueConfig) -> core.LocalRecipient | None:
        """The local recipient a config of this QS's domain names, None if it does not open. Cached by the
        sealed bytes (both fields: a concatenation could be split differently); the cached recipient
        carries the first config seen, equal to this one."""
        sealed = config.sealed_config
        key = (sealed.kem_output, sealed.ciphertext)
        cache = self._cache
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
        try:
            u = core.Unsealed.of(unseal_queue_config(self._qc_private, self.domain, sealed, cs=self.cs))
            new: core.LocalRecipient | None = core.LocalRecipient(config, u)
        except ValidationError:
            new = None
        cache[key] = new
        if len(cache) > self._cache_size:
            cache.popitem(last=False)
        return new

    def classify(self, configs: Iterable[ClientQueueConfig]) -> core.Classified:
        """:func:`core.classify_configs` with this QS's cache, comparing domains by their text."""
        out = core.Classified()
        own = self.domain.value
        local, unusable = out.local, out.unusable
        for config in configs:
            domain = config.client_homeserver_domain
            if domain.value != own:
                out.remote.setdefault(domain, []).append(config)
                continue
            r = self._recipient(config)
            if r is None:
                unusable.append(config)
            else:
                local.append(r)
        return out

    @property
    def cache_len(self) -> int:
        return len(self._cache)

    async def deliver(self, fan_out: FanOutMessage) -> list[QueueDeleted]:
        """Deliver one fan-out; returns the configs whose queue does not exist (``QueueDeleted``)."""
        return (await self.deliver_prepared((self.prepare(fan_out, self.clock()),)))[0]

    async def deliver_prepared(
        self,
        prepared: Sequence[PreparedFanOut],
        *,
        guard: Guard | None = None,
        key: Hashable = None,
        order: Hashable = None,
    ) -> list[list[QueueDeleted]]:
        """Deliver prepared fan-outs, all in one transaction (shared with other callers' fan-outs) after
        ``guard`` said ``key`` holds in it (else :class:`GuardFailed`, nothing delivered); returns each
        fan-out's ``QueueDeleted`` configs. Fan-outs with the same ``order`` commit in submission order."""
        future: asyncio.Future[list[list[QueueDeleted]]] = asyncio.get_running_loop().create_future()
        self._pending.append(_Job(prepared, future, guard, key, order))
        # A finished drainer leaves the set only in a later loop step (done callbacks are scheduled), so
        # count the live ones: a job must never wait behind a drainer that has already returned.
        # A job whose order key is in a running transaction waits for that transaction's drainer, which
        # goes on with it: a new drainer would only find it blocked.
        live = [t for t in self._drainers if not t.done()]
        if len(live) < self._max_drainers and (order is None or order not in self._running):
            task = asyncio.ensure_future(self._drain())
            self._drainers.add(task)
            task.add_done_callback(self._drainers.discard)
        return await future

    def _take_batch(self) -> list[_Job]:
        """The next batch: pending jobs in order, up to the batch size, skipping (with every later job of
        the same order key) those whose order key is in a running transaction."""
        jobs: list[_Job] = []
        rest: list[_Job] = []
        blocked: set[Hashable] = set()
        running = self._running
        size = 0
        for job in self._pending:
            if job.future.done():
                continue
            order = job.order
            if size >= self._batch or (order is not None and (order in running or order in blocked)):
                rest.append(job)
                if order is not None:
                    blocked.add(order)
                continue
            jobs.append(job)
            size += len(job.prepared)
        self._pending = rest
        return jobs

    async def _drain(self) -> None:
        try:
            while self._pending:
                # Let the callers whose fan-outs just committed submit their next ones first: bigger
                # batches share one commit (fsync) and one round of statements.
                await asyncio.sleep(0)
                jobs = self._take_batch()
                if not jobs:
                    if self._pending:
                        # Every pending job waits for a running transaction, whose drainer goes on with
                        # them when it is done.
                        return
                    continue
                orders = {j.order for j in jobs if j.order is not None}
                self._running |= orders
                try:
                    await self._run_or_split(jobs)
                finally:
                    self._running -= orders
        except BaseException:
            for job in self._pending:
                job.future.cancel()
            self._pending.clear()
            raise

    async def _run_or_split(self, jobs: list[_Job]) -> None:
        try:
            await self._run(jobs)
        except Exception as e:
            if len(jobs) == 1:
                _fail(jobs[0], e)
                return
            for job in jobs:
                if job.future.done():
                    continue
                try:
                    await self._run([job])
                except Exception as e1:
                    _fail(job, e1)

    def prepare(self, fan_out: FanOutMessage, now: int) -> PreparedFanOut:
        """The work a fan-out needs before any transaction: group id, unsealed configs, payload."""
        content = fan_out.message_content
        return PreparedFanOut(
            content.group_id(),
            content,
            self.classify(fan_out.client_queue_configs),
            # FanOutQueuePayload(now, content).encode(), without building the struct.
            now.to_bytes(8, "big") + content.encode(),
            now,
        )

    async def enqueue_in(self, conn: Connection, fan_outs: Sequence[PreparedFanOut]) -> EnqueueResult:
        """Deliver prepared fan-outs, in order, inside the caller's transaction ``conn`` (remote configs go
        to the forwarder in it too). Call :meth:`after_commit` with the result once ``conn`` committed."""
        owners = {r.unsealed.queue_id: r.unsealed.qs_uid for f in fan_outs for r in f.classified.local}
        targets, states = await self.store.lock_delivery_targets(conn, owners)
        planner = core.BatchPlanner(
            self.cs,
            targets,
            states,
            rotation_interval=self.config.ratchet_key_rotation_interval,
            random=self.random,
        )
        for f in fan_outs:
            planner.add(f.classified.local, f.group_id, f.payload, f.now)
        plan = planner.finish()
        await self.store.queues.save_advances(conn, plan.advances, plan.messages, plan.rows)
        deleted: list[list[QueueDeleted]] = []
        remote: list[RemoteItem] = []
        for f, dead in zip(fan_outs, plan.deleted, strict=True):
            unusable = f.classified.unusable
            deleted.append([QueueDeleted(c, f.group_id) for c in (*dead, *unusable)])
            if f.classified.remote:
                encoded = f.payload[8:]
                remote += [(d, configs, f.content, encoded) for d, configs in f.classified.remote.items()]
        if remote:
            await self._forward(conn, remote)
        return EnqueueResult(deleted, plan.delivered)

    async def _forward(self, conn: Connection, items: list[RemoteItem]) -> None:
        """Every remote fan-out of the transaction, in order: in one ``forward_many`` call when the
        forwarder has it (one outbox statement for the batch), else one ``forward`` each."""
        many: Callable[[Connection, list[RemoteItem]], Awaitable[None]] | None = getattr(
            self.forwarder, "forward_many", None
        )
        if many is not None:
            await many(conn, items)
            return
        for domain, configs, content, _ in items:
            await self.forwarder.forward(conn, domain, configs, content)

    async def after_commit(self, deliveries: Sequence[core.Delivery]) -> None:
        """Wake live listeners, or push to clients with none (never raises for a push failure)."""
        listeners = self.listeners
        for d in deliveries:
            # Most queues have neither a listener nor a push token: no coroutine for them.
            if d.encrypted_push_token is not None or listeners.is_listening(d.queue_id):
                await self._after_delivery(d)

    async def _run(self, jobs: list[_Job]) -> None:
        async with self.db.transaction() as conn:
            jobs = await self._check_guards(conn, jobs)
            if not jobs:
                return
            result = await self.enqueue_in(conn, [p for j in jobs for p in j.prepared])
        deleted = iter(result.deleted)
        for job in jobs:
            mine = [next(deleted) for _ in job.prepared]
            if not job.future.done():
                job.future.set_result(mine)
        await self.after_commit(result.deliveries)

    @staticmethod
    async def _check_guards(conn: Connection, jobs: list[_Job]) -> list[_Job]:
        """The jobs whose guard holds (or that have none); the others fail with :class:`GuardFailed`."""
        by_guard: dict[Guard, set[Hashable]] = {}
        for j in jobs:
            if j.guard is not None:
                by_guard.setdefault(j.guard, set()).add(j.key)
        if not by_guard:
            return jobs
        holding = {g: set(await g.hold(conn, keys)) for g, keys in by_guard.items()}
        kept = []
        for j in jobs:
            if j.guard is None or j.key in holding[j.guard]:
                kept.append(j)
            elif not j.future.done():
                j.future.set_exception(GuardFailed())
        return kept

    async def _after_delivery(self, d: core.Delivery) -> None:
        qid = d.queue_id
        if self.listeners.is_listening(qid):
            self.listeners.notify(qid, d.next_sequence)
            return
        if d.push_token_key is None or d.encrypted_push_token is None:
            return
        try:
            token = decrypt_push_token(d.push_token_key, d.encrypted_push_token, cs=self.cs)
            await self.notifier.notify(token)
        except PhxError as e:
            # A stale key or a broken provider must not fail a delivery that has committed.
            log.warning("push notification not sent: %s", e)


def _fail(job: _Job, e: Exception) -> None:
    if not job.future.done():
        job.future.set_exception(e)
