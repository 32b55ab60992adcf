"""AS key material: bootstrap, automatic and operator rotation, revocation, publication."""

from __future__ import annotations

import asyncio

import pytest

from phx.auth.client import plain_request
from phx.auth.keys import AsKeyMaterial, AsKeyStore, Rotation, plan_rotation
from phx.auth.messages import AsCredentialsResponse, Empty, UpdateUserProfileParams
from phx.config import AsConfig
from phx.credentials import (
    CredentialError,
    CsrError,
    verify_client_credential,
    verify_intermediate_credential,
)
from phx.identifiers import Fqdn
from phx.storage import Database, migrate
from tests.auth.helpers import DAY, DOMAIN, Client, FakeClock, call, make_service

CONFIG = AsConfig()
T0 = FakeClock().now


async def published(service_clock: FakeClock, db: Database, service: object) -> AsCredentialsResponse:
    from phx.auth import AsService

    assert isinstance(service, AsService)
    return AsCredentialsResponse.decode(
        await call(service, "get_as_credentials", plain_request(Empty()), service_clock.now)
    )


def test_plan_rotation_thresholds() -> None:
    empty = AsKeyMaterial(DOMAIN, (), (), frozenset())
    assert plan_rotation(empty, T0, CONFIG) == [Rotation.NEW_ROOT, Rotation.NEW_INTERMEDIATE]


async def test_bootstrap_is_idempotent_and_safe_across_processes(db: Database) -> None:
    await migrate(db, "as")
    stores = [AsKeyStore(db, DOMAIN, CONFIG) for _ in range(3)]
    results = await asyncio.gather(*(s.ensure(T0) for s in stores))
    assert len({len(m.roots) for m in results}) == 1
    material = await stores[0].ensure(T0 + 10)
    assert len(material.roots) == 1 and len(material.intermediates) == 1
    assert plan_rotation(material, T0, CONFIG) == []
    root = material.roots[0].credential
    assert root.domain == DOMAIN
    assert root.expiration_data.lifetime == CONFIG.as_credential_lifetime
    inter = material.intermediates[0].credential
    assert verify_intermediate_credential(inter, as_credentials=(root,), now=T0, domain=DOMAIN) == root
    # Another domain's credentials are not this store's business.
    with pytest.raises(CredentialError):
        await stores[0].credentials_for(Fqdn("other.example"), T0)


async def test_intermediates_rotate_and_old_ones_stay_valid(db: Database) -> None:
    clock = FakeClock()
    service = await make_service(db, clock)
    first = (await published(clock, db, service)).as_intermediate_credentials
    assert len(first) == 1
    # Shortly before half the intermediate lifetime nothing rotates yet; alice registers.
    clock.now += CONFIG.intermediate_credential_lifetime // 2 - 10 * DAY
    await service.housekeeping(clock.now)
    assert len((await published(clock, db, service)).as_intermediate_credentials) == 1
    alice = await Client.new(service).register()
    # Past half the intermediate lifetime, housekeeping publishes a new intermediate.
    clock.now += 11 * DAY
    await service.housekeeping(clock.now)
    creds = await published(clock, db, service)
    assert len(creds.as_intermediate_credentials) == 2
    newest = max(creds.as_intermediate_credentials, key=lambda c: c.expiration_data.not_after)
    assert newest.expiration_data.not_before == clock.now
    # Alice's credential (under the old intermediate) still verifies and still authenticates.
    verify_client_credential(
        alice.cred,
        intermediates=creds.as_intermediate_credentials,
        as_credentials=creds.as_credentials,
        now=clock.now,
    )
    alice.tokens.clear()
    await alice.fetch_tokens(1)
    # A new client picks the newest intermediate.
    bob = await Client.new(service).register(tokens=0)
    assert bob.cred.payload.signer_fingerprint == newest.fingerprint()
    # Once the old intermediate has expired it is no longer published.
    clock.now = first[0].expiration_data.not_after + 1
    await service.housekeeping(clock.now)
    fps = {c.fingerprint() for c in (await published(clock, db, service)).as_intermediate_credentials}
    assert first[0].fingerprint() not in fps


async def test_root_rotation_near_expiry(db: Database) -> None:
    clock = FakeClock()
    service = await make_service(db, clock)
    (old_root,) = (await published(clock, db, service)).as_credentials
    clock.now = old_root.expiration_data.not_after - CONFIG.intermediate_credential_lifetime + 1
    await service.housekeeping(clock.now)
    roots = (await published(clock, db, service)).as_credentials
    assert len(roots) == 2 and old_root in roots
    material = await service.keys.material(clock.now)
    signing = material.signing_root(clock.now)
    assert signing is not None and signing.credential != old_root
    newest = material.newest_intermediate(signing, clock.now)
    assert newest is not None
    assert newest.validity.lifetime == CONFIG.intermediate_credential_lifetime


async def test_operator_rotation_and_revocation(db: Database) -> None:
    clock = FakeClock()
    service = await make_service(db, clock)
    alice = await Client.new(service).register()
    old = alice.cred.payload.signer_fingerprint
    new_root = await service.keys.rotate_root(clock.now)
    new_inter = await service.keys.rotate_intermediate(clock.now)
    assert new_inter.payload.signer_fingerprint == new_root.fingerprint()
    await service.keys.revoke_signing_credential(old, clock.now)
    creds = await published(clock, db, service)
    assert old in creds.revoked_certs
    assert old not in {c.fingerprint() for c in creds.as_intermediate_credentials}
    assert new_root in creds.as_credentials
    # A CSR naming the revoked intermediate is refused; alice's credential no longer authenticates.
    bob = Client.new(service)
    csr = await bob.csr()
    assert csr.payload.signer_fingerprint != old
    with pytest.raises(CsrError):
        await bob.init_registration(await bob.csr_with_signer(old))
    with pytest.raises(CredentialError):
        await alice.call("update_user_profile", UpdateUserProfileParams(b"x"))
    # Revocations are listed until the credential would have expired anyway, then purged.
    inter_expiry = max(
        e.validity.not_after
        for e in (await service.keys.material(clock.now)).intermediates
        if e.fingerprint == old
    )
    clock.now = inter_expiry + 1
    assert await service.keys.purge(clock.now) == 1
    service.keys.forget_cache()
    assert old not in (await published(clock, db, service)).revoked_certs


async def test_revoking_an_unknown_fingerprint(db: Database) -> None:
    from phx.credentials import CredentialFingerprint
    from phx.errors import NotFound

    service = await make_service(db)
    with pytest.raises(NotFound):
        await service.keys.revoke_signing_credential(CredentialFingerprint(bytes(32)), service.clock())


async def test_opaque_setup_is_created_once(db: Database) -> None:
    await migrate(db, "as")
    a, b = AsKeyStore(db, DOMAIN, CONFIG), AsKeyStore(db, DOMAIN, CONFIG)
    sa, sb = await asyncio.gather(a.opaque_setup(T0), b.opaque_setup(T0))
    assert sa.to_bytes() == sb.to_bytes()
    assert len(DAY.to_bytes(4, "big")) == 4
