from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from phx.federation.ratelimit import DomainRamp, KeyedLimiter, TokenBucket, charge_in_order


def test_bucket_allows_burst_then_rate() -> None:
    b = TokenBucket.full(rate=2.0, burst=3, now=0.0)
    assert [b.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert b.take(0.0) == pytest.approx(0.5)  # one token refills in 1/rate seconds
    assert b.take(0.25) == pytest.approx(0.25)  # refused: nothing consumed
    assert b.take(0.5) == 0.0
    assert b.take(0.5) == pytest.approx(0.5)


def test_bucket_never_exceeds_burst() -> None:
    b = TokenBucket.full(rate=10.0, burst=5, now=0.0)
    assert b.take(0.0, 5) == 0.0
    assert b.is_full(1000.0) and b.tokens == 5


def test_zero_rate_is_unlimited_and_cost_above_burst_never_fits() -> None:
    assert all(TokenBucket.full(0.0, 1, 0.0).take(0.0) == 0.0 for _ in range(10))
    b = TokenBucket.full(1.0, 2, 0.0)
    assert b.take(0.0, 3) == math.inf
    assert b.tokens == 2


def test_keyed_limiter_is_all_or_nothing() -> None:
    lim = KeyedLimiter(rate=1.0, burst=2)
    assert lim.take(["q1"], 0.0) == 0.0
    assert lim.take(["q1"], 0.0) == 0.0
    # q2 could pay, q1 cannot: neither is charged.
    assert lim.take(["q2", "q1"], 0.0) == pytest.approx(1.0)
    assert lim.take(["q2"], 0.0) == 0.0 and lim.take(["q2"], 0.0) == 0.0
    assert lim.wait(["q2"], 0.0) > 0


def test_keyed_limiter_bounds_memory() -> None:
    lim = KeyedLimiter(rate=1.0, burst=1, max_keys=3)
    for k in range(10):
        lim.take([k], 0.0)
    assert len(lim) == 3
    assert lim.take([0], 0.0) == 0.0  # evicted, so it came back full


def test_keyed_limiter_unlimited_keeps_no_state() -> None:
    lim = KeyedLimiter(rate=0.0, burst=1)
    assert lim.take(range(1000), 0.0) == 0.0
    assert len(lim) == 0


@given(
    rate=st.floats(0.1, 100),
    burst=st.integers(1, 50),
    times=st.lists(st.floats(0, 100), min_size=1, max_size=200),
)
def test_bucket_admits_at_most_burst_plus_rate_times_elapsed(
    rate: float, burst: int, times: list[float]
) -> None:
    times = sorted(times)
    b = TokenBucket.full(rate, burst, times[0])
    admitted = sum(1 for t in times if b.take(t) == 0.0)
    assert admitted <= burst + rate * (times[-1] - times[0]) + 1e-6


def test_domain_ramp_starts_low_doubles_and_caps() -> None:
    ramp = DomainRamp(initial=100, full=100_000, doubling=86400)
    assert ramp.allowance(0, 0) == 100
    assert ramp.allowance(0, 86400) == 200
    assert ramp.allowance(0, 3 * 86400) == 800
    assert ramp.allowance(0, 30 * 86400) == 100_000
    assert ramp.allowance(0, 1e12) == 100_000
    assert ramp.allowance(100, 0) == 100  # clock skew: never below the start
    assert DomainRamp(10, 0, 1).allowance(0, 0) is None


def test_domain_ramp_is_monotonic() -> None:
    ramp = DomainRamp(initial=7, full=5000, doubling=3600)
    values = [ramp.allowance(0, t) for t in range(0, 20 * 3600, 600)]
    assert values == sorted(values)  # type: ignore[type-var]
    with pytest.raises(ValueError):
        DomainRamp(0, 10, 1)


def test_full_at_is_the_whole_state_of_a_bucket() -> None:
    b = TokenBucket.full(rate=2.0, burst=4, now=10.0)
    assert b.full_at() == 10.0
    assert b.take(10.0, 3) == 0.0
    assert b.full_at() == pytest.approx(11.5)  # 3 tokens missing at 2 per second
    again = TokenBucket.at(2.0, 4, b.full_at(), 10.5)
    assert again.tokens == pytest.approx(2.0)
    assert TokenBucket.at(2.0, 4, 0.0, 10.0).tokens == 4  # no stored state: full
    assert TokenBucket.at(2.0, 4, 11.5, 20.0).tokens == 4  # full again since 11.5
    assert TokenBucket.at(1.0, 4, 100.0, 10.0).tokens == 0  # rate lowered since: empty, not negative


@given(
    rate=st.floats(0.1, 100),
    burst=st.integers(1, 50),
    steps=st.lists(st.tuples(st.floats(0, 5), st.integers(1, 3)), min_size=1, max_size=50),
)
def test_a_bucket_rebuilt_from_full_at_behaves_like_the_bucket(
    rate: float, burst: int, steps: list[tuple[float, int]]
) -> None:
    live = TokenBucket.full(rate, burst, 0.0)
    now = 0.0
    for dt, cost in steps:
        now += dt
        rebuilt = TokenBucket.at(rate, burst, live.full_at(), now)
        assert rebuilt.wait(now, cost) == pytest.approx(live.wait(now, cost), abs=1e-6)
        live.is_full(now)  # refills up to now
        assert rebuilt.tokens == pytest.approx(live.tokens, abs=1e-6)
        live.take(now, cost)


def test_charge_in_order_is_all_or_nothing_per_request_and_stops_at_the_first_refusal() -> None:
    buckets = {k: TokenBucket.full(1.0, 2, 0.0) for k in "abc"}
    admitted, wait = charge_in_order(buckets, [["a"], ["a", "b"], ["c"], ["a", "c"], ["c"]], 0.0)
    # "a" is empty after two requests; the fourth request needs "a": refused, and "c" not charged for it;
    # the fifth could pay but comes after a refusal, so order is kept.
    assert admitted == 3 and wait == pytest.approx(1.0)
    assert buckets["c"].tokens == 1 and buckets["b"].tokens == 1


def test_charge_in_order_charges_a_key_once_per_request() -> None:
    buckets = {"q": TokenBucket.full(1.0, 2, 0.0)}
    assert charge_in_order(buckets, [["q", "q", "q"], ["q", "q"]], 0.0) == (2, 0.0)
    assert buckets["q"].tokens == 0
    assert charge_in_order(buckets, [[]], 0.0) == (1, 0.0)
