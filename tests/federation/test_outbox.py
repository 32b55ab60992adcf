from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phx.federation import outbox as outbox_module
from phx.federation.outbox import (
    DestinationState,
    Outbox,
    OutboxPolicy,
    OutboxRow,
    Result,
    ResultKind,
    render_transitions,
    select_batch,
)
from phx.identifiers import Fqdn

B = Fqdn("b.test")
C = Fqdn("c.test")
POLICY = OutboxPolicy(backoff_base=1.0, backoff_max=600.0, batch_size=100, probe_interval=15.0)


class FixedRng:
    """Jitter factor 0.5 + 0.5 * value."""

    def __init__(self, value: float = 1.0) -> None:
        self.value = value

    def random(self) -> float:
        return self.value


def box(rng_value: float = 1.0, policy: OutboxPolicy = POLICY) -> Outbox:
    return Outbox(policy, FixedRng(rng_value))


def state(ob: Outbox, domain: Fqdn) -> DestinationState:
    d = ob.get(domain)
    assert d is not None
    return d.state


def fail(ob: Outbox, domain: Fqdn, now: float) -> None:
    (due,) = [d for d in ob.next_due(now) if d.domain == domain]
    ob.result(domain, Result(ResultKind.TRANSIENT, error="boom"), now)


def test_docstring_table_is_the_transition_table() -> None:
    doc = outbox_module.__doc__ or ""
    assert "\n".join("    " + line for line in render_transitions().split("\n")) in doc


def test_idle_until_enqueued_then_due_now() -> None:
    ob = box()
    assert ob.get_timer(0.0) is None and ob.next_due(0.0) == []
    ob.enqueued(B, 10.0)
    assert ob.get_timer(10.0) == 10.0
    (due,) = ob.next_due(10.0)
    assert (due.domain, due.probe, due.limit) == (B, False, 100)
    assert ob.next_due(10.0) == []  # in flight: not started twice
    d = ob.result(B, Result(ResultKind.SUCCESS, removed=5), 10.5)
    assert d.state == DestinationState.IDLE and d.sent == 5
    assert ob.get_timer(11.0) is None


def test_more_or_enqueue_during_flight_keeps_it_ready() -> None:
    ob = box()
    ob.enqueued(B, 0.0)
    ob.next_due(0.0)
    ob.result(B, Result(ResultKind.SUCCESS, removed=100, more=True), 1.0)
    assert ob.next_due(1.0)[0].domain == B
    ob.enqueued(B, 1.5)  # arrives while the batch is in flight
    d = ob.result(B, Result(ResultKind.SUCCESS, removed=3, more=False), 2.0)
    assert d.state == DestinationState.READY


def test_exponential_backoff_with_jitter_and_cap() -> None:
    ob = box(rng_value=1.0)  # jitter factor 1.0: the full delay
    ob.enqueued(B, 0.0)
    now = 0.0
    delays = []
    for _ in range(12):
        fail(ob, B, now)
        d = ob.get(B)
        assert d is not None and d.state == DestinationState.BACKOFF
        delays.append(d.retry_at - now)
        now = d.retry_at
        # The retry itself comes due (probes are due earlier but we skip them here).
        d.probe_at = None
        assert ob.get_timer(now) == now
    assert delays[:10] == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
    assert delays[10:] == [600, 600]
    ob2 = box(rng_value=0.0)  # jitter factor 0.5: half the delay
    ob2.enqueued(B, 0.0)
    for _ in range(3):
        fail(ob2, B, 0.0)
        ob2.get(B).probe_at = None  # type: ignore[union-attr]
        ob2.get(B).retry_at = 0.0  # type: ignore[union-attr]
    assert ob2.get(B).failures == 3  # type: ignore[union-attr]


def test_jitter_spreads_retries() -> None:
    ob = Outbox(POLICY, random.Random(7))
    retries = set()
    for i in range(50):
        dom = Fqdn(f"d{i}.test")
        ob.enqueued(dom, 0.0)
    for due in ob.next_due(0.0):
        d = ob.result(due.domain, Result(ResultKind.TRANSIENT), 0.0)
        assert 0.5 <= d.retry_at <= 1.0
        retries.add(d.retry_at)
    assert len(retries) == 50


def test_probe_keeps_recovery_within_probe_interval_however_long_the_backoff() -> None:
    ob = box()
    ob.enqueued(B, 0.0)
    now = 0.0
    for _ in range(20):  # back-off grown to the 10-minute cap
        ob.next_due(now)
        ob.result(B, Result(ResultKind.TRANSIENT), now)
        now = ob.get(B).retry_at  # type: ignore[union-attr]
    ob.next_due(now)
    d = ob.result(B, Result(ResultKind.TRANSIENT), now)
    assert d.retry_at - now == 600
    assert d.probe_at is not None and d.probe_at - now <= 15
    timer = ob.get_timer(now)
    assert timer == d.probe_at
    (probe,) = ob.next_due(timer)
    assert probe.probe and probe.limit == 1
    # A failed probe does not lengthen the back-off.
    failures, retry_at = d.failures, d.retry_at
    ob.result(B, Result(ResultKind.TRANSIENT), timer)
    assert (d.failures, d.retry_at) == (failures, retry_at)
    assert d.probe_at is not None and d.probe_at - timer <= 15
    # The destination recovers: the next probe succeeds and full batches follow at once.
    t2 = d.probe_at
    (probe,) = ob.next_due(t2)
    ob.result(B, Result(ResultKind.SUCCESS, removed=1, more=True), t2)
    assert d.failures == 0 and d.state == DestinationState.READY
    (full,) = ob.next_due(t2)
    assert not full.probe and full.limit == 100


def test_throttled_waits_exactly_retry_after_without_probing() -> None:
    ob = box()
    ob.enqueued(B, 0.0)
    ob.next_due(0.0)
    d = ob.result(B, Result(ResultKind.THROTTLED, removed=10, more=True, retry_after=7.5), 1.0)
    assert d.state == DestinationState.THROTTLED and d.retry_at == 8.5 and d.probe_at is None
    assert ob.next_due(8.4) == [] and ob.get_timer(2.0) == 8.5
    assert ob.next_due(8.5)[0].domain == B


def test_too_large_halves_batch_and_success_grows_it_back() -> None:
    ob = box()
    ob.enqueued(B, 0.0)
    limits = []
    for _ in range(3):
        (due,) = ob.next_due(0.0)
        limits.append(due.limit)
        ob.result(B, Result(ResultKind.TOO_LARGE), 0.0)
    (due,) = ob.next_due(0.0)
    limits.append(due.limit)
    assert limits == [100, 50, 25, 12]
    ob.result(B, Result(ResultKind.SUCCESS, removed=12, more=True), 0.0)
    assert ob.next_due(0.0)[0].limit == 24


def test_contact_wakes_a_backed_off_destination() -> None:
    ob = box()
    ob.enqueued(B, 0.0)
    for _ in range(5):
        ob.next_due(ob.get(B).retry_at)  # type: ignore[union-attr]
        ob.result(B, Result(ResultKind.TRANSIENT), ob.get(B).retry_at)  # type: ignore[union-attr]
    d = ob.get(B)
    assert d is not None and d.state == DestinationState.BACKOFF and d.retry_at > 20
    assert ob.contacted(B, 20.0)
    assert state(ob, B) == DestinationState.READY
    assert ob.next_due(20.0)[0].domain == B
    assert not ob.contacted(C, 20.0)  # unknown destination: nothing to do


def test_leased_elsewhere_rechecks_later() -> None:
    ob = box()
    ob.enqueued(B, 0.0)
    ob.next_due(0.0)
    ob.leased_elsewhere(B, 0.0, until=3.0)
    assert ob.get(B).state == DestinationState.ELSEWHERE  # type: ignore[union-attr]
    assert ob.next_due(2.9) == [] and ob.get_timer(0.0) == 3.0
    assert ob.next_due(3.0)[0].domain == B
    ob.leased_elsewhere(B, 3.0, until=1e9)
    assert ob.get_timer(3.0) == 3.0 + POLICY.lease_recheck


def test_reset_forgets_backoff() -> None:
    ob = box()
    ob.enqueued(B, 0.0)
    fail(ob, B, 0.0)
    ob.reset(B, pending=True)
    d = ob.get(B)
    assert d is not None and d.failures == 0 and d.state == DestinationState.READY
    ob.reset(C, pending=False)
    assert ob.get(C).state == DestinationState.IDLE  # type: ignore[union-attr]


def test_observe_restores_persisted_backoff_and_probes_soon() -> None:
    ob = box()
    ob.observe(B, pending=True, failures=6, retry_at=500.0, now=100.0)
    d = ob.get(B)
    assert d is not None and d.state == DestinationState.BACKOFF and d.failures == 6 and d.retry_at == 500
    assert d.probe_at is not None and d.probe_at <= 115
    ob.observe(C, pending=True, failures=0, retry_at=0.0, now=100.0)
    assert ob.next_due(100.0)[0].domain == C
    # Another instance reset B: the database shows an earlier retry time, adopted at once.
    ob.observe(B, pending=True, failures=0, retry_at=0.0, now=101.0)
    assert state(ob, B) == DestinationState.READY
    ob.observe(Fqdn("d.test"), pending=False, failures=0, retry_at=0.0, now=0.0)
    assert state(ob, Fqdn("d.test")) == DestinationState.IDLE


def test_result_without_attempt_is_a_bug() -> None:
    ob = box()
    ob.enqueued(B, 0.0)
    with pytest.raises(RuntimeError):
        ob.result(B, Result(ResultKind.SUCCESS), 0.0)


def test_next_due_respects_the_limit() -> None:
    ob = box()
    for i in range(5):
        ob.enqueued(Fqdn(f"d{i}.test"), 0.0)
    assert len(ob.next_due(0.0, limit=2)) == 2
    assert len(ob.next_due(0.0)) == 3


def rows(*spec: tuple[float, int]) -> list[OutboxRow]:
    return [OutboxRow(i + 1, created, size) for i, (created, size) in enumerate(spec)]


def test_select_batch_in_order_by_count_and_bytes() -> None:
    r = rows((0, 10), (0, 10), (0, 10), (0, 10))
    send, expired = select_batch(r, 1.0, max_age=100, limit=3, max_bytes=1000)
    assert [x.id for x in send] == [1, 2, 3] and expired == []
    send, _ = select_batch(r, 1.0, max_age=100, limit=10, max_bytes=25)
    assert [x.id for x in send] == [1, 2]
    big = rows((0, 5000), (0, 1))
    send, _ = select_batch(big, 1.0, max_age=100, limit=10, max_bytes=100)
    assert [x.id for x in send] == [1]  # a large frame still goes, alone


def test_select_batch_drops_expired_rows() -> None:
    r = rows((0, 1), (50, 1), (10, 1), (95, 1))
    send, expired = select_batch(r, 100.0, max_age=60, limit=10, max_bytes=100)
    assert [x.id for x in expired] == [1, 3]
    assert [x.id for x in send] == [2, 4]


EVENTS = st.lists(
    st.tuples(
        st.sampled_from(["enqueue", "tick", "success", "more", "transient", "throttled", "contact", "reset"]),
        st.floats(0, 50),
    ),
    max_size=80,
)


@settings(max_examples=200, deadline=None)
@given(EVENTS, st.integers(0, 2**32))
def test_random_event_sequences_keep_the_invariants(events: list[tuple[str, float]], seed: int) -> None:
    ob = Outbox(POLICY, random.Random(seed))
    now = 0.0
    in_flight = False
    for name, dt in events:
        now += dt
        if name == "enqueue":
            ob.enqueued(B, now)
        elif name == "contact":
            ob.contacted(B, now)
        elif name == "reset":
            ob.reset(B, pending=True)
        elif name == "tick" and not in_flight:
            in_flight = bool(ob.next_due(now))
        elif in_flight and name in ("success", "more", "transient", "throttled"):
            kind = {
                "success": ResultKind.SUCCESS,
                "more": ResultKind.SUCCESS,
                "transient": ResultKind.TRANSIENT,
                "throttled": ResultKind.THROTTLED,
            }[name]
            ob.result(B, Result(kind, more=name == "more", retry_after=dt), now)
            in_flight = False
        d = ob.get(B)
        if d is None:
            continue
        # Invariants: a destination with work always has a timer; a back-off never exceeds the cap and a
        # probe is never further than one probe interval away.
        if d.state in (DestinationState.READY, DestinationState.BACKOFF, DestinationState.THROTTLED):
            timer = ob.get_timer(now)
            assert timer is not None
        if d.state == DestinationState.BACKOFF:
            assert d.retry_at - now <= POLICY.backoff_max + 1e-9
            wake = d.retry_at if d.probe_at is None else min(d.retry_at, d.probe_at)
            assert wake - now <= POLICY.probe_interval + 1e-9
        assert 1 <= d.batch_limit <= POLICY.batch_size


def test_deferred_adopts_anothers_backoff_and_probes() -> None:
    ob = box()
    ob.enqueued(B, 0.0)
    ob.next_due(0.0)
    d = ob.deferred(B, failures=4, retry_at=300.0, now=10.0)
    assert d.state == DestinationState.BACKOFF and d.failures == 4 and d.retry_at == 300
    assert d.probe_at is not None and d.probe_at <= 25
    with pytest.raises(RuntimeError):
        ob.deferred(B, failures=4, retry_at=300.0, now=10.0)


def test_linger_after_a_batch_that_was_not_full_but_not_after_a_full_one() -> None:
    ob = box(policy=OutboxPolicy(batch_size=100, linger=0.02))
    ob.enqueued(B, 0.0)
    ob.next_due(0.0)
    ob.enqueued(B, 0.5)  # more arrives while 3 are in flight
    ob.result(B, Result(ResultKind.SUCCESS, removed=3), 1.0)
    assert ob.next_due(1.0) == [] and ob.next_due(1.019) == []
    assert ob.get_timer(1.0) == pytest.approx(1.02)
    (due,) = ob.next_due(1.02)
    assert due.domain == B
    ob.result(B, Result(ResultKind.SUCCESS, removed=100, more=True), 2.0)
    assert [d.domain for d in ob.next_due(2.0)] == [B]  # a full batch: the next one at once
    ob.result(B, Result(ResultKind.SUCCESS, removed=1), 3.0)  # idle now
    ob.enqueued(B, 3.005)  # a new message right after a small batch also waits out the linger
    assert ob.next_due(3.005) == [] and ob.get_timer(3.005) == pytest.approx(3.02)
    assert [d.domain for d in ob.next_due(3.02)] == [B]


def test_no_linger_by_default() -> None:
    ob = box()
    ob.enqueued(B, 0.0)
    ob.next_due(0.0)
    ob.enqueued(B, 0.5)
    ob.result(B, Result(ResultKind.SUCCESS, removed=3), 1.0)
    assert [d.domain for d in ob.next_due(1.0)] == [B]
