"""Rate limits for traffic from other homeservers: token buckets and the new-domain ramp. Pure: every
call takes ``now`` (seconds, any monotonic origin) and nothing here reads a clock.

* :class:`TokenBucket` — ``rate`` tokens per second up to ``burst``; a rate of 0 means unlimited. Its
  whole state fits in one number, :meth:`TokenBucket.full_at` (when it is full again; :meth:`TokenBucket.at`
  rebuilds it), which is what the shared store keeps (:mod:`.ratelimit_store`): a bucket that is full
  again is the same as no bucket at all, so idle rows can be deleted exactly.
* :func:`charge_in_order` — requests in order against a set of buckets, each all-or-nothing across its
  keys, stopping at the first that cannot pay (a message refused on its third queue has not spent tokens
  on the first two, and nothing after it is admitted, so order is kept).
* :class:`KeyedLimiter` — one bucket per key, in memory (single-process uses; the inbound federation
  limits are shared by every instance through :class:`.ratelimit_store.InboundLimits`).
* :class:`DomainRamp` — the allowance of a federated domain grows with the time we have known it (book:
  threat_model/qualitative/federation.md, "keep the limit for new domains low and only increase it
  slowly"): ``initial`` at first contact, doubling every ``doubling`` seconds, capped at ``full``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Collection, Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

__all__ = ["DomainRamp", "KeyedLimiter", "TokenBucket", "charge_in_order"]

K = TypeVar("K", bound=Hashable)


@dataclass(slots=True)
class TokenBucket:
    rate: float
    burst: float
    tokens: float
    updated: float

    @classmethod
    def full(cls, rate: float, burst: float, now: float) -> TokenBucket:
        return cls(rate, burst, burst, now)

    @classmethod
    def at(cls, rate: float, burst: float, full_at: float, now: float) -> TokenBucket:
        """The bucket at ``now`` whose :meth:`full_at` is ``full_at`` (0 or any past time: full). A stored
        time further ahead than a whole burst (the rate was lowered since) counts as empty."""
        if full_at <= now or rate == 0:
            return cls(rate, burst, burst, now)
        return cls(rate, burst, max(0.0, burst - (full_at - now) * rate), now)

    def full_at(self) -> float:
        """When the bucket is full again if nothing more is taken: its whole state in one number (with
        ``rate`` and ``burst`` from the configuration). Unlimited buckets are always full."""
        if self.rate == 0:
            return self.updated
        return self.updated + max(0.0, self.burst - self.tokens) / self.rate

    def _refill(self, now: float) -> None:
        if now > self.updated:
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
            self.updated = now

    def wait(self, now: float, cost: float = 1.0) -> float:
        """Seconds until ``cost`` tokens are available (0: now). A cost above the burst can never be
        paid and waits forever (``math.inf``)."""
        if self.rate == 0:
            return 0.0
        if cost > self.burst:
            return math.inf
        self._refill(now)
        missing = cost - self.tokens
        return 0.0 if missing <= 0 else missing / self.rate

    def take(self, now: float, cost: float = 1.0) -> float:
        """Consume ``cost`` tokens and return 0, or return the wait and consume nothing."""
        wait = self.wait(now, cost)
        if wait == 0 and self.rate != 0:
            self.tokens -= cost
        return wait

    def is_full(self, now: float) -> bool:
        self._refill(now)
        return self.tokens >= self.burst


def charge_in_order(
    buckets: Mapping[K, TokenBucket], requests: Iterable[Collection[K]], now: float
) -> tuple[int, float]:
    """Charge ``requests`` in order, one token from the bucket of each *distinct* key of a request (a
    message listing a queue twice is still one message into it), all of a request's keys or none, and
    stop at the first request some key cannot pay. Returns (requests admitted, the refused one's wait, or
    0 when all were admitted). Every key must have a bucket in ``buckets``; only buckets of admitted
    requests are charged."""
    admitted = 0
    for keys in requests:
        distinct = keys if isinstance(keys, (set, frozenset)) else set(keys)
        wait = 0.0
        for k in distinct:
            w = buckets[k].wait(now)
            if w > wait:
                wait = w
        if wait > 0:
            return admitted, wait
        for k in distinct:
            b = buckets[k]
            if b.rate:
                b.tokens -= 1.0  # wait() refilled it up to now and found the token
        admitted += 1
    return admitted, 0.0


class KeyedLimiter:
    """Token buckets by key. At most ``max_keys`` buckets are kept; the least recently used one is
    forgotten first (a forgotten bucket comes back full, so the bound trades a little precision under a
    flood of distinct keys for bounded memory)."""

    def __init__(self, rate: float, burst: float, *, max_keys: int = 100_000) -> None:
        if rate < 0 or burst <= 0 or max_keys <= 0:
            raise ValueError("rate must be >= 0, burst and max_keys > 0")
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: OrderedDict[Hashable, TokenBucket] = OrderedDict()

    @property
    def unlimited(self) -> bool:
        return self.rate == 0

    def _bucket(self, key: Hashable, now: float) -> TokenBucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = TokenBucket.full(self.rate, self.burst, now)
            self._buckets[key] = bucket
            if len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return bucket

    def wait(self, keys: Iterable[Hashable], now: float, cost: float = 1.0) -> float:
        """The longest wait over ``keys`` (0: all can pay now); consumes nothing."""
        if self.unlimited:
            return 0.0
        return max((self._bucket(k, now).wait(now, cost) for k in keys), default=0.0)

    def take(self, keys: Iterable[Hashable], now: float, cost: float = 1.0) -> float:
        """Charge every key, or none of them; returns the wait when refused, else 0."""
        if self.unlimited:
            return 0.0
        keys = list(keys)
        wait = self.wait(keys, now, cost)
        if wait == 0:
            for k in keys:
                self._bucket(k, now).tokens -= cost
        return wait

    def __len__(self) -> int:
        return len(self._buckets)


@dataclass(frozen=True, slots=True)
class DomainRamp:
    """Allowance of a federated domain by age: ``initial`` at first contact, doubling every ``doubling``
    seconds, never above ``full``. ``full == 0`` means unlimited (as ``as.domain_token_allowance``)."""

    initial: int
    full: int
    doubling: float

    def __post_init__(self) -> None:
        if self.initial <= 0 or self.full < 0 or self.doubling <= 0:
            raise ValueError("initial and doubling must be positive, full non-negative")

    def allowance(self, first_seen: float, now: float) -> int | None:
        """Tokens the domain may obtain per time frame now; None when unlimited."""
        if self.full == 0:
            return None
        age = max(0.0, now - first_seen)
        doublings = age / self.doubling
        if doublings >= 63:  # 2**63 exceeds any allowance; avoid float overflow
            return self.full
        return min(self.full, max(1, int(self.initial * 2.0**doublings)))
