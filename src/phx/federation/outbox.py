"""The outbox scheduler: a pure, timer-driven state machine per destination (aioquic's ``handle_timer``
/ ``get_timer`` shape). It never touches the network, the database or the clock: the sender task
(:mod:`phx.federation.sender`) feeds it events with ``now`` and asks it what is due and when to wake up.

The messages themselves live in the durable outbox table (:mod:`phx.federation.outbox_store`); this
machine only decides *when* a destination is sent to, *how much* at once, and persists nothing itself —
the sender stores :attr:`Destination.failures` and :attr:`Destination.retry_at` with every result so a
restarted sender resumes the same back-off (:meth:`Outbox.observe`).

States and events. :data:`TRANSITIONS` is the table below (``·``: stays; ``-``: refused as a bug in the
caller); a test checks that this drawing is :func:`render_transitions` of it::

    state     enqueued due     start   success    transient throttled leased    contacted reset
    idle      ready    ·       -       -          -         -         elsewhere ·         ·/ready
    ready     ·        ·       sending -          -         -         elsewhere ·         ·/idle
    sending   ·        ·       -       idle/ready backoff   throttled elsewhere ·         ·
    probing   ·        ·       -       idle/ready backoff   throttled elsewhere ·         ·
    backoff   ·        ·/ready probing -          -         -         elsewhere ready     idle/ready
    throttled ·        ·/ready -       -          -         -         elsewhere ·         idle/ready
    elsewhere ·        ·/ready -       -          -         -         ·         ·         idle/ready
    restored: idle -> ready/backoff/throttled

* **Back-off**: after the n-th consecutive transient failure (network error, 5xx) the next full attempt
  waits ``min(backoff_max, backoff_base * 2**(n-1))`` scaled by a jitter factor in [0.5, 1] drawn from an
  injected RNG.
* **Probes**: while backing off, a single-message attempt is made every ``probe_interval`` (jittered the
  same way), however long the back-off has grown, so a recovered destination is noticed within
  ``probe_interval`` and its backlog flows again at once (the issue's 30-second bound). A failed probe does
  not lengthen the back-off.
* **Throttled**: a 429 waits exactly the peer's ``Retry-After`` (no probing: the peer is up and asked us
  to wait). Failures are not counted: the peer answered.
* **Contacted**: a peer that reaches us is up; a destination backing off is retried at once.
* **Leased elsewhere**: another instance holds the destination's lease; look again when it may have
  expired.
* **Batch size**: a 413 halves the batch for that destination (a single message that is still too large
  is the sender's permanent failure); every success doubles it back towards the configured size.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from phx.identifiers import Fqdn

__all__ = [
    "TRANSITIONS",
    "Destination",
    "DestinationState",
    "Due",
    "Event",
    "Outbox",
    "OutboxPolicy",
    "OutboxRow",
    "Result",
    "ResultKind",
    "select_batch",
]


class DestinationState(enum.Enum):
    IDLE = "idle"
    READY = "ready"
    SENDING = "sending"
    PROBING = "probing"
    BACKOFF = "backoff"
    THROTTLED = "throttled"
    ELSEWHERE = "elsewhere"


class Event(enum.Enum):
    ENQUEUED = "enqueued"
    DUE = "due"
    START = "start"
    SUCCESS = "success"
    TRANSIENT = "transient"
    THROTTLED = "throttled"
    LEASED = "leased"
    CONTACTED = "contacted"
    RESET = "reset"
    RESTORED = "restored"


S = DestinationState
E = Event
#: (state, event) -> possible next states; a pair that is absent is refused (a bug in the sender).
TRANSITIONS: dict[tuple[DestinationState, Event], frozenset[DestinationState]] = {
    (S.IDLE, E.ENQUEUED): frozenset({S.READY}),
    (S.IDLE, E.LEASED): frozenset({S.ELSEWHERE}),
    (S.IDLE, E.CONTACTED): frozenset({S.IDLE}),
    (S.IDLE, E.RESET): frozenset({S.IDLE, S.READY}),
    (S.IDLE, E.DUE): frozenset({S.IDLE}),
    (S.IDLE, E.RESTORED): frozenset({S.READY, S.BACKOFF, S.THROTTLED}),
    (S.READY, E.ENQUEUED): frozenset({S.READY}),
    (S.READY, E.START): frozenset({S.SENDING}),
    (S.READY, E.LEASED): frozenset({S.ELSEWHERE}),
    (S.READY, E.CONTACTED): frozenset({S.READY}),
    (S.READY, E.RESET): frozenset({S.READY, S.IDLE}),
    (S.READY, E.DUE): frozenset({S.READY}),
    **{
        (s, e): nxt
        for s in (S.SENDING, S.PROBING)
        for e, nxt in (
            (E.ENQUEUED, frozenset({s})),
            (E.SUCCESS, frozenset({S.READY, S.IDLE})),
            (E.TRANSIENT, frozenset({S.BACKOFF})),
            (E.THROTTLED, frozenset({S.THROTTLED})),
            (E.LEASED, frozenset({S.ELSEWHERE})),
            (E.CONTACTED, frozenset({s})),
            (E.RESET, frozenset({s})),
            (E.DUE, frozenset({s})),
        )
    },
    (S.BACKOFF, E.ENQUEUED): frozenset({S.BACKOFF}),
    (S.BACKOFF, E.DUE): frozenset({S.BACKOFF, S.READY}),
    (S.BACKOFF, E.START): frozenset({S.PROBING}),
    (S.BACKOFF, E.LEASED): frozenset({S.ELSEWHERE}),
    (S.BACKOFF, E.CONTACTED): frozenset({S.READY}),
    (S.BACKOFF, E.RESET): frozenset({S.READY, S.IDLE}),
    **{
        (s, e): nxt
        for s in (S.THROTTLED, S.ELSEWHERE)
        for e, nxt in (
            (E.ENQUEUED, frozenset({s})),
            (E.DUE, frozenset({s, S.READY})),
            (E.LEASED, frozenset({S.ELSEWHERE})),
            (E.CONTACTED, frozenset({s})),
            (E.RESET, frozenset({S.READY, S.IDLE})),
        )
    },
}
del S, E


class Rng(Protocol):
    def random(self) -> float: ...


@dataclass(frozen=True, slots=True)
class OutboxPolicy:
    backoff_base: float = 1.0
    backoff_max: float = 600.0
    batch_size: int = 100
    #: Largest batch in bytes of encoded frames (a single larger frame still goes alone).
    batch_bytes: int = 256 * 1024
    max_age: float = 24 * 3600.0
    probe_interval: float = 15.0
    #: How long a destination leased by another instance is left alone before we look again.
    lease_recheck: float = 5.0
    #: After a batch that was not full, the next attempt to that destination waits this long (fuller
    #: batches under a steady trickle); a full batch is followed at once.
    linger: float = 0.0

    def __post_init__(self) -> None:
        if not 0 < self.backoff_base <= self.backoff_max:
            raise ValueError("need 0 < backoff_base <= backoff_max")
        if self.batch_size < 1 or self.batch_bytes < 1 or self.max_age <= 0 or self.probe_interval <= 0:
            raise ValueError("batch_size, batch_bytes, max_age and probe_interval must be positive")
        if self.linger < 0:
            raise ValueError("linger must not be negative")


class ResultKind(enum.Enum):
    #: The peer answered the batch (messages accepted, duplicates, or permanently refused ones dropped).
    SUCCESS = "success"
    #: Network error, timeout, 5xx: nothing known to be processed beyond ``delivered``.
    TRANSIENT = "transient"
    #: 429, or a batch cut short by the peer's rate limits: wait ``retry_after``.
    THROTTLED = "throttled"
    #: 413 for a batch of several messages: send fewer at once.
    TOO_LARGE = "too_large"


@dataclass(frozen=True, slots=True)
class Result:
    kind: ResultKind
    #: Rows the attempt removed from the outbox (delivered, duplicate or dropped).
    removed: int = 0
    #: Whether the outbox may still hold messages for the destination after this attempt.
    more: bool = False
    retry_after: float = 0.0
    error: str = ""


@dataclass(frozen=True, slots=True)
class Due:
    domain: Fqdn
    probe: bool
    #: Most messages to take in this attempt.
    limit: int


@dataclass(slots=True)
class Destination:
    domain: Fqdn
    state: DestinationState = DestinationState.IDLE
    failures: int = 0
    #: No full attempt before this (BACKOFF, THROTTLED, ELSEWHERE).
    retry_at: float = 0.0
    #: While BACKOFF: a single-message probe is due then.
    probe_at: float | None = None
    #: Messages were enqueued while an attempt was in flight: do not go idle after it.
    dirty: bool = False
    batch_limit: int = 0
    last_error: str = ""
    sent: int = 0
    #: The last result is being persisted: nothing new starts until :meth:`Outbox.settled`.
    settling: bool = False
    #: READY, but no full attempt before this (the linger after a batch that was not full).
    not_before: float = 0.0

    def _move(self, event: Event, new: DestinationState) -> None:
        allowed = TRANSITIONS.get((self.state, event))
        if allowed is None or new not in allowed:
            raise RuntimeError(
                f"outbox: {self.domain}: {event.value} in state {self.state.value} -> {new.value}"
            )
        self.state = new


@dataclass
class Outbox:
    policy: OutboxPolicy
    rng: Rng = field(default_factory=random.Random)
    destinations: dict[Fqdn, Destination] = field(default_factory=dict)

    # --- helpers ----------------------------------------------------------------------------------------

    def _dest(self, domain: Fqdn) -> Destination:
        d = self.destinations.get(domain)
        if d is None:
            d = Destination(domain, batch_limit=self.policy.batch_size)
            self.destinations[domain] = d
        return d

    def _jitter(self) -> float:
        return 0.5 + 0.5 * self.rng.random()

    def backoff_delay(self, failures: int) -> float:
        """Un-jittered delay after ``failures`` consecutive failures (>= 1)."""
        exponent = min(max(failures, 1) - 1, 60)
        return min(self.policy.backoff_max, self.policy.backoff_base * 2.0**exponent)

    def _next_probe(self, d: Destination, now: float) -> None:
        probe = now + self.policy.probe_interval * self._jitter()
        d.probe_at = probe if probe < d.retry_at else None

    def get(self, domain: Fqdn) -> Destination | None:
        return self.destinations.get(domain)

    # --- events -----------------------------------------------------------------------------------------

    def enqueued(self, domain: Fqdn, now: float) -> None:
        """Messages for ``domain`` were (or are being) written to the outbox."""
        d = self._dest(domain)
        if d.state == DestinationState.IDLE:
            d._move(Event.ENQUEUED, DestinationState.READY)
        else:
            d._move(Event.ENQUEUED, d.state)
            if d.state in (DestinationState.SENDING, DestinationState.PROBING):
                d.dirty = True

    def observe(self, domain: Fqdn, *, pending: bool, failures: int, retry_at: float, now: float) -> None:
        """Adopt persisted state (start-up, or another instance's progress seen in the database). Only
        idle destinations and back-offs that the database shortens are changed; an attempt in flight wins."""
        d = self._dest(domain)
        if d.state in (DestinationState.SENDING, DestinationState.PROBING):
            return
        if d.state == DestinationState.IDLE:
            if not pending:
                d.failures = failures
                return
            d.failures = failures
            if retry_at > now and failures > 0:
                d._move(Event.RESTORED, DestinationState.BACKOFF)
                d.retry_at = retry_at
                self._next_probe(d, now)
            elif retry_at > now:
                d._move(Event.RESTORED, DestinationState.THROTTLED)
                d.retry_at = retry_at
            else:
                d._move(Event.RESTORED, DestinationState.READY)
            return
        if d.state in (DestinationState.BACKOFF, DestinationState.THROTTLED) and retry_at < d.retry_at:
            # Reset by an operator or woken by a contact on another instance.
            d.failures = failures
            d.retry_at = retry_at
            if retry_at <= now:
                d._move(Event.DUE, DestinationState.READY)
                d.probe_at = None

    def next_due(self, now: float, limit: int | None = None) -> list[Due]:
        """Start the attempts that are due (at most ``limit``): the caller must report each one's
        :meth:`result` (or :meth:`leased_elsewhere`)."""
        out: list[Due] = []
        for d in self.destinations.values():
            if limit is not None and len(out) >= limit:
                break
            if d.settling:
                continue
            self._timer(d, now)
            if d.state == DestinationState.READY:
                if d.not_before > now:
                    continue
                d._move(Event.START, DestinationState.SENDING)
                d.dirty = False
                out.append(Due(d.domain, False, d.batch_limit))
            elif d.state == DestinationState.BACKOFF and d.probe_at is not None and d.probe_at <= now:
                d._move(Event.START, DestinationState.PROBING)
                d.dirty = False
                d.probe_at = None
                out.append(Due(d.domain, True, 1))
        return out

    def _timer(self, d: Destination, now: float) -> None:
        if d.state in (DestinationState.THROTTLED, DestinationState.ELSEWHERE, DestinationState.BACKOFF):
            if d.retry_at <= now:
                d._move(Event.DUE, DestinationState.READY)
                d.probe_at = None

    def get_timer(self, now: float) -> float | None:
        """When something next becomes due (``<= now``: right away); None if nothing is scheduled."""
        best: float | None = None
        for d in self.destinations.values():
            t: float | None = None
            if d.settling:
                continue
            if d.state == DestinationState.READY:
                t = max(now, d.not_before)
            elif d.state in (DestinationState.THROTTLED, DestinationState.ELSEWHERE):
                t = d.retry_at
            elif d.state == DestinationState.BACKOFF:
                t = d.retry_at if d.probe_at is None else min(d.retry_at, d.probe_at)
            if t is not None and (best is None or t < best):
                best = t
        return best

    def result(self, domain: Fqdn, result: Result, now: float, *, settle: bool = False) -> Destination:
        """Report the outcome of the attempt started by :meth:`next_due`; returns the destination so the
        caller can persist ``failures`` and ``retry_at``. With ``settle`` the destination stays out of
        :meth:`next_due` until :meth:`settled`: the next attempt must not read the outbox before this
        attempt's answered rows are deleted."""
        d = self.destinations[domain]
        probing = d.state == DestinationState.PROBING
        if d.state not in (DestinationState.SENDING, DestinationState.PROBING):
            raise RuntimeError(f"outbox: result for {domain} without an attempt in flight")
        d.sent += result.removed
        d.last_error = result.error
        d.settling = settle
        more = result.more or d.dirty
        d.dirty = False
        kind = result.kind
        if kind == ResultKind.SUCCESS:
            full = result.removed >= d.batch_limit
            d.not_before = 0.0 if full else now + self.policy.linger
            d.failures = 0
            d.retry_at = 0.0
            d.probe_at = None
            d.batch_limit = min(self.policy.batch_size, max(1, d.batch_limit) * 2)
            d._move(Event.SUCCESS, DestinationState.READY if more else DestinationState.IDLE)
        elif kind == ResultKind.TOO_LARGE:
            # The peer is up and answering; only the batch was too big.
            d.failures = 0
            d.retry_at = 0.0
            d.probe_at = None
            d.batch_limit = max(1, d.batch_limit // 2)
            d._move(Event.SUCCESS, DestinationState.READY)
        elif kind == ResultKind.THROTTLED:
            d.failures = 0
            d.probe_at = None
            d.retry_at = now + max(0.0, result.retry_after)
            d._move(Event.THROTTLED, DestinationState.THROTTLED)
        else:
            if not probing:
                d.failures += 1
                d.retry_at = now + self.backoff_delay(d.failures) * self._jitter()
            elif d.retry_at <= now:
                # The probe happened to be the last thing before the retry time: push the retry out too.
                d.retry_at = now + self.backoff_delay(d.failures) * self._jitter()
            d._move(Event.TRANSIENT, DestinationState.BACKOFF)
            self._next_probe(d, now)
        return d

    def settled(self, domain: Fqdn) -> None:
        d = self.destinations.get(domain)
        if d is not None:
            d.settling = False

    def deferred(self, domain: Fqdn, failures: int, retry_at: float, now: float) -> Destination:
        """The attempt was refused at claim time because the persisted back-off (written by another
        instance, or before a restart) is not over: adopt it, and probe as if we had failed ourselves."""
        d = self.destinations[domain]
        if d.state != DestinationState.SENDING:
            raise RuntimeError(f"outbox: {domain} deferred without a full attempt in flight")
        d.failures = failures
        d.retry_at = retry_at
        d.dirty = False
        d._move(Event.TRANSIENT, DestinationState.BACKOFF)
        self._next_probe(d, now)
        return d

    def leased_elsewhere(self, domain: Fqdn, now: float, until: float | None = None) -> None:
        """Another instance holds the destination: look again at ``until`` (or after ``lease_recheck``)."""
        d = self._dest(domain)
        d.probe_at = None
        d.dirty = False
        d.retry_at = (
            min(until, now + self.policy.lease_recheck)
            if until is not None
            else now + self.policy.lease_recheck
        )
        d._move(Event.LEASED, DestinationState.ELSEWHERE)

    def contacted(self, domain: Fqdn, now: float) -> bool:
        """``domain`` reached us, so it is up: retry a backed-off destination now. True if woken."""
        d = self.destinations.get(domain)
        if d is None or d.state != DestinationState.BACKOFF:
            if d is not None:
                d._move(Event.CONTACTED, d.state)
            return False
        d.retry_at = now
        d.probe_at = None
        d._move(Event.CONTACTED, DestinationState.READY)
        return True

    def reset(self, domain: Fqdn, *, pending: bool) -> None:
        """Operator reset: forget failures and back-off; send now if anything is pending."""
        d = self._dest(domain)
        d.failures = 0
        d.retry_at = 0.0
        d.probe_at = None
        d.batch_limit = self.policy.batch_size
        if d.state in (DestinationState.SENDING, DestinationState.PROBING):
            d._move(Event.RESET, d.state)
            return
        d._move(Event.RESET, DestinationState.READY if pending else DestinationState.IDLE)


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One queued message as stored: enough to pick a batch without decoding it."""

    id: int
    created_at: float
    size: int


def select_batch(
    rows: Sequence[OutboxRow], now: float, *, max_age: float, limit: int, max_bytes: int
) -> tuple[list[OutboxRow], list[OutboxRow]]:
    """Split the head of a destination's outbox (id order) into (to send, expired). Expired rows are
    those queued ``max_age`` or longer ago; the batch keeps id order and stops at ``limit`` messages or
    ``max_bytes`` (always at least one message, however large)."""
    send: list[OutboxRow] = []
    expired: list[OutboxRow] = []
    size = 0
    for row in rows:
        if now - row.created_at >= max_age:
            expired.append(row)
            continue
        if len(send) >= limit or (send and size + row.size > max_bytes):
            break
        send.append(row)
        size += row.size
    return send, expired


def render_transitions() -> str:
    """:data:`TRANSITIONS` drawn as the table in this module's docstring."""
    order = list(DestinationState)

    def cell(state: DestinationState, event: Event) -> str:
        nxt = TRANSITIONS.get((state, event))
        if nxt is None:
            return "-"
        names = sorted((n.value for n in nxt if n != state), key=lambda v: [s.value for s in order].index(v))
        return "/".join((["·"] if state in nxt else []) + names)

    # Events possible in one state only (restored) go below the table, which then fits the line length.
    single = [e for e in Event if sum((st, e) in TRANSITIONS for st in order) == 1]
    events = [e for e in Event if e not in single]
    rows = [["state", *(e.value for e in events)]]
    rows += [[state.value, *(cell(state, e) for e in events)] for state in order]
    widths = [max(len(r[i]) for r in rows) + 1 for i in range(len(rows[0]))]
    lines = ["".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    for e in single:
        state = next(st for st in order if (st, e) in TRANSITIONS)
        lines.append(f"{e.value}: {state.value} -> {cell(state, e)}")
    return "\n".join(lines)
