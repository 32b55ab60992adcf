"""Issuer key rotation: one key per time frame, shared by every process through the database.

Frame ``e`` covers ``[e * interval, (e + 1) * interval)`` (Unix seconds, so a 1-day interval turns at UTC
midnight). Tokens are issued under the key of the current frame and redeemable while that key is current
or previous, so a token lives at most two frames: rotating keys is the book's hoarding mitigation
(threat_model/qualitative/federation.md, "Hoarding Attacks"). The interval is the AS's *anonymous token
time frame*, so allowances refill when keys rotate.

The key of a frame is created lazily by whichever process needs it first (``INSERT … ON CONFLICT DO
NOTHING`` on the frame number, then read back), so all processes agree on it. Keys of past frames are never
created; :meth:`IssuerKeyring.purge` deletes keys (and spent-token records) that can no longer redeem.

Tables (``as`` migrations): ``pp_issuer_keys(epoch, seed, key_id, created_at)``.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from phx.storage import Database

from .issuer import SEED_SIZE, IssuerKey

__all__ = ["IssuerKeyring", "KeyEpoch"]


@dataclass(frozen=True, slots=True)
class KeyEpoch:
    """A key together with its frame."""

    epoch: int
    key: IssuerKey
    not_before: int
    not_after: int
    """Last second at which tokens are *issued* under this key (redeemable one frame longer)."""


class IssuerKeyring:
    def __init__(self, db: Database, interval: int) -> None:
        if interval <= 0:
            raise ValueError("key rotation interval must be positive")
        self.db = db
        self.interval = interval
        self._keys: dict[int, KeyEpoch] = {}
        # The (current, previous) epochs for which the cache is complete.
        self._loaded_epoch: int | None = None

    def epoch(self, now: int) -> int:
        return now // self.interval

    def _wrap(self, epoch: int, seed: bytes) -> KeyEpoch:
        start = epoch * self.interval
        return KeyEpoch(epoch, IssuerKey(bytes(seed)), start, start + self.interval - 1)

    async def current(self, now: int) -> KeyEpoch:
        """The key tokens are issued under at ``now`` (created if this frame has none yet)."""
        epoch = self.epoch(now)
        cached = self._keys.get(epoch)
        if cached is not None:
            return cached
        seed = secrets.token_bytes(SEED_SIZE)
        candidate = IssuerKey(seed)
        async with self.db.transaction() as conn:
            await conn.execute(
                "INSERT INTO pp_issuer_keys (epoch, seed, key_id, created_at) VALUES ($1, $2, $3, $4) "
                "ON CONFLICT (epoch) DO NOTHING",
                epoch,
                seed,
                candidate.key_id,
                now,
            )
            stored = await conn.fetchval("SELECT seed FROM pp_issuer_keys WHERE epoch = $1", epoch)
        entry = self._wrap(epoch, bytes(stored))
        self._keys[epoch] = entry
        return entry

    async def redeemable(self, now: int) -> dict[bytes, KeyEpoch]:
        """Keys under which tokens are accepted at ``now`` (current and previous frame), by key id."""
        epoch = self.epoch(now)
        if self._loaded_epoch != epoch:
            await self.current(now)
            async with self.db.transaction(readonly=True) as conn:
                rows = await conn.fetch(
                    "SELECT epoch, seed FROM pp_issuer_keys WHERE epoch = $1 OR epoch = $2", epoch - 1, epoch
                )
            for row in rows:
                e = int(row["epoch"])
                if e not in self._keys:
                    self._keys[e] = self._wrap(e, bytes(row["seed"]))
            # Forget keys that rotated out so the cache stays two entries long.
            for e in [e for e in self._keys if e < epoch - 1]:
                del self._keys[e]
            self._loaded_epoch = epoch
        return {k.key.key_id: k for e, k in self._keys.items() if epoch - 1 <= e <= epoch}

    async def purge(self, now: int) -> int:
        """Delete keys that can no longer redeem; returns how many were deleted."""
        oldest = self.epoch(now) - 1
        async with self.db.transaction() as conn:
            deleted = await conn.execute("DELETE FROM pp_issuer_keys WHERE epoch < $1", oldest)
        for e in [e for e in self._keys if e < oldest]:
            del self._keys[e]
        return deleted
