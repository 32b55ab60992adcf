"""Request authentication: Client Credential time window and binding, credential validity, envelopes."""

from __future__ import annotations

import pytest

from phx.auth.client import client_request, plain_request
from phx.auth.core import LABEL_CLIENT_AUTH, auth_tbs
from phx.auth.messages import AliasAuth, AsRequest, ClientCredentialAuth, Empty, UpdateUserProfileParams
from phx.credentials import CredentialError, RevokedCredential
from phx.errors import (
    AuthError,
    DecodeError,
    ExpiredError,
    Forbidden,
    NotFound,
    SignatureError,
    TokenError,
    ValidationError,
)
from phx.identifiers import Fqdn
from phx.storage import Database
from tests.auth.helpers import DAY, Client, FakeClock, RemoteAs, call, make_service

PROFILE = UpdateUserProfileParams(b"profile")


async def test_credential_auth_inside_the_time_window(db: Database) -> None:
    clock = FakeClock()
    service = await make_service(db, clock)
    alice = await Client.new(service).register()
    max_age = service.config.max_auth_token_age
    # Exactly at the edges: max_age in the past, the clock skew in the future.
    await alice.call("update_user_profile", PROFILE, now=clock.now - max_age)
    await alice.call("update_user_profile", PROFILE, now=clock.now + service.max_clock_skew)
    with pytest.raises(ExpiredError, match="too old"):
        await alice.call("update_user_profile", PROFILE, now=clock.now - max_age - 1)
    with pytest.raises(ExpiredError, match="future"):
        await alice.call("update_user_profile", PROFILE, now=clock.now + service.max_clock_skew + 1)


async def test_signature_binds_operation_params_and_domain(db: Database) -> None:
    clock = FakeClock()
    service = await make_service(db, clock)
    alice = await Client.new(service).register()
    good = alice.request("update_user_profile", PROFILE)
    assert good.client_auth is not None
    # Other params under the same signature.
    tampered = AsRequest(UpdateUserProfileParams(b"evil").encode(), good.client_auth, None, alice.token())
    with pytest.raises(SignatureError):
        await call(service, "update_user_profile", tampered)
    # A signature made for another operation or another AS.
    for domain, op in ((service.domain, "delete_user"), (Fqdn("other.example"), "update_user_profile")):
        sig = alice.cred.payload.credential_ciphersuite.sign(
            alice.signing_key, LABEL_CLIENT_AUTH, auth_tbs(domain, op, clock.now, PROFILE.encode())
        )
        request = AsRequest(
            PROFILE.encode(), ClientCredentialAuth(alice.cred, clock.now, sig), None, alice.token()
        )
        with pytest.raises(SignatureError):
            await call(service, "update_user_profile", request)
    await call(service, "update_user_profile", good)


async def test_expired_credential_is_refused(db: Database) -> None:
    clock = FakeClock()
    service = await make_service(db, clock)
    alice = await Client.new(service).register(lifetime=2 * 3600)
    await alice.call("update_user_profile", PROFILE)
    clock.now += 3 * 3600
    with pytest.raises(ExpiredError, match="expired"):
        await alice.call("update_user_profile", PROFILE)


async def test_issued_but_unregistered_credential_is_refused(db: Database) -> None:
    """A credential from an abandoned registration has a valid chain but no client entry."""
    service = await make_service(db)
    alice = await Client.new(service).register()
    ghost = Client.new(service)
    await ghost.init_registration()
    ghost.tokens = alice.tokens
    with pytest.raises(AuthError, match="not registered"):
        await ghost.call("update_user_profile", PROFILE)
    # Not even tokens: issuance needs a registered client too.
    with pytest.raises(AuthError, match="not registered"):
        await ghost.fetch_tokens(1)


async def test_revoked_intermediate_invalidates_its_clients(db: Database) -> None:
    clock = FakeClock()
    service = await make_service(db, clock)
    alice = await Client.new(service).register()
    await service.keys.revoke_signing_credential(alice.cred.payload.signer_fingerprint, clock.now)
    with pytest.raises(RevokedCredential):
        await alice.call("update_user_profile", PROFILE)


async def test_remote_clients_only_get_tokens(db: Database) -> None:
    service = await make_service(db)
    remote = RemoteAs(Fqdn("remote.example"), service.clock())
    cred, key = remote.client(service.clock())
    request = client_request(
        "update_user_profile",
        PROFILE,
        as_domain=service.domain,
        credential=cred,
        private_key=key,
        now=service.clock(),
    )
    local = await Client.new(service).register()
    request = AsRequest(request.params, request.client_auth, None, local.token())
    with pytest.raises(Forbidden):
        await call(service, "update_user_profile", request)


async def test_envelope_rules(db: Database) -> None:
    service = await make_service(db)
    alice = await Client.new(service).register()
    # Unknown operation, malformed body.
    with pytest.raises(NotFound):
        await call(service, "no_such_operation", plain_request(Empty()))
    with pytest.raises(DecodeError):
        await service.process("get_as_credentials", b"\xff\xff", service.clock())
    # Missing or bad token where one is needed.
    with pytest.raises(TokenError, match="requires a Privacy Pass token"):
        await alice.call("update_user_profile", PROFILE, token=False)
    bad = alice.request("update_user_profile", PROFILE, token=False)
    with pytest.raises(TokenError):
        await call(
            service, "update_user_profile", AsRequest(bad.params, bad.client_auth, None, b"\x00" * 162)
        )
    # Authentication the operation does not take.
    signed = alice.request("get_as_credentials", Empty(), token=False)
    with pytest.raises(ValidationError, match="no client authentication"):
        await call(service, "get_as_credentials", signed)
    with pytest.raises(ValidationError, match="no alias authentication"):
        await call(service, "get_as_credentials", AsRequest(b"", None, AliasAuth(0, b""), None))
    # Missing authentication.
    with pytest.raises(AuthError, match="requires Client Credential"):
        await alice.call("update_user_profile", PROFILE, credential=False)
    # Params that do not decode (after a valid signature over them).
    with pytest.raises(DecodeError):
        await alice.call("update_user_profile", Empty())


async def test_credential_of_another_domain_is_unknown_without_federation(db: Database) -> None:
    service = await make_service(db)
    remote = RemoteAs(Fqdn("remote.example"), service.clock())
    client = remote.as_client(service)
    with pytest.raises(CredentialError, match="no AS credentials known"):
        await client.fetch_tokens(1)


async def test_activity_time_is_recorded_by_the_day(db: Database) -> None:
    clock = FakeClock()
    service = await make_service(db, clock)
    alice = await Client.new(service).register()
    clock.now += 3 * DAY + 5
    await alice.fetch_tokens(1)
    async with db.transaction(readonly=True) as conn:
        activity = await conn.fetchval(
            "SELECT activity_time FROM as_clients WHERE client_id = $1", str(alice.client_id)
        )
    assert activity == clock.now - clock.now % DAY
