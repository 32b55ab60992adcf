"""Accounts: OPAQUE registration with the CSR, client addition, Client 2FA deletions, and attacks on them."""

from __future__ import annotations

import pytest

from phx.auth.client import plain_request
from phx.auth.messages import (
    AsCredentialsResponse,
    DeleteClientParams,
    DeleteUserParams,
    Empty,
    FinishClientAdditionParams,
    FinishClientAdditionResponse,
    FinishUserRegistrationParams,
    InitClientAdditionParams,
    InitClientAdditionResponse,
    UpdateUserProfileParams,
    UserProfileParams,
)
from phx.auth.opaque import (
    OpaqueAuthError,
    client_login_finish,
    client_login_start,
    client_registration_finish,
)
from phx.credentials import (
    ClientCsr,
    CredentialError,
    CredentialFingerprint,
    CsrError,
    new_client_csr,
    verify_client_credential,
)
from phx.errors import AuthError, Conflict, ExpiredError, Forbidden, NotFound, SignatureError, ValidationError
from phx.identifiers import ClientId, Fqdn, UserId
from phx.storage import Database
from tests.auth.helpers import DAY, DOMAIN, Client, FakeClock, call, make_service, newest_intermediate


async def test_registration_issues_a_chained_credential_and_creates_the_user(db: Database) -> None:
    clock = FakeClock()
    service = await make_service(db, clock)
    alice = await Client.new(service).register()
    creds = AsCredentialsResponse.decode(await call(service, "get_as_credentials", plain_request(Empty())))
    chain = verify_client_credential(
        alice.cred,
        intermediates=creds.as_intermediate_credentials,
        as_credentials=creds.as_credentials,
        now=clock.now,
    )
    assert chain.root.domain == DOMAIN
    assert alice.cred.client_id == alice.client_id
    assert await service.store.user_exists(alice.user_id)
    # The pending entry is gone, the password file is stored, the profile starts empty.
    assert await service.store.get_pending(f"register:{alice.user_id}", clock.now) is None
    assert await service.store.password_file(alice.user_id)
    assert await service.store.profile(alice.user_id) == b""
    # The new client works: it got tokens and can update its profile.
    await alice.call("update_user_profile", UpdateUserProfileParams(b"ciphertext"))
    assert await service.store.profile(alice.user_id) == b"ciphertext"


async def test_duplicate_user_id_is_refused(db: Database) -> None:
    service = await make_service(db)
    alice = await Client.new(service).register(tokens=0)
    mallory = Client.new(service, alice.user_id)
    with pytest.raises(Conflict):
        await mallory.init_registration()


async def test_concurrent_registration_of_one_user_id(db: Database) -> None:
    """Two registrations race for one user id: the second init conflicts while the first is pending, and
    after the first finished the second cannot finish either."""
    service = await make_service(db)
    first = Client.new(service)
    second = Client.new(service, first.user_id)
    csr = await first.csr()
    await first.init_registration(csr)
    with pytest.raises(Conflict):
        await second.init_registration()
    # The same client retrying with the same key (say, after a lost response) may re-init.
    await first.init_registration(csr)


async def test_csr_for_a_foreign_domain_is_refused(db: Database) -> None:
    service = await make_service(db)
    stranger = Client.new(service, UserId.random(Fqdn("evil.example")))
    with pytest.raises(CsrError, match="domain"):
        await stranger.init_registration()


async def test_csr_without_a_valid_self_signature_is_refused(db: Database) -> None:
    service = await make_service(db)
    client = Client.new(service)
    csr = await client.csr()
    forged = ClientCsr(csr.payload, bytes(64))
    with pytest.raises(SignatureError):
        await client.init_registration(forged)
    # Self-signed by another key than the one in the payload.
    other, _ = new_client_csr(
        client.client_id, await newest_intermediate(service, client.now()), csr.payload.expiration_data
    )
    swapped = ClientCsr(csr.payload, other.self_signature)
    with pytest.raises(SignatureError):
        await client.init_registration(swapped)


async def test_csr_naming_an_unknown_intermediate_is_refused(db: Database) -> None:
    service = await make_service(db)
    client = Client.new(service)
    with pytest.raises(CsrError, match="does not sign with"):
        await client.init_registration(await client.csr_with_signer(CredentialFingerprint(bytes(32))))


@pytest.mark.parametrize(
    ("start", "lifetime", "error"),
    [
        (-2 * DAY, DAY, "already ended"),  # expired
        (3600, DAY, "starts in the future"),  # not yet valid, beyond the clock skew
        (0, 400 * DAY, "at most"),  # longer than client_credential_max_lifetime
    ],
)
async def test_csr_validity_periods(db: Database, start: int, lifetime: int, error: str) -> None:
    service = await make_service(db)
    client = Client.new(service)
    csr = await client.csr(lifetime=lifetime, not_before=client.now() + start)
    with pytest.raises(CsrError, match=error):
        await client.init_registration(csr)


async def test_not_yet_valid_credential_cannot_finish_registration(db: Database) -> None:
    """A CSR starting inside the clock-skew tolerance is signed, but the credential is not valid yet when
    the client signs the finish request: the chain check refuses it."""
    clock = FakeClock()
    service = await make_service(db, clock)
    client = Client.new(service)
    resp, reg = await client.init_registration(await client.csr(not_before=clock.now + 120))
    record = client_registration_finish(client.password, reg, resp.opaque_registration_response)  # type: ignore[arg-type]
    params = FinishUserRegistrationParams(client.queue_pk, client.ratchet_key, (), record)
    with pytest.raises(ExpiredError, match="not valid yet"):
        await client.call("finish_user_registration", params, token=False)


async def test_finish_needs_the_pending_credential_and_expires(db: Database) -> None:
    clock = FakeClock()
    service = await make_service(db, clock)
    client = Client.new(service)
    resp, reg = await client.init_registration()
    record = client_registration_finish(client.password, reg, resp.opaque_registration_response)  # type: ignore[arg-type]
    params = FinishUserRegistrationParams(client.queue_pk, client.ratchet_key, (), record)
    # Signed by another key than the credential's.
    good_key = client.signing_key
    client.signing_key = Client.new(service).signing_key or bytes(32)
    with pytest.raises(SignatureError):
        await client.call("finish_user_registration", params, token=False)
    client.signing_key = good_key
    # After the OPAQUE state expired (5 minutes by default) the registration is gone.
    clock.now += service.config.opaque_state_expiry + 1
    with pytest.raises(AuthError, match="no pending registration"):
        await client.call("finish_user_registration", params, token=False)
    assert not await service.store.user_exists(client.user_id)


async def test_finish_rejects_a_malformed_record_and_foreign_packages(db: Database) -> None:
    service = await make_service(db)
    other = await Client.new(service).register(tokens=0)
    client = Client.new(service)
    resp, reg = await client.init_registration()
    record = client_registration_finish(client.password, reg, resp.opaque_registration_response)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="registration record"):
        params = FinishUserRegistrationParams(client.queue_pk, client.ratchet_key, (), b"\x01" * 10)
        await client.call("finish_user_registration", params, token=False)
    with pytest.raises(ValidationError, match="another client credential"):
        params = FinishUserRegistrationParams(client.queue_pk, client.ratchet_key, (other.package(),), record)
        await client.call("finish_user_registration", params, token=False)
    with pytest.raises(ValidationError, match="ratchet key"):
        params = FinishUserRegistrationParams(client.queue_pk, b"short", (), record)
        await client.call("finish_user_registration", params, token=False)
    params = FinishUserRegistrationParams(client.queue_pk, client.ratchet_key, (client.package(),), record)
    await client.call("finish_user_registration", params, token=False)


# --- client addition (Client Password) ---------------------------------------------------------------


async def add_client(service_client: Client, password: bytes) -> Client:
    """A second device of the same user runs the Client Password flow; returns it registered."""
    service = service_client.service
    device = Client.new(service, service_client.user_id)
    login = client_login_start(password)
    init = InitClientAdditionResponse.decode(
        await call(
            service,
            "init_client_addition",
            plain_request(InitClientAdditionParams(await device.csr(), login.ke1)),
        )
    )
    ke3 = client_login_finish(password, login, init.opaque_ke2)
    params = FinishClientAdditionParams(device.client_id, ke3, device.queue_pk, device.ratchet_key)
    resp = FinishClientAdditionResponse.decode(
        await call(service, "finish_client_addition", plain_request(params))
    )
    device.credential = resp.client_credential
    return device


async def test_client_addition_with_the_password(db: Database) -> None:
    service = await make_service(db)
    alice = await Client.new(service).register(tokens=0, login=True)
    phone = await add_client(alice, alice.password)
    assert phone.cred.client_id.user_id == alice.user_id
    await phone.fetch_tokens(2)
    await phone.call("update_user_profile", UpdateUserProfileParams(b"from the phone"))
    assert await service.store.profile(alice.user_id) == b"from the phone"


async def test_client_addition_with_a_wrong_password_fails(db: Database) -> None:
    service = await make_service(db)
    alice = await Client.new(service).register(tokens=0)
    device = Client.new(service, alice.user_id)
    login = client_login_start(b"wrong password")
    init = InitClientAdditionResponse.decode(
        await call(
            service,
            "init_client_addition",
            plain_request(InitClientAdditionParams(await device.csr(), login.ke1)),
        )
    )
    # The client notices first: its envelope does not open with the wrong password.
    with pytest.raises(OpaqueAuthError):
        client_login_finish(b"wrong password", login, init.opaque_ke2)
    # An attacker who sends some KE3 anyway is refused, and the attempt is used up.
    params = FinishClientAdditionParams(device.client_id, bytes(64), device.queue_pk, device.ratchet_key)
    with pytest.raises(OpaqueAuthError):
        await call(service, "finish_client_addition", plain_request(params))
    with pytest.raises(AuthError, match="no client addition in progress"):
        await call(service, "finish_client_addition", plain_request(params))
    assert await service.store.client(device.client_id) is None


async def test_client_addition_for_unknown_user_or_taken_client_id(db: Database) -> None:
    service = await make_service(db)
    alice = await Client.new(service).register(tokens=0)
    login = client_login_start(alice.password)
    stranger = Client.new(service)
    with pytest.raises(NotFound):
        await call(
            service,
            "init_client_addition",
            plain_request(InitClientAdditionParams(await stranger.csr(), login.ke1)),
        )
    twin = Client.new(service, alice.user_id)
    twin.client_id = alice.client_id
    with pytest.raises(Conflict):
        await call(
            service,
            "init_client_addition",
            plain_request(InitClientAdditionParams(await twin.csr(), login.ke1)),
        )


# --- Client 2FA: removing clients and deleting the account -------------------------------------------


async def test_delete_client_with_2fa_revokes_its_credential(db: Database) -> None:
    clock = FakeClock()
    service = await make_service(db, clock)
    alice = await Client.new(service).register(login=True)
    phone = await add_client(alice, alice.password)
    ke3 = await alice.second_factor()
    await alice.call("delete_client", DeleteClientParams(phone.client_id, ke3))
    assert await service.store.client(phone.client_id) is None
    creds = AsCredentialsResponse.decode(await call(service, "get_as_credentials", plain_request(Empty())))
    assert phone.cred.fingerprint() in creds.revoked_certs
    with pytest.raises(CredentialError):
        verify_client_credential(
            phone.cred,
            intermediates=creds.as_intermediate_credentials,
            as_credentials=creds.as_credentials,
            now=clock.now,
            revoked=frozenset(creds.revoked_certs),
        )
    # The removed client cannot authenticate any more.
    phone.tokens = list(alice.tokens[:1])
    with pytest.raises(AuthError):
        await phone.call("update_user_profile", UpdateUserProfileParams(b"x"))


async def test_delete_client_rules(db: Database) -> None:
    service = await make_service(db)
    alice = await Client.new(service).register(tokens=10, login=True)
    bob = await Client.new(service).register(tokens=0)
    # Another user's client: forbidden (before the KE3 is even looked at).
    with pytest.raises(Forbidden):
        await alice.call("delete_client", DeleteClientParams(bob.client_id, bytes(64)))
    # The last client: that is account deletion.
    ke3 = await alice.second_factor()
    with pytest.raises(ValidationError, match="last client"):
        await alice.call("delete_client", DeleteClientParams(alice.client_id, ke3))
    # Without a preceding initiate_2fa_authentication there is no login to finish.
    with pytest.raises(AuthError, match="no 2FA login"):
        await alice.call("delete_client", DeleteClientParams(ClientId.random(alice.user_id), bytes(64)))


async def test_delete_user_needs_the_password(db: Database) -> None:
    clock = FakeClock()
    service = await make_service(db, clock)
    alice = await Client.new(service).register(login=True)
    # A stolen device without the password: the KE3 cannot be computed, a forged one fails.
    await alice.second_factor()
    with pytest.raises(OpaqueAuthError):
        await alice.call("delete_user", DeleteUserParams(bytes(64)))
    assert await service.store.user_exists(alice.user_id)
    # The login state was used up by the failed attempt.
    with pytest.raises(AuthError, match="no 2FA login"):
        await alice.call("delete_user", DeleteUserParams(bytes(64)))
    # A KE3 of an expired login is refused too.
    ke3 = await alice.second_factor()
    clock.now += service.config.opaque_state_expiry + 1
    with pytest.raises(AuthError, match="no 2FA login"):
        await alice.call("delete_user", DeleteUserParams(ke3))
    ke3 = await alice.second_factor()
    await alice.call("delete_user", DeleteUserParams(ke3))
    assert not await service.store.user_exists(alice.user_id)
    with pytest.raises(NotFound):
        await call(
            service,
            "fetch_user_profile",
            alice.request("fetch_user_profile", UserProfileParams(alice.user_id), credential=False),
        )
    creds = AsCredentialsResponse.decode(await call(service, "get_as_credentials", plain_request(Empty())))
    assert alice.cred.fingerprint() in creds.revoked_certs


async def test_password_guessing_is_throttled_per_user(db: Database) -> None:
    from phx.auth.core import LOGIN_FAILURE_WINDOW, MAX_LOGIN_FAILURES
    from phx.errors import RateLimited

    clock = FakeClock()
    service = await make_service(db, clock)
    alice = await Client.new(service).register(tokens=0, login=True)

    async def guess() -> None:
        device = Client.new(service, alice.user_id)
        login = client_login_start(b"guess")
        params = InitClientAdditionParams(await device.csr(), login.ke1)
        await call(service, "init_client_addition", plain_request(params))
        finish = FinishClientAdditionParams(device.client_id, bytes(64), device.queue_pk, device.ratchet_key)
        with pytest.raises(OpaqueAuthError):
            await call(service, "finish_client_addition", plain_request(finish))

    for _ in range(MAX_LOGIN_FAILURES):
        await guess()
    with pytest.raises(RateLimited) as info:
        await guess()
    assert 0 < info.value.retry_after <= LOGIN_FAILURE_WINDOW
    # Even the right password waits for the window to pass; then it works and clears the count.
    with pytest.raises(RateLimited):
        await add_client(alice, alice.password)
    clock.now += LOGIN_FAILURE_WINDOW
    await add_client(alice, alice.password)
    async with db.transaction(readonly=True) as conn:
        assert await conn.fetchval("SELECT COUNT(*) FROM as_login_failures") == 0
