"""Issuer key rotation: one key pair per time frame, shared by every process through the database.

Each frame has one secret seed and two keys derived from it (RFC 9497 DeriveKeyPair with distinct
``info``): one for tokens issued to this homeserver's clients and one for clients of other homeservers
(:class:`~.issuer.TokenClass`), so a redeemer learns from a token's key which class it belongs to and
nothing else about its holder.

Frame ``e`` covers ``[e * interval, (e + 1) * interval)`` (Unix seconds, so a 1-day interval turns at UTC
midnight). Tokens are issued under the key of the current frame and redeemable while that key is current
or previous, so a token lives at most two frames: rotating keys is the book's hoarding mitigation
(threat_model/qualitative/federation.md, "Hoarding Attacks"). The interval is the AS's *anonymous token
time frame*, so allowances refill when keys rotate.

The key of a frame is created lazily by whichever process needs it first (``INSERT … ON CONFLICT DO
NOTHING`` on the frame number, then read back), so all processes agree on it. Keys of past frames are never
created; :meth:`IssuerKeyring.purge` deletes keys (and spent-token records) that can no longer redeem.

Tables (``as`` migrations): ``pp_issuer_keys(epoch, seed, key_id, created_at)`` (``key_id``: the local
key's; the federated key is derived from the same seed).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from phx.storage import Database

from .issuer import SEED_SIZE, IssuerKey, TokenClass

__all__ = ["ClassKey", "IssuerKeyring", "KeyEpoch"]


@dataclass(frozen=True, slots=True)
class KeyEpoch:
    """The keys of one frame."""

    epoch: int
    key: IssuerKey
    """The key of :attr:`TokenClass.LOCAL` tokens."""
    federated: IssuerKey
    """The key of :attr:`TokenClass.FEDERATED` tokens."""
    not_before: int
    not_after: int
    """Last second at which tokens are *issued* under these keys (redeemable one frame longer)."""

    def key_for(self, token_class: TokenClass) -> IssuerKey:
        return self.key if token_class is TokenClass.LOCAL else self.federated

    def class_keys(self) -> tuple[ClassKey, ClassKey]:
        local = ClassKey(self.epoch, TokenClass.LOCAL, self.key)
        return local, ClassKey(self.epoch, TokenClass.FEDERATED, self.federated)


@dataclass(frozen=True, slots=True)
class ClassKey:
    """One redeemable key: its frame and the class of the tokens it issued."""

    epoch: int
    token_class: TokenClass
    key: IssuerKey


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
        seed = bytes(seed)
        return KeyEpoch(
            epoch,
            IssuerKey(seed, TokenClass.LOCAL),
            IssuerKey(seed, TokenClass.FEDERATED),
            start,
            start + self.interval - 1,
        )

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

    async def redeemable(self, now: int) -> dict[bytes, ClassKey]:
        """Keys under which tokens are accepted at ``now`` (both classes of the current and the previous
        frame), by key id."""
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
        return {
            ck.key.key_id: ck
            for e, k in self._keys.items()
            if epoch - 1 <= e <= epoch
            for ck in k.class_keys()
        }

    async def purge(self, now: int) -> int:
        """Delete keys that can no longer redeem; returns how many were deleted."""
        oldest = self.epoch(now) - 1
        async with self.db.transaction() as conn:
            deleted = await conn.execute("DELETE FROM pp_issuer_keys WHERE epoch < $1", oldest)
        for e in [e for e in self._keys if e < oldest]:
            del self._keys[e]
        return deleted
