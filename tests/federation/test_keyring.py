from __future__ import annotations

import asyncio

import pytest

from phx.errors import Unavailable
from phx.federation.keyring import FetcherChain, KeyFetchError, Keyring
from phx.identifiers import Fqdn

A, B = Fqdn("a.test"), Fqdn("b.test")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Remote:
    def __init__(self) -> None:
        self.keys: dict[Fqdn, bytes] = {A: b"key-a-1"}
        self.calls = 0
        self.down = False
        self.gate: asyncio.Event | None = None

    async def __call__(self, domain: Fqdn) -> bytes | None:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.down:
            raise Unavailable("connection refused")
        return self.keys.get(domain)


def ring(remote: Remote, clock: Clock, **kw: float) -> Keyring[bytes]:
    return Keyring(remote, clock=clock, ttl=kw.get("ttl", 60), retry_interval=10, refresh_interval=30)


async def test_cached_until_expiry() -> None:
    remote, clock = Remote(), Clock()
    kr = ring(remote, clock)
    assert await kr.get(A) == b"key-a-1"
    remote.keys[A] = b"key-a-2"
    clock.now += 59
    assert await kr.get(A) == b"key-a-1" and remote.calls == 1
    clock.now += 1
    assert await kr.get(A) == b"key-a-2" and remote.calls == 2


async def test_ttl_zero_fetches_every_time() -> None:
    remote, clock = Remote(), Clock()
    kr = ring(remote, clock, ttl=0)
    for _ in range(3):
        await kr.get(A)
    assert remote.calls == 3


async def test_single_flight_and_cancellation_of_one_waiter() -> None:
    remote, clock = Remote(), Clock()
    remote.gate = asyncio.Event()
    kr = ring(remote, clock)
    waiters = [asyncio.create_task(kr.get(A)) for _ in range(50)]
    await asyncio.sleep(0.01)
    waiters[0].cancel()  # an impatient caller does not cancel the others' fetch
    remote.gate.set()
    results = await asyncio.gather(*waiters[1:])
    assert set(results) == {b"key-a-1"} and remote.calls == 1


async def test_failure_is_an_error_and_is_not_retried_at_once() -> None:
    remote, clock = Remote(), Clock()
    remote.down = True
    kr = ring(remote, clock)
    for _ in range(5):
        with pytest.raises(KeyFetchError):
            await kr.get(A)
    assert remote.calls == 1
    clock.now += 10
    remote.down = False
    assert await kr.get(A) == b"key-a-1" and remote.calls == 2
    with pytest.raises(KeyFetchError, match="no key material"):
        await kr.get(B)  # the peer has no key for it


async def test_refresh_is_rate_bounded_and_keeps_a_fresh_key_when_it_fails() -> None:
    remote, clock = Remote(), Clock()
    kr = ring(remote, clock)
    await kr.get(A)
    remote.keys[A] = b"key-a-2"
    assert await kr.refresh(A) is None  # just fetched: not again
    clock.now += 30
    assert await kr.refresh(A) == b"key-a-2" and remote.calls == 2
    clock.now += 30
    remote.down = True
    with pytest.raises(KeyFetchError):
        await kr.refresh(A)
    assert await kr.get(A) == b"key-a-2"  # still within its ttl


async def test_fetcher_chain_asks_in_order() -> None:
    async def local(domain: Fqdn) -> bytes | None:
        return b"own" if domain == B else None

    remote, clock = Remote(), Clock()
    chain: FetcherChain[bytes] = FetcherChain([local, remote])
    kr: Keyring[bytes] = Keyring(chain, clock=clock)
    assert await kr.get(B) == b"own" and remote.calls == 0
    assert await kr.get(A) == b"key-a-1" and remote.calls == 1
