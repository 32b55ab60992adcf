"""Token redemption: the library the AS, DS and QS call for every request that costs a token.

A token is accepted when it is well-formed, answers this homeserver's challenge, names a key of the
current or the previous frame, carries that key's authenticator, and has not been spent before.
:meth:`TokenRedeemer.redeem` returns the token's :class:`~.issuer.TokenClass` (which of the frame's two
keys issued it: this homeserver's clients or another homeserver's); services that treat both alike
ignore it. Spending
is an ``INSERT … ON CONFLICT DO NOTHING`` into ``pp_spent_tokens`` keyed by (key id, nonce), so two
concurrent redemptions of one token (in one process or several sharing the database) accept exactly one.
Spent-token records are kept exactly as long as their key can redeem and purged with it.

Group commit: concurrent redemptions share one transaction (one commit, one fsync). A redemption returns
only after the transaction holding its record has committed, so an accepted token stays spent across a
crash; a lone redemption still commits at once. Do not call :meth:`TokenRedeemer.redeem` while holding a
write transaction on the same database (the commit runs in another task and would wait for it).

Every refusal is :class:`~phx.errors.TokenError` (401 ``bad_token``) with a message saying why.
"""

from __future__ import annotations

import asyncio

from phx.errors import DecodeError, TokenError
from phx.identifiers import Fqdn
from phx.storage import Database

from .issuer import TokenClass
from .keys import ClassKey, IssuerKeyring
from .tokens import TOKEN_TYPE, Token, TokenChallenge, phoenix_challenge

__all__ = ["TokenRedeemer"]


class TokenRedeemer:
    def __init__(self, db: Database, keyring: IssuerKeyring, challenge: TokenChallenge) -> None:
        self.db = db
        self.keyring = keyring
        self.challenge_digest = challenge.digest()
        self._pending: list[tuple[bytes, bytes, int, asyncio.Future[bool]]] = []
        self._flusher: asyncio.Task[None] | None = None

    @classmethod
    def for_domain(cls, db: Database, domain: Fqdn, interval: int) -> TokenRedeemer:
        """A redeemer for the tokens ``as.<domain>`` issues (``interval``: the AS token time frame)."""
        return cls(db, IssuerKeyring(db, interval), phoenix_challenge(domain))

    async def check(self, raw: bytes, now: int) -> tuple[Token, ClassKey]:
        """Every check except the spent-token store (nothing is written); returns the token and its key."""
        try:
            token = Token.decode(raw)
        except DecodeError:
            raise TokenError("malformed Privacy Pass token") from None
        if token.token_type != TOKEN_TYPE:
            raise TokenError(f"unsupported token type 0x{token.token_type:04x}")
        if token.challenge_digest != self.challenge_digest:
            raise TokenError("token was issued for another homeserver")
        keys = await self.keyring.redeemable(now)
        entry = keys.get(token.token_key_id)
        if entry is None:
            raise TokenError("token key is unknown or rotated out")
        if not entry.key.verify(token):
            raise TokenError("token authenticator does not verify")
        return token, entry

    async def redeem(self, raw: bytes, now: int) -> TokenClass:
        """Accept ``raw`` once: check it, then record it as spent (raises TokenError if it already was).
        Returns the class of the token (whom its key issues to)."""
        token, entry = await self.check(raw, now)
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append((token.token_key_id, token.nonce, entry.epoch, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="phx-spent-tokens")
        if not await future:
            raise TokenError("token has already been spent")
        return entry.token_class

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                results = []
                async with self.db.transaction() as conn:
                    for key_id, nonce, epoch, _ in batch:
                        inserted = await conn.execute(
                            "INSERT INTO pp_spent_tokens (key_id, nonce, epoch) VALUES ($1, $2, $3) "
                            "ON CONFLICT (key_id, nonce) DO NOTHING",
                            key_id,
                            nonce,
                            epoch,
                        )
                        results.append(inserted > 0)
            except Exception as e:
                for *_, future in batch:
                    if not future.done():
                        future.set_exception(e)
                continue
            for (*_, future), accepted in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(accepted)

    async def purge(self, now: int) -> int:
        """Drop spent-token records (and keys) that can no longer matter; returns records deleted."""
        oldest = self.keyring.epoch(now) - 1
        async with self.db.transaction() as conn:
            deleted = await conn.execute("DELETE FROM pp_spent_tokens WHERE epoch < $1", oldest)
        await self.keyring.purge(now)
        return deleted
