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
write transaction on the same database (the commit runs in another task and would wait for it). A caller
that writes anyway may instead :meth:`~TokenRedeemer.check` a token and record it in its own transaction
with :func:`spend_tokens` (the DS does, for application messages: one transaction per message, not two).

Every refusal is :class:`~phx.errors.TokenError` (401 ``bad_token``) with a message saying why.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from phx.errors import DecodeError, TokenError
from phx.identifiers import Fqdn
from phx.storage import Connection, Database

from .issuer import TokenClass
from .keys import ClassKey, IssuerKeyring
from .tokens import TOKEN_TYPE, Token, TokenChallenge, phoenix_challenge

__all__ = ["Spend", "TokenRedeemer", "spend_tokens"]

#: A checked token to record as spent: (key id, nonce, epoch of its key).
Spend = tuple[bytes, bytes, int]

_SPEND_CHUNK = 500  # rows per INSERT: 1,500 parameters, well within PostgreSQL's limit
_SPEND_ONE = (
    "INSERT INTO pp_spent_tokens (key_id, nonce, epoch) VALUES ($1, $2, $3) "
    "ON CONFLICT (key_id, nonce) DO NOTHING"
)


async def spend_tokens(conn: Connection, tokens: Sequence[Spend]) -> list[bool]:
    """Record ``tokens`` as spent in ``conn``'s transaction; per token, whether this call spent it (False:
    it was spent before, or appears earlier in ``tokens``)."""
    if conn.engine == "sqlite":
        # In-process statements are cheap, and SQLite runs one single-row INSERT faster than its share of
        # a multi-row one.
        return [await conn.execute(_SPEND_ONE, *t) > 0 for t in tokens]
    inserted: set[tuple[bytes, bytes]] = set()
    for i in range(0, len(tokens), _SPEND_CHUNK):
        chunk = tokens[i : i + _SPEND_CHUNK]
        values = ", ".join(f"(${3 * j + 1}, ${3 * j + 2}, ${3 * j + 3})" for j in range(len(chunk)))
        rows = await conn.fetch(
            f"INSERT INTO pp_spent_tokens (key_id, nonce, epoch) VALUES {values} "
            "ON CONFLICT (key_id, nonce) DO NOTHING RETURNING key_id, nonce",
            *(v for t in chunk for v in t),
        )
        inserted.update((bytes(r[0]), bytes(r[1])) for r in rows)
    out = []
    for key_id, nonce, _ in tokens:
        name = (key_id, nonce)
        out.append(name in inserted)
        inserted.discard(name)  # a second occurrence in ``tokens`` spends nothing
    return out


class TokenRedeemer:
    def __init__(self, db: Database, keyring: IssuerKeyring, challenge: TokenChallenge) -> None:
        self.db = db
        self.keyring = keyring
        self.challenge_digest = challenge.digest()
        self._pending: list[tuple[Spend, asyncio.Future[bool]]] = []
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
        token_class, spend = await self.prepare(raw, now)
        await self.spend(spend)
        return token_class

    async def prepare(self, raw: bytes, now: int) -> tuple[TokenClass, Spend]:
        """:meth:`check`, returning the token's class and the record that spends it (for :meth:`spend` or
        :meth:`spend_in`)."""
        token, entry = await self.check(raw, now)
        return entry.token_class, (token.token_key_id, token.nonce, entry.epoch)

    async def spend(self, spend: Spend) -> None:
        """Record a prepared token as spent, in a transaction shared with concurrent calls; raises
        TokenError if it already was."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append((spend, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="phx-spent-tokens")
        if not await future:
            raise TokenError("token has already been spent")

    async def spend_in(self, conn: Connection, spends: Sequence[Spend]) -> list[bool]:
        """:func:`spend_tokens` in the caller's transaction."""
        return await spend_tokens(conn, spends)

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                async with self.db.transaction() as conn:
                    results = await spend_tokens(conn, [spend for spend, _ in batch])
            except Exception as e:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(e)
                continue
            for (_, future), accepted in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(accepted)

    async def purge(self, now: int) -> int:
        """Drop spent-token records (and keys) that can no longer matter; returns records deleted."""
        oldest = self.keyring.epoch(now) - 1
        async with self.db.transaction() as conn:
            deleted = await conn.execute("DELETE FROM pp_spent_tokens WHERE epoch < $1", oldest)
        await self.keyring.purge(now)
        return deleted
