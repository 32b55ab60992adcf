"""Keyrings: peers' key material, fetched over TLS and cached (Synapse's keyring shape: a chain of
fetchers behind one cache, single-flight).

A :class:`Keyring` maps a homeserver domain to a value (a QS verifying key; later the AS credential set):

* **cache with expiry** — a fetched value is served for ``ttl`` seconds (``federation.key_cache_ttl``; 0
  disables caching, but concurrent callers still share one fetch);
* **single-flight** — however many messages from a domain arrive at once, one fetch is made and every
  caller awaits it (a caller that is cancelled does not cancel the others' fetch);
* **bounded refetch** — a failed fetch is remembered for ``retry_interval`` and re-raised without a new
  request, and :meth:`Keyring.refresh` (a signature failed, perhaps the peer rotated its key) fetches again
  at most once per ``refresh_interval``; so a flood of forged frames costs the peer one request a minute;
* **failure is an error** — :class:`KeyFetchError` (503: we could not check, the sender should retry),
  never a value that lets an unverified message through.

Fetchers form a chain (:class:`FetcherChain`): the first that knows the domain answers (say, this
homeserver's own keys locally, everyone else's from the network).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from phx.errors import DecodeError, NotFound, Unavailable
from phx.identifiers import Fqdn, Service
from phx.queuing.messages import VerifyingKeyResponse

from .discovery import PeerClient

__all__ = [
    "Fetcher",
    "FetcherChain",
    "KeyFetchError",
    "Keyring",
    "qs_key_fetcher",
]

log = logging.getLogger("phx.federation.keyring")

V = TypeVar("V")

#: Returns the value for a domain, None if this fetcher does not know it; raises on failure.
Fetcher = Callable[[Fqdn], Awaitable[V | None]]


class KeyFetchError(Unavailable):
    """The key material of a peer could not be obtained (or was malformed)."""


class FetcherChain(Generic[V]):
    def __init__(self, fetchers: Sequence[Fetcher[V]]) -> None:
        self.fetchers = list(fetchers)

    async def __call__(self, domain: Fqdn) -> V | None:
        for fetch in self.fetchers:
            value = await fetch(domain)
            if value is not None:
                return value
        return None


@dataclass(slots=True)
class _Entry(Generic[V]):
    value: V | None
    #: When ``value`` was fetched.
    fetched_at: float
    #: When the peer was last asked (successfully or not).
    attempted_at: float
    error: KeyFetchError | None = None


class Keyring(Generic[V]):
    def __init__(
        self,
        fetch: Fetcher[V],
        *,
        clock: Callable[[], float],
        ttl: float = 3600.0,
        retry_interval: float = 10.0,
        refresh_interval: float = 60.0,
        max_entries: int = 10_000,
    ) -> None:
        self._fetch = fetch
        self._clock = clock
        self.ttl = ttl
        self.retry_interval = retry_interval
        self.refresh_interval = refresh_interval
        self.max_entries = max_entries
        self._entries: dict[Fqdn, _Entry[V]] = {}
        self._inflight: dict[Fqdn, asyncio.Future[V]] = {}
        self.fetches = 0

    def cached(self, domain: Fqdn) -> V | None:
        entry = self._entries.get(domain)
        if entry is None or entry.value is None or self._clock() - entry.fetched_at >= self.ttl:
            return None
        return entry.value

    async def get(self, domain: Fqdn) -> V:
        """The value for ``domain``: cached while fresh, else fetched (once, however many callers)."""
        now = self._clock()
        entry = self._entries.get(domain)
        if entry is not None:
            if entry.value is not None and now - entry.fetched_at < self.ttl:
                return entry.value
            if entry.error is not None and now - entry.attempted_at < self.retry_interval:
                raise entry.error
        return await self._single_flight(domain)

    async def refresh(self, domain: Fqdn) -> V | None:
        """Fetch again because the cached value failed to verify something. Returns the new value, or None
        when the last fetch is too recent to ask the peer again (the caller then fails the check)."""
        entry = self._entries.get(domain)
        if entry is not None and self._clock() - entry.attempted_at < self.refresh_interval:
            return None
        return await self._single_flight(domain)

    def forget(self, domain: Fqdn) -> None:
        self._entries.pop(domain, None)

    async def _single_flight(self, domain: Fqdn) -> V:
        fut = self._inflight.get(domain)
        if fut is None:
            fut = asyncio.ensure_future(self._do_fetch(domain))
            self._inflight[domain] = fut
            fut.add_done_callback(lambda _f: self._inflight.pop(domain, None))
        # shield: one impatient caller must not cancel the fetch the others are waiting for.
        return await asyncio.shield(fut)

    async def _do_fetch(self, domain: Fqdn) -> V:
        self.fetches += 1
        try:
            value = await self._fetch(domain)
            if value is None:
                raise KeyFetchError(f"no key material known for {domain}")
        except (Unavailable, NotFound, DecodeError) as e:
            error = (
                e if isinstance(e, KeyFetchError) else KeyFetchError(f"key fetch from {domain} failed: {e}")
            )
            log.warning("%s", error)
            now = self._clock()
            old = self._entries.get(domain)
            # A value that is still fresh keeps being served when a refresh fails.
            if old is not None and old.value is not None:
                self._put(domain, _Entry(old.value, old.fetched_at, now, error))
            else:
                self._put(domain, _Entry(None, now, now, error))
            raise error from e
        now = self._clock()
        self._put(domain, _Entry(value, now, now))
        return value

    def _put(self, domain: Fqdn, entry: _Entry[V]) -> None:
        self._entries.pop(domain, None)
        self._entries[domain] = entry
        if len(self._entries) > self.max_entries:
            del self._entries[next(iter(self._entries))]


def qs_key_fetcher(client: PeerClient, *, key_length: int = 32) -> Fetcher[bytes]:
    """Fetch ``qs.<domain>``'s verifying key (``POST /qs/v1/verifying_key``, empty body, TLS-verified)."""

    async def fetch(domain: Fqdn) -> bytes | None:
        response = await client.post(domain, Service.QS, "verifying_key", b"")
        if response.status == 404:
            raise NotFound(f"qs.{domain} has no verifying key endpoint")
        if not response.ok:
            raise KeyFetchError(f"qs.{domain} answered {response.status} for its verifying key")
        key = VerifyingKeyResponse.decode(response.body).verifying_key
        if len(key) != key_length:
            raise KeyFetchError(f"qs.{domain} published a {len(key)}-byte verifying key")
        return key

    return fetch
