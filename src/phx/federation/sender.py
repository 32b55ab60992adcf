"""The sender: a small asyncio task around the pure :class:`~.outbox.Outbox` scheduler.

Loop: ask the scheduler what is due, start one attempt per due destination (bounded concurrency), sleep
until its timer, a wake-up (a local enqueue on SQLite, a PostgreSQL ``NOTIFY`` from any instance, a peer
contacting us) or the next poll of the database (which catches everything else: other instances' work,
state after a restart).

One attempt, for destination ``D``:

1. take ``D``'s lease and read the head of its outbox (one short transaction). If another instance holds
   the lease, or the persisted back-off is not over and this is not a probe, the scheduler is told and
   nothing is sent;
2. drop rows older than ``federation.outbox.max_age``; sign the rest of the batch (one signature per frame)
   and ``POST`` it to ``qs.D`` — no transaction is open while the request is in flight;
3. :func:`interpret` the answer (pure): which rows are done (accepted, duplicate, refused for good) and
   what the scheduler should hear (success, transient failure, throttled, too large);
4. in one transaction: delete the done rows, hand ``QueueDeleted`` reports to the sink, persist the
   back-off, keep or release the lease. When the batch went through and more is queued, the same
   transaction renews the lease and reads the next head, so the next attempt (which the scheduler starts
   at once) begins with step 2: one writer transaction per batch instead of two while a backlog lasts.
   That head is used only if it is full (more rows than a batch) and only within a fraction of the lease;
   it is the same read step 1 would make, since no one else sends or deletes this destination's rows
   while we hold the lease.

Crash safety follows from the order: a row is deleted only after the peer answered for it, and the peer
answers a repeat with its first answer, so a crash anywhere resends at most what was in flight and the
receiver absorbs the repeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from phx.crypto import SUITE_1, CipherSuite
from phx.errors import DecodeError, PhxError
from phx.identifiers import Fqdn, Service
from phx.queuing.messages import QueueDeleted
from phx.storage import Database

from .discovery import PeerClient, PeerResponse, PeerUnreachable
from .messages import MessageStatus, QsToQsBatch, QsToQsBatchResponse, QsToQsMessage
from .metrics import FederationMetrics
from .outbox import (
    Destination,
    DestinationState,
    Due,
    Outbox,
    OutboxPolicy,
    OutboxRow,
    Result,
    ResultKind,
    select_batch,
)
from .outbox_store import FederationStore, QueuedMessage

__all__ = [
    "DsSink",
    "LoggingQueueDeletedSink",
    "Outcome",
    "QueueDeletedSink",
    "Sender",
    "instance_id",
    "interpret",
]

log = logging.getLogger("phx.federation.sender")

OPERATION = "federated_enqueue"


class QueueDeletedSink(Protocol):
    async def queue_deleted(self, source: Fqdn, items: Sequence[QueueDeleted]) -> None:
        """``QueueDeleted`` reports a remote QS (``source``) sent back. Called before the answered messages
        leave the outbox, so a crash in between repeats a report rather than losing it (at least once)."""
        ...


class LoggingQueueDeletedSink:
    """When no DS takes the reports: log and keep them."""

    def __init__(self) -> None:
        self.received: list[tuple[Fqdn, QueueDeleted]] = []

    async def queue_deleted(self, source: Fqdn, items: Sequence[QueueDeleted]) -> None:
        for item in items:
            log.info("queue of a client on %s deleted (group %s)", source, item.group_id)
            self.received.append((source, item))


class DsQueueDeleted(Protocol):
    async def queue_deleted(self, reports: Sequence[QueueDeleted], *, source: Fqdn | None = None) -> None: ...


class DsSink:
    """Reports go to the local DS (:meth:`phx.delivery.service.DsService.queue_deleted`)."""

    def __init__(self, ds: DsQueueDeleted) -> None:
        self.ds = ds

    async def queue_deleted(self, source: Fqdn, items: Sequence[QueueDeleted]) -> None:
        await self.ds.queue_deleted(items, source=source)


def instance_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}"


@dataclass(slots=True)
class Outcome:
    kind: ResultKind
    #: Outbox ids the peer answered for (accepted or duplicate).
    done: list[int] = field(default_factory=list)
    #: Outbox ids refused for good: dropped, with the reason.
    dropped: list[tuple[int, str]] = field(default_factory=list)
    queue_deleted: list[QueueDeleted] = field(default_factory=list)
    retry_after: float = 0.0
    error: str = ""


def interpret(
    response: PeerResponse | PeerUnreachable,
    sent: Sequence[QueuedMessage],
    now: float,
    *,
    default_retry_after: float = 1.0,
) -> Outcome:
    """What an answer to a batch means for the outbox (pure: no I/O)."""
    if isinstance(response, PeerUnreachable):
        return Outcome(ResultKind.TRANSIENT, error=str(response)[:200])
    status = response.status
    if status == 200:
        try:
            answer = QsToQsBatchResponse.decode(response.body)
        except DecodeError as e:
            return Outcome(ResultKind.TRANSIENT, error=f"undecodable answer: {e}")
        if len(answer.results) > len(sent):
            return Outcome(ResultKind.TRANSIENT, error="answer has more results than the batch")
        out = Outcome(ResultKind.SUCCESS)
        for row, res in zip(sent, answer.results, strict=False):
            if res.message_id != row.message_id:
                # Not an answer to what we sent: trust none of it.
                return Outcome(ResultKind.TRANSIENT, error="answer does not match the batch")
            if res.status == MessageStatus.REJECTED:
                out.dropped.append((row.id, res.error or "rejected"))
            else:
                out.done.append(row.id)
                out.queue_deleted.extend(res.queue_deleted)
        if len(answer.results) < len(sent):
            if answer.retry_after_ms:
                out.kind = ResultKind.THROTTLED
                out.retry_after = answer.retry_after_ms / 1000
                out.error = "throttled by the peer"
            else:
                out.kind = ResultKind.TRANSIENT
                out.error = "answer cut short without a retry time"
        return out
    if status == 429:
        return Outcome(
            ResultKind.THROTTLED,
            retry_after=response.retry_after(now, default_retry_after),
            error="429 " + response.error_code(),
        )
    if status == 413 and len(sent) > 1:
        return Outcome(ResultKind.TOO_LARGE, error="413 batch too large")
    if 400 <= status < 500 and status != 408:
        code = response.error_code()
        return Outcome(ResultKind.SUCCESS, dropped=[(row.id, code) for row in sent], error=f"{status} {code}")
    return Outcome(ResultKind.TRANSIENT, error=f"{status} {response.error_code()}")


class Sender:
    def __init__(
        self,
        *,
        db: Database,
        store: FederationStore,
        client: PeerClient,
        home: Fqdn,
        signing_key: Callable[[], bytes],
        policy: OutboxPolicy,
        clock: Callable[[], float],
        sink: QueueDeletedSink | None = None,
        metrics: FederationMetrics | None = None,
        rng: random.Random | None = None,
        owner: str | None = None,
        poll_interval: float = 2.0,
        max_concurrency: int = 16,
        lease: float = 60.0,
        cs: CipherSuite = SUITE_1,
    ) -> None:
        self.db = db
        self.store = store
        self.client = client
        self.home = home
        self._signing_key = signing_key
        self.policy = policy
        self.clock = clock
        self.sink: QueueDeletedSink = sink if sink is not None else LoggingQueueDeletedSink()
        self.metrics = metrics if metrics is not None else FederationMetrics()
        self.outbox = Outbox(policy, rng if rng is not None else random.Random())
        self.owner = owner if owner is not None else instance_id()
        self.poll_interval = poll_interval
        self.max_concurrency = max_concurrency
        self.lease_ms = int(lease * 1000)
        self.cs = cs
        #: Per destination: the head read (lease renewed) by the last attempt's completing transaction,
        #: with when it was read.
        self._next_head: dict[Fqdn, tuple[float, list[QueuedMessage]]] = {}
        #: How long such a head may stand in for step 1 (well inside the lease it renewed).
        self.head_reuse = min(1.0, lease / 4)
        #: Attempts that began with such a head (for tests and metrics).
        self.continued = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._attempts: set[asyncio.Task[None]] = set()
        self._next_poll = 0.0

    # --- events from the outside --------------------------------------------------------------------------

    def notify_enqueued(self, destination: Fqdn) -> None:
        self.outbox.enqueued(destination, self.clock())
        self._wake.set()

    def contacted(self, destination: Fqdn) -> None:
        if self.outbox.contacted(destination, self.clock()):
            log.info("%s contacted us: retrying it now", destination)
            self._wake.set()

    def poll_soon(self) -> None:
        self._next_poll = 0.0
        self._wake.set()

    # --- life cycle -------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="phx-federation-sender")

    async def stop(self, *, release: bool = True) -> None:
        """Stop sending. In-flight attempts are cancelled (their rows stay queued and are sent again
        later); ``release=False`` leaves the leases to lapse, as a crash would."""
        task, self._task = self._task, None
        self._next_head.clear()
        tasks = [t for t in (task, *self._attempts) if t is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if release:
            try:
                async with self.db.transaction() as conn:
                    await self.store.release_all(conn, self.owner)
            except Exception as e:  # shutting down: the leases lapse anyway
                log.warning("could not release federation leases: %s", e)

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            now = self.clock()
            if now >= self._next_poll:
                await self._poll(now)
                self._next_poll = self.clock() + self.poll_interval
            free = self.max_concurrency - len(self._attempts)
            if free > 0:
                for due in self.outbox.next_due(now, limit=free):
                    task = asyncio.create_task(self._attempt_safely(due))
                    self._attempts.add(task)
                    task.add_done_callback(self._attempt_done)
            timer = self.outbox.get_timer(now) if len(self._attempts) < self.max_concurrency else None
            deadline = self._next_poll if timer is None else min(timer, self._next_poll)
            delay = max(0.0, deadline - self.clock())
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
            else:
                await asyncio.sleep(0)

    def _attempt_done(self, task: asyncio.Task[None]) -> None:
        self._attempts.discard(task)
        self._wake.set()

    async def _poll(self, now: float) -> None:
        try:
            async with self.db.transaction(readonly=True) as conn:
                pending = await self.store.pending(conn)
                rows = await self.store.destinations(conn) if pending else []
        except (PhxError, OSError) as e:
            log.warning("federation poll failed: %s", e)
            return
        for dest, has_backlog, failures, retry_at_ms in pending:
            self.outbox.observe(
                dest, pending=has_backlog, failures=failures, retry_at=retry_at_ms / 1000, now=now
            )
        self.metrics.observe_destinations(rows, now)

    # --- one attempt ------------------------------------------------------------------------------------

    async def _attempt_safely(self, due: Due) -> None:
        try:
            await self._attempt(due)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            # A local failure (database down, a bug): the destination is not to blame, so no back-off
            # growth; look again shortly.
            log.exception("federation attempt to %s failed locally", due.domain)
            d = self.outbox.get(due.domain)
            if d is not None and d.state in (DestinationState.SENDING, DestinationState.PROBING):
                self.outbox.result(
                    due.domain,
                    Result(
                        ResultKind.THROTTLED, more=True, retry_after=self.policy.backoff_base, error=str(e)
                    ),
                    self.clock(),
                )

    async def _attempt(self, due: Due) -> None:
        dest = due.domain
        now = self.clock()
        head = self._next_head.pop(dest, None)
        if head is not None and not due.probe and 0 <= now - head[0] < self.head_reuse:
            self.continued += 1
            rows = head[1][: due.limit + 1]
        else:
            async with self.db.transaction() as conn:
                claim = await self.store.claim(
                    conn, dest, self.owner, int(now * 1000), self.lease_ms, probe=due.probe
                )
                rows = await self.store.head(conn, dest, due.limit + 1) if claim.ok else []
            if not claim.ok:
                if claim.backing_off:
                    self.outbox.deferred(dest, claim.failures, claim.retry_at_ms / 1000, now)
                else:
                    self.outbox.leased_elsewhere(dest, now, until=claim.lease_until_ms / 1000)
                return
        by_id = {r.id: r for r in rows}
        heads = [OutboxRow(r.id, r.created_at, len(r.payload)) for r in rows]
        send_rows, expired = select_batch(
            heads, now, max_age=self.policy.max_age, limit=due.limit, max_bytes=self.policy.batch_bytes
        )
        sent = [by_id[r.id] for r in send_rows]
        if sent:
            key = self._signing_key()
            frames = tuple(
                QsToQsMessage.sign_encoded(
                    m.message_id, m.created_at, self.home, dest, m.payload, key, cs=self.cs
                )
                for m in sent
            )
            body = QsToQsBatch(self.home, frames).encode()
            response: PeerResponse | PeerUnreachable
            try:
                response = await self.client.post(dest, Service.QS, OPERATION, body)
            except PeerUnreachable as e:
                response = e
            outcome = interpret(response, sent, self.clock(), default_retry_after=self.policy.backoff_base)
        else:
            outcome = Outcome(ResultKind.SUCCESS)
        now = self.clock()
        dropped = [(r.id, "expired") for r in expired] + outcome.dropped
        removed = len(outcome.done) + len(dropped)
        more = len(rows) > removed
        d = self.outbox.result(
            dest, Result(outcome.kind, removed, more, outcome.retry_after, outcome.error), now, settle=True
        )
        self.metrics.attempts.inc(destination=dest.value, outcome=outcome.kind.value)
        if outcome.done:
            self.metrics.sent.inc(len(outcome.done), destination=dest.value)
        for _, reason in dropped:
            self.metrics.dropped.inc(destination=dest.value, reason=reason)
        if dropped:
            log.warning(
                "dropped %d message(s) for %s: %s", len(dropped), dest, sorted({r for _, r in dropped})
            )
        if outcome.kind != ResultKind.SUCCESS:
            log.info("delivery to %s: %s (%s)", dest, outcome.kind.value, outcome.error)
        try:
            if outcome.queue_deleted:
                self.metrics.queue_deleted.inc(len(outcome.queue_deleted))
                await self.sink.queue_deleted(dest, outcome.queue_deleted)
            await self._complete(dest, outcome, dropped, d, now)
        finally:
            self.outbox.settled(dest)

    async def _complete(
        self, dest: Fqdn, outcome: Outcome, dropped: list[tuple[int, str]], d: Destination, now: float
    ) -> None:
        keep = d.state == DestinationState.READY
        head: list[QueuedMessage] = []
        async with self.db.transaction() as conn:
            await self.store.complete(
                conn,
                dest,
                self.owner,
                delete_ids=outcome.done + [i for i, _ in dropped],
                sent=len(outcome.done),
                dropped=len(dropped),
                failures=d.failures,
                retry_at_ms=int(d.retry_at * 1000),
                last_error=outcome.error,
                now=int(now),
                release=not keep,
            )
            if keep and outcome.kind == ResultKind.SUCCESS:
                # More is queued and the peer took this batch: renew the lease and read the next head
                # here, for the attempt the scheduler starts next (step 4 of the module docstring).
                claim = await self.store.claim(
                    conn, dest, self.owner, int(now * 1000), self.lease_ms, probe=False
                )
                if claim.ok:
                    head = await self.store.head(conn, dest, self.policy.batch_size + 1)
        if len(head) > self.policy.batch_size:
            # Only a full head stands in for step 1: it has a row beyond any batch, so the attempt using
            # it reports "more" and reads the head again when it completes; rows queued after this read
            # are never left waiting for the next poll.
            self._next_head[dest] = (now, head)
