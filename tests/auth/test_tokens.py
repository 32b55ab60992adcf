"""Privacy Pass through the AS: allowances per time frame, key rotation, redemption, remote clients."""

from __future__ import annotations

import pytest

from phx.auth.client import plain_request
from phx.auth.messages import AsRequest, Empty, RequestToken, TokenKeysResponse, UpdateUserProfileParams
from phx.credentials import RevokedCredential
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
