"""Service lifecycle and housekeeping: expiry of ephemeral state, allowances, tokens, inactive entries."""

from __future__ import annotations

import asyncio

from phx.auth import AsService
from phx.auth.client import plain_request
from phx.auth.messages import AsCredentialsResponse, Empty, UpdateUserProfileParams
from phx.config import AsConfig
from phx.storage import Database, migrate
from tests.auth.helpers import DAY, DOMAIN, AliasOwner, Client, FakeClock, call, make_service


async def count(db: Database, table: str) -> int:
    async with db.transaction(readonly=True) as conn:
        return int(await conn.fetchval(f"SELECT COUNT(*) FROM {table}"))


async def test_housekeeping_purges_what_expired(db: Database) -> None:
    clock = FakeClock()
    service = await make_service(db, clock)
    alice = await Client.new(service).register(tokens=5, login=True)
    await alice.call("update_user_profile", UpdateUserProfileParams(b"x"))  # spends a token
    await Client.new(service).init_registration()  # abandoned: stays pending
    await alice.second_factor()  # abandoned 2FA login
    owner = AliasOwner.new(service)
    await call(service, "register_alias", plain_request(owner.register_params(), token=alice.token()))
    assert await count(db, "as_opaque_pending") == 2
    assert await count(db, "as_token_issuance") == 1
    assert await count(db, "pp_spent_tokens") == 3

    # Two frames later: pending entries, allowance records, spent tokens and old keys are gone.
    clock.now += 2 * DAY
    stats = await service.housekeeping(clock.now)
    assert stats["pending"] == 2
    assert stats["allowances"] == 1
    assert stats["spent_tokens"] == 3
    assert stats["inactive_clients"] == 0
    assert await count(db, "pp_issuer_keys") == 0

    # After the maximal client record age without activity, the client entry (and the alias) go, and
    # the client's credential is revoked; the user entry stays for a client addition with the password.
    clock.now += service.config.max_client_record_age + DAY
    stats = await service.housekeeping(clock.now)
    assert stats["inactive_clients"] == 1 and stats["inactive_aliases"] == 1
    assert await service.store.client(alice.client_id) is None
    assert await service.store.user_exists(alice.user_id)


async def test_revoked_client_appears_in_the_published_list(db: Database) -> None:
    clock = FakeClock()
    service = await make_service(db, clock)
    alice = await Client.new(service).register(tokens=0, lifetime=365 * DAY)
    clock.now += service.config.max_client_record_age + DAY
    await service.housekeeping(clock.now)
    creds = AsCredentialsResponse.decode(await call(service, "get_as_credentials", plain_request(Empty())))
    assert alice.cred.fingerprint() in creds.revoked_certs


async def test_start_creates_keys_and_stop_ends_the_loop(db: Database) -> None:
    await migrate(db, "as")
    clock = FakeClock()
    service = AsService(db, DOMAIN, AsConfig(), clock=clock, housekeeping_interval=0.01)
    await service.start()
    try:
        material = await service.keys.material(clock.now)
        assert material.signing_root(clock.now) is not None
        await asyncio.sleep(0.05)  # a few housekeeping rounds run without error
    finally:
        await service.stop()
    assert service._task is None
