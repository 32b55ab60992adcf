"""Privacy Pass through the AS: allowances per time frame, key rotation, redemption, remote clients."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from phx.auth import AsCredentialSet
from phx.auth.client import plain_request
from phx.auth.messages import AsRequest, Empty, RequestToken, TokenKeysResponse, UpdateUserProfileParams
from phx.credentials import CredentialError, RevokedCredential
from phx.errors import RateLimited, TokenError
from phx.identifiers import Fqdn
from phx.privacypass import (
    AmortizedBatchTokenRequest,
    TokenClass,
    TokenRedeemer,
    TokenRequestError,
    UnknownTokenKey,
    phoenix_challenge,
    request_tokens,
)
from phx.privacypass.tokens import TOKEN_TYPE
from phx.storage import Database
from tests.auth.helpers import DAY, DOMAIN, Client, FakeClock, RemoteAs, call, make_service, short_config

PROFILE = UpdateUserProfileParams(b"p")


async def test_allowance_per_time_frame(db: Database) -> None:
    clock = FakeClock()
    service = await make_service(db, clock, config=short_config(token_allowance=5, max_tokens_per_request=3))
    alice = await Client.new(service).register(tokens=3)
    await alice.fetch_tokens(2)
    assert len(alice.tokens) == 5
    with pytest.raises(RateLimited) as info:
        await alice.fetch_tokens(1)
    frame_end = clock.now - clock.now % DAY + DAY
    assert info.value.retry_after == frame_end - clock.now
    # Another client of another user has its own allowance.
    bob = await Client.new(service).register(tokens=3)
    assert len(bob.tokens) == 3
    # The next frame refills the allowance (and rotates the key).
    clock.now = frame_end
    await alice.fetch_tokens(3)


async def test_refused_requests_charge_nothing(db: Database) -> None:
    service = await make_service(db, config=short_config(token_allowance=4, max_tokens_per_request=3))
    alice = await Client.new(service).register(tokens=3)
    with pytest.raises(RateLimited):
        await alice.fetch_tokens(2)
    keys = TokenKeysResponse.decode(await call(service, "get_token_keys", plain_request(Empty())))
    pending = request_tokens(keys.public_key, phoenix_challenge(DOMAIN), 1)
    too_many = AmortizedBatchTokenRequest(
        TOKEN_TYPE, pending.request.truncated_token_key_id, (pending.request.blinded_msgs[0],) * 4
    )
    with pytest.raises(TokenRequestError, match="at most 3"):
        await alice.call("request_tokens", RequestToken(too_many), token=False)
    bad = AmortizedBatchTokenRequest(TOKEN_TYPE, pending.request.truncated_token_key_id, (b"\xff" * 32,))
    with pytest.raises(TokenRequestError, match="valid ristretto255"):
        await alice.call("request_tokens", RequestToken(bad), token=False)
    await alice.fetch_tokens(1)  # the last one of the allowance is still there


async def test_tokens_redeem_once_at_any_service_of_the_domain(db: Database) -> None:
    service = await make_service(db)
    alice = await Client.new(service).register(tokens=3)
    token = alice.tokens[0]
    # The DS next to the AS redeems against the same database.
    ds_redeemer = TokenRedeemer.for_domain(db, DOMAIN, service.config.token_time_frame)
    await ds_redeemer.redeem(token, service.clock())
    # Spent at the DS, so the AS refuses it.
    request = alice.request("update_user_profile", PROFILE, token=False)
    with pytest.raises(TokenError, match="already been spent"):
        await call(
            service, "update_user_profile", AsRequest(request.params, request.client_auth, None, token)
        )


async def test_double_spent_token_is_refused(db: Database) -> None:
    service = await make_service(db)
    alice = await Client.new(service).register(tokens=2)
    token = alice.tokens[0]
    first = alice.request("update_user_profile", PROFILE, token=False)
    await call(service, "update_user_profile", AsRequest(first.params, first.client_auth, None, token))
    with pytest.raises(TokenError, match="already been spent"):
        await call(service, "update_user_profile", AsRequest(first.params, first.client_auth, None, token))


async def test_key_rotation_invalidates_hoarded_tokens(db: Database) -> None:
    clock = FakeClock()
    service = await make_service(db, clock)
    alice = await Client.new(service).register(tokens=4)
    hoard = list(alice.tokens)
    clock.now += DAY  # next frame: tokens of the previous key still redeem
    alice.tokens = [hoard.pop()]
    await alice.call("update_user_profile", PROFILE)
    clock.now += DAY  # two frames later: rotated out
    alice.tokens = [hoard.pop()]
    with pytest.raises(TokenError, match="rotated out"):
        await alice.call("update_user_profile", PROFILE)


async def test_request_under_a_stale_key_is_refused(db: Database) -> None:
    clock = FakeClock()
    service = await make_service(db, clock)
    alice = await Client.new(service).register(tokens=0)
    keys = TokenKeysResponse.decode(await call(service, "get_token_keys", plain_request(Empty())))
    assert keys.not_after == clock.now - clock.now % DAY + DAY - 1
    pending = request_tokens(keys.public_key, phoenix_challenge(DOMAIN), 1)
    clock.now = keys.not_after + 1
    fresh = TokenKeysResponse.decode(await call(service, "get_token_keys", plain_request(Empty())))
    if fresh.public_key[-1:] == keys.public_key[-1:]:  # pragma: no cover - 1/256 truncated-id collision
        pytest.skip("truncated key ids collide")
    with pytest.raises(UnknownTokenKey):
        await alice.call("request_tokens", RequestToken(pending.request), token=False)


async def test_remote_clients_get_tokens_within_per_domain_limits(db: Database) -> None:
    remote = RemoteAs(Fqdn("remote.example"), FakeClock().now)
    config = short_config(token_allowance=5, domain_token_allowance=6, max_tokens_per_request=5)
    service = await make_service(db, config=config, remote_credentials=remote)
    one, two = remote.as_client(service), remote.as_client(service)
    await one.fetch_tokens(4)
    with pytest.raises(RateLimited, match="homeserver remote.example exhausted: 2 of 6 left"):
        await two.fetch_tokens(3)  # within its own allowance, but the domain has only 2 left
    await two.fetch_tokens(2)
    assert remote.lookups >= 3
    # The tokens work at this homeserver like local ones.
    local = await Client.new(service).register(tokens=0)
    local.tokens = list(one.tokens)
    await local.call("update_user_profile", PROFILE)
    # A client revoked by its own AS gets nothing.
    three = remote.as_client(service)
    remote.revoked.add(three.cred.fingerprint())
    with pytest.raises(RevokedCredential):
        await three.fetch_tokens(1)


class Remotes:
    """Several other homeservers' ASes as one AsCredentialSource."""

    def __init__(self, *remotes: RemoteAs) -> None:
        self.by_domain = {r.domain: r for r in remotes}

    async def credentials_for(self, domain: Fqdn, now: int) -> AsCredentialSet:
        remote = self.by_domain.get(domain)
        if remote is None:
            raise CredentialError(f"no AS credentials known for {domain}")
        return await remote.credentials_for(domain, now)


RAMP = short_config(
    token_allowance=50,
    new_domain_token_allowance=10,
    domain_token_allowance=60,
    domain_token_allowance_doubling=DAY,
    max_tokens_per_request=50,
)


async def test_new_domains_start_low_and_rise_slowly(db: Database) -> None:
    clock = FakeClock()
    early, late = RemoteAs(Fqdn("early.example"), clock.now), RemoteAs(Fqdn("late.example"), clock.now)
    service = await make_service(db, clock, config=RAMP, remote_credentials=Remotes(early, late))
    one, two = early.as_client(service), early.as_client(service)
    # First contact: the whole homeserver gets 10 tokens in this frame, however many clients it has.
    await one.fetch_tokens(10)
    with pytest.raises(RateLimited, match="homeserver early.example exhausted: 0 of 10 left") as refused:
        await two.fetch_tokens(1)
    assert refused.value.retry_after == DAY - clock.now % DAY
    # A day later the allowance has doubled; two days later doubled again; then it stops at the full 60.
    for allowance in (20, 40, 60, 60):
        clock.now += DAY
        await one.fetch_tokens(allowance // 2)
        await two.fetch_tokens(allowance // 2)
        with pytest.raises(RateLimited, match=f"early.example exhausted: 0 of {allowance} left"):
            await two.fetch_tokens(1)
    # Meanwhile a homeserver first seen now starts low, whatever the age of the others.
    newcomer = late.as_client(service)
    with pytest.raises(
        RateLimited, match="late.example exhausted: 10 of 10 left in this time frame, 11 requested"
    ):
        await newcomer.fetch_tokens(11)
    await newcomer.fetch_tokens(10)
    # The service's clients are never counted per domain.
    await Client.new(service).register(tokens=50)


async def test_refused_first_contact_still_starts_the_ramp(db: Database) -> None:
    clock = FakeClock()
    remote = RemoteAs(Fqdn("remote.example"), clock.now)
    service = await make_service(db, clock, config=RAMP, remote_credentials=remote)
    client = remote.as_client(service)
    with pytest.raises(RateLimited, match="10 of 10 left in this time frame, 15 requested"):
        await client.fetch_tokens(15)  # more than a new homeserver gets: refused, charged nothing
    assert await service.store.domain_first_seen("remote.example") == clock.now
    clock.now += DAY
    await client.fetch_tokens(15)  # the ramp counted from the refused first contact
    assert await service.store.domain_first_seen("remote.example") == clock.now - DAY


async def test_a_domain_unseen_for_long_is_new_again(db: Database) -> None:
    clock = FakeClock()
    remote = RemoteAs(Fqdn("remote.example"), clock.now)
    config = replace(RAMP, max_client_record_age=30 * DAY, domain_token_allowance=1000)
    service = await make_service(db, clock, config=config, remote_credentials=remote)
    await remote.as_client(service).fetch_tokens(10)
    clock.now += 20 * DAY
    await remote.as_client(service).fetch_tokens(50)  # 20 doublings later: well above one client's 50
    assert (await service.housekeeping(clock.now))["federated_domains"] == 0
    clock.now += 30 * DAY + 1
    assert (await service.housekeeping(clock.now))["federated_domains"] == 1
    assert await service.store.domain_first_seen("remote.example") is None
    with pytest.raises(RateLimited, match="10 of 10 left"):
        await remote.as_client(service).fetch_tokens(11)


async def test_concurrent_clients_share_their_domains_allowance(db: Database) -> None:
    """Requests of one homeserver's clients at once (PostgreSQL: concurrent transactions) never overdraw
    the domain's allowance, also when the domain is new and its allowance row does not exist yet."""
    remote = RemoteAs(Fqdn("remote.example"), FakeClock().now)
    service = await make_service(db, config=RAMP, remote_credentials=remote)
    clients = [remote.as_client(service) for _ in range(6)]
    results = await asyncio.gather(*(c.fetch_tokens(5) for c in clients), return_exceptions=True)
    assert results.count(None) == 2
    assert all(isinstance(r, RateLimited) for r in results if r is not None)


async def test_remote_clients_are_limited_per_client(db: Database) -> None:
    remote = RemoteAs(Fqdn("remote.example"), FakeClock().now)
    config = short_config(token_allowance=5, new_domain_token_allowance=100, max_tokens_per_request=5)
    service = await make_service(db, config=config, remote_credentials=remote)
    one, two = remote.as_client(service), remote.as_client(service)
    await one.fetch_tokens(3)
    with pytest.raises(RateLimited, match="allowance of this client exhausted: 2 of 5 left"):
        await one.fetch_tokens(3)
    await one.fetch_tokens(2)
    await two.fetch_tokens(5)  # another client of the same homeserver has its own allowance
    with pytest.raises(RateLimited, match="this client"):
        await two.fetch_tokens(1)


async def test_token_keys_publish_a_key_per_client_class(db: Database) -> None:
    remote = RemoteAs(Fqdn("remote.example"), FakeClock().now)
    service = await make_service(db, remote_credentials=remote)
    keys = TokenKeysResponse.decode(await call(service, "get_token_keys", plain_request(Empty())))
    current = await service.token_keys.current(service.clock())
    assert keys.public_key == current.key.public_key
    assert keys.federated_public_key == current.federated.public_key != keys.public_key
    assert keys.key_for(DOMAIN, DOMAIN) == keys.public_key
    assert keys.key_for(remote.domain, DOMAIN) == keys.federated_public_key
    # Each client verifies its batch proof under its class's published key (fetch_tokens does), and the
    # redeemer tells the classes apart.
    local = await Client.new(service).register(tokens=2)
    stranger = remote.as_client(service)
    await stranger.fetch_tokens(2)
    now = service.clock()
    assert await service.redeemer.redeem(local.token(), now) is TokenClass.LOCAL
    assert await service.redeemer.redeem(stranger.token(), now) is TokenClass.FEDERATED


async def test_no_client_gets_tokens_of_the_other_class(db: Database) -> None:
    remote = RemoteAs(Fqdn("remote.example"), FakeClock().now)
    service = await make_service(db, remote_credentials=remote)
    keys = TokenKeysResponse.decode(await call(service, "get_token_keys", plain_request(Empty())))
    if keys.public_key[-1:] == keys.federated_public_key[-1:]:  # pragma: no cover - 1/256
        pytest.skip("truncated key ids collide")
    local = await Client.new(service).register(tokens=0)
    stranger = remote.as_client(service)
    for client, other_key in ((local, keys.federated_public_key), (stranger, keys.public_key)):
        pending = request_tokens(other_key, phoenix_challenge(DOMAIN), 1)
        with pytest.raises(UnknownTokenKey):
            await client.call("request_tokens", RequestToken(pending.request), token=False)


async def test_local_allowance_is_not_limited_per_domain(db: Database) -> None:
    config = short_config(token_allowance=3, domain_token_allowance=1, max_tokens_per_request=3)
    service = await make_service(db, config=config)
    await Client.new(service).register(tokens=3)
    await Client.new(service).register(tokens=3)


async def test_exempt_endpoints_need_no_token(db: Database) -> None:
    service = await make_service(db)
    await call(service, "get_as_credentials", plain_request(Empty()))
    await call(service, "get_token_keys", plain_request(Empty()))
    # Registration (init and finish) and the first token request need none either: register() does all.
    await Client.new(service).register(tokens=1)
