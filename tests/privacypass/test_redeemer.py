"""Key rotation and redemption on both engines: once only, current or previous key, purge."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from phx.errors import TokenError
from phx.identifiers import Fqdn
from phx.privacypass import (
    AmortizedBatchTokenRequest,
    IssuerKeyring,
    Token,
    TokenClass,
    TokenRedeemer,
    finalize_tokens,
    phoenix_challenge,
    request_tokens,
)
from phx.privacypass.redeemer import spend_tokens
from phx.storage import Database, migrate

DOMAIN = Fqdn("example.com")
DAY = 86_400
T0 = 1_700_000_000 - 1_700_000_000 % DAY  # start of a frame


@pytest.fixture
async def redeemer(db: Database) -> TokenRedeemer:
    await migrate(db, "as")
    return TokenRedeemer.for_domain(db, DOMAIN, DAY)


async def issue(
    keyring: IssuerKeyring,
    now: int,
    n: int,
    domain: Fqdn = DOMAIN,
    token_class: TokenClass = TokenClass.LOCAL,
) -> list[Token]:
    key = (await keyring.current(now)).key_for(token_class)
    pending = request_tokens(key.public_key, phoenix_challenge(domain), n)
    return finalize_tokens(pending, key.issue(pending.request, max_batch=100))


async def test_token_is_accepted_exactly_once(redeemer: TokenRedeemer) -> None:
    a, b = await issue(redeemer.keyring, T0, 2)
    assert await redeemer.redeem(a.encode(), T0 + 10) is TokenClass.LOCAL
    with pytest.raises(TokenError, match="already been spent"):
        await redeemer.redeem(a.encode(), T0 + 11)
    await redeemer.redeem(b.encode(), T0 + 12)


async def test_redemption_tells_the_token_class(redeemer: TokenRedeemer, db: Database) -> None:
    local = await issue(redeemer.keyring, T0, 2)
    federated = await issue(redeemer.keyring, T0, 2, token_class=TokenClass.FEDERATED)
    assert await redeemer.redeem(local[0].encode(), T0 + 1) is TokenClass.LOCAL
    assert await redeemer.redeem(federated[0].encode(), T0 + 1) is TokenClass.FEDERATED
    # The class holds for the previous frame's keys too, and in a process with a cold cache.
    fresh = TokenRedeemer.for_domain(db, DOMAIN, DAY)
    assert await fresh.redeem(federated[1].encode(), T0 + DAY + 1) is TokenClass.FEDERATED
    assert await fresh.redeem(local[1].encode(), T0 + DAY + 1) is TokenClass.LOCAL


async def test_a_token_cannot_pass_for_the_other_class(redeemer: TokenRedeemer) -> None:
    """A federated token relabelled with the local key's id (or the reverse) fails the authenticator."""
    keys = await redeemer.keyring.current(T0)
    assert keys.key.public_key != keys.federated.public_key
    assert keys.key.seed == keys.federated.seed  # one stored secret, two independent keys
    for token_class, other in ((TokenClass.FEDERATED, keys.key), (TokenClass.LOCAL, keys.federated)):
        (good,) = await issue(redeemer.keyring, T0, 1, token_class=token_class)
        assert not other.verify(good)
        relabelled = replace(good, token_key_id=other.key_id)
        with pytest.raises(TokenError, match="does not verify"):
            await redeemer.redeem(relabelled.encode(), T0 + 1)
        # Evaluated under the other class's key but naming its own: refused as well.
        pending = request_tokens(keys.key_for(token_class).public_key, phoenix_challenge(DOMAIN), 1)
        misissued = AmortizedBatchTokenRequest(
            pending.request.token_type, other.truncated_key_id, pending.request.blinded_msgs
        )
        with pytest.raises(TokenError, match="proof"):
            finalize_tokens(pending, other.issue(misissued, max_batch=1))
        assert await redeemer.redeem(good.encode(), T0 + 1) is token_class


async def test_concurrent_double_spend_accepts_one(redeemer: TokenRedeemer, db: Database) -> None:
    (token,) = await issue(redeemer.keyring, T0, 1)
    # A second redeemer on the same database stands for another process (DS next to QS).
    other = TokenRedeemer.for_domain(db, DOMAIN, DAY)
    results = await asyncio.gather(
        *(r.redeem(token.encode(), T0 + 1) for r in (redeemer, other, redeemer, other)),
        return_exceptions=True,
    )
    assert results.count(TokenClass.LOCAL) == 1
    assert all(isinstance(r, TokenError) for r in results if r is not TokenClass.LOCAL)


async def test_processes_agree_on_the_frame_key(db: Database) -> None:
    await migrate(db, "as")
    a, b = IssuerKeyring(db, DAY), IssuerKeyring(db, DAY)
    ka, kb = await asyncio.gather(a.current(T0 + 5), b.current(T0 + 6))
    assert ka.key.public_key == kb.key.public_key
    assert ka.federated.public_key == kb.federated.public_key
    assert ka.not_before == T0 and ka.not_after == T0 + DAY - 1
    next_key = await a.current(T0 + DAY)
    assert next_key.key.public_key != ka.key.public_key
    assert next_key.epoch == ka.epoch + 1


async def test_previous_key_redeems_older_does_not(redeemer: TokenRedeemer, db: Database) -> None:
    old = await issue(redeemer.keyring, T0, 3)
    # Tokens of frame 0 still redeem in frame 1 ...
    await redeemer.redeem(old[0].encode(), T0 + DAY + 5)
    # ... and a fresh process (cold cache) agrees.
    fresh = TokenRedeemer.for_domain(db, DOMAIN, DAY)
    await fresh.redeem(old[1].encode(), T0 + DAY + 6)
    # In frame 2 the key of frame 0 has rotated out: the hoarding mitigation.
    with pytest.raises(TokenError, match="rotated out"):
        await redeemer.redeem(old[2].encode(), T0 + 2 * DAY)


async def test_purge_drops_records_and_keys_that_cannot_redeem(redeemer: TokenRedeemer, db: Database) -> None:
    t0 = (await issue(redeemer.keyring, T0, 1))[0]
    await redeemer.redeem(t0.encode(), T0 + 1)
    t1 = (await issue(redeemer.keyring, T0 + DAY, 1))[0]
    await redeemer.redeem(t1.encode(), T0 + DAY + 1)
    # Frame 1: frame 0's record must stay (its key still redeems, so a replay must still be caught).
    assert await redeemer.purge(T0 + DAY + 2) == 0
    with pytest.raises(TokenError, match="already been spent"):
        await redeemer.redeem(t0.encode(), T0 + DAY + 3)
    assert await redeemer.purge(T0 + 2 * DAY) == 1
    async with db.transaction(readonly=True) as conn:
        epochs = [r[0] for r in await conn.fetch("SELECT epoch FROM pp_issuer_keys ORDER BY epoch")]
        spent = await conn.fetchval("SELECT COUNT(*) FROM pp_spent_tokens")
    assert epochs == [T0 // DAY + 1]  # purging creates no key for the new frame
    assert spent == 1


async def test_foreign_and_forged_tokens_are_refused(redeemer: TokenRedeemer, db: Database) -> None:
    # Issued by the same key material but for another homeserver's challenge.
    (foreign,) = await issue(redeemer.keyring, T0, 1, domain=Fqdn("example.org"))
    with pytest.raises(TokenError, match="another homeserver"):
        await redeemer.redeem(foreign.encode(), T0 + 1)
    (good,) = await issue(redeemer.keyring, T0, 1)
    forged = Token(good.token_type, good.nonce, good.challenge_digest, good.token_key_id, bytes(64))
    with pytest.raises(TokenError, match="does not verify"):
        await redeemer.redeem(forged.encode(), T0 + 1)
    other_key = Token(good.token_type, good.nonce, good.challenge_digest, bytes(32), good.authenticator)
    with pytest.raises(TokenError, match="unknown or rotated out"):
        await redeemer.redeem(other_key.encode(), T0 + 1)
    with pytest.raises(TokenError, match="malformed"):
        await redeemer.redeem(good.encode()[:-1], T0 + 1)
    with pytest.raises(TokenError, match="token type"):
        await redeemer.redeem(b"\x00\x01" + good.encode()[2:], T0 + 1)
    # A refused forgery spends nothing: the genuine token still redeems.
    await redeemer.redeem(good.encode(), T0 + 1)


async def test_group_commit_accepts_each_token_once(redeemer: TokenRedeemer, db: Database) -> None:
    tokens = await issue(redeemer.keyring, T0, 30)
    raws = [t.encode() for t in tokens] * 2  # every token twice, in one burst
    results = await asyncio.gather(*(redeemer.redeem(r, T0 + 1) for r in raws), return_exceptions=True)
    accepted = [r for r, res in zip(raws, results, strict=True) if res is TokenClass.LOCAL]
    assert sorted(accepted) == sorted(t.encode() for t in tokens)
    assert all(isinstance(res, TokenError) for res in results if res is not TokenClass.LOCAL)
    async with db.transaction(readonly=True) as conn:
        assert await conn.fetchval("SELECT COUNT(*) FROM pp_spent_tokens") == 30


async def test_spend_tokens_in_a_transaction(redeemer: TokenRedeemer, db: Database) -> None:
    """spend_tokens (the DS writes application messages' tokens with their fan-out): each token spent once,
    whether it was spent before, repeats in one call, or the call spans several statements; a rolled-back
    transaction spends nothing."""
    tokens = await issue(redeemer.keyring, T0, 3)
    prepared = [(await redeemer.prepare(t.encode(), T0 + 1))[1] for t in tokens]
    await redeemer.spend(prepared[0])
    async with db.transaction() as conn:
        assert await spend_tokens(conn, [prepared[0], prepared[1], prepared[1], prepared[2]]) == [
            False,
            True,
            False,
            True,
        ]
    many = [(bytes([i % 256]) * 32, i.to_bytes(4, "big") * 8, 7) for i in range(1200)]
    with pytest.raises(RuntimeError):
        async with db.transaction() as conn:
            assert await spend_tokens(conn, many) == [True] * 1200
            raise RuntimeError("roll back")
    async with db.transaction() as conn:
        assert await spend_tokens(conn, many[::-1] + many[:1]) == [True] * 1200 + [False]
    with pytest.raises(TokenError, match="already been spent"):
        await redeemer.spend(prepared[2])
    async with db.transaction(readonly=True) as conn:
        assert await conn.fetchval("SELECT COUNT(*) FROM pp_spent_tokens") == 1203
