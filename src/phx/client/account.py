"""Registration (book: clients/creation.md), profile, KeyPackage publication, account deletion.

Registration runs in stages, each persisted when it completes, so ``register`` run again after a failure
continues where it stopped: AS registration (CSR + OPAQUE, connection packages, the direct queue) →
profile and QS user record → AddPackages (with a last-resort one).
"""

from __future__ import annotations

import os
import uuid

from phx.auth.client import sign_connection_package
from phx.auth.messages import (
    ConnectionPackage,
    ConnectionPackagePayload,
    FinishUserRegistrationParams,
    InitUserRegistrationParams,
    UploadUserIdPackages,
)
from phx.auth.opaque import (
    client_login_finish,
    client_login_start,
    client_registration_finish,
    client_registration_start,
)
from phx.credentials import (
    ClientCredential,
    ExpirationData,
    new_client_csr,
    verify_intermediate_credential,
)
from phx.errors import PhxError, ValidationError
from phx.identifiers import ClientId
from phx.queues import QueueReader
from phx.queuing.messages import (
    CreateUserRecordParams,
    DeleteUserRecordParams,
    PublishKeyPackagesParams,
)

from .api import ClientAuth
from .session import ClientError, Session, parse_user
from .state import STEP_AS_DONE, STEP_NEW, STEP_QS_DONE, STEP_READY, Identity
from .transport import ServiceError
from .wire import CS, UserProfile, make_add_package, new_secret

__all__ = [
    "PACKAGES_LEFT",
    "delete_account",
    "packages_left",
    "publish_key_packages",
    "register",
    "upload_connection_packages",
    "whoami",
]

DAY = 86_400
CREDENTIAL_LIFETIME = 180 * DAY
CONNECTION_PACKAGE_LIFETIME = 30 * DAY
CONNECTION_PACKAGES = 5
ADD_PACKAGES = 5


def _signing_key() -> bytes:
    return CS.generate_signature_key_pair()[0]


def _hpke_key() -> bytes:
    return CS.generate_hpke_key_pair()[0]


def _new_identity(name: str, client_id: ClientId) -> Identity:
    return Identity(
        STEP_NEW, name, client_id, _signing_key(), None, _hpke_key(), _signing_key(), _signing_key(),
        _hpke_key(), None, None, new_secret(), new_secret(), new_secret(),
    )  # fmt: skip


async def register(s: Session, address: str, password: bytes) -> Identity:
    """Register ``name@domain`` (or continue an interrupted registration of it)."""
    user_id, name = parse_user(address)
    if name is None:
        raise ClientError("register takes a user name (USER@DOMAIN), not a user id")
    if not password:
        raise ClientError("the password is empty")
    identity = s.state.identity()
    if identity is not None and identity.user_id != user_id:
        raise ClientError(f"this home belongs to {s.label(identity.user_id)}; use another --home")
    if identity is not None and identity.step == STEP_READY:
        raise ClientError(f"{address} is already registered in this home")
    if identity is None:
        identity = _new_identity(name, ClientId(user_id, uuid.uuid4()))
        with s.state.tx() as c:
            s.state.put_identity(c, identity)
    if identity.step == STEP_NEW:
        identity = await _register_as(s, identity, password)
    if identity.step == STEP_AS_DONE:
        identity = await _register_qs(s, identity)
    if identity.step == STEP_QS_DONE:
        await publish_key_packages(s)
        with s.state.tx() as c:
            identity = s.update_identity(c, step=STEP_READY)
    return identity


async def _register_as(s: Session, identity: Identity, password: bytes) -> Identity:
    domain = identity.client_id.domain
    now = s.clock()
    if identity.credential is not None and await _finished_before(s, identity):
        with s.state.tx() as c:
            return s.update_identity(c, step=STEP_AS_DONE)
    creds = await s.creds.credentials(domain, refresh=True)
    usable = []
    for inter in creds.intermediates:
        try:
            verify_intermediate_credential(
                inter, as_credentials=creds.as_credentials, now=now, revoked=creds.revoked, domain=domain
            )
        except PhxError:
            continue
        usable.append(inter)
    if not usable:
        raise ClientError(f"as.{domain} publishes no valid intermediate credential")
    signer = max(usable, key=lambda c: c.expiration_data.not_after)
    validity = signer.expiration_data
    start, end = max(now - 60, validity.not_before), min(now + CREDENTIAL_LIFETIME, validity.not_after)
    csr, _ = new_client_csr(
        identity.client_id, signer, ExpirationData(start, end), private_key=identity.signing_key
    )
    reg = client_registration_start(password)
    resp = await s.api.init_user_registration(domain, InitUserRegistrationParams(csr, reg.request))
    credential = resp.client_credential
    if credential.signed_payload != csr:
        raise ValidationError(f"as.{domain} returned a credential for another CSR")
    await s.creds.verify_client(credential)
    record = client_registration_finish(password, reg, resp.opaque_registration_response)
    ratchet_key = os.urandom(CS.nh)
    packages, keys = _connection_packages(identity, credential, now)
    queue_pk = CS.hpke_public_key(identity.as_queue_key)
    params = FinishUserRegistrationParams(queue_pk, ratchet_key, tuple(packages), record)
    # Keys first: if the answer to finish is lost, the next run can find out that the AS took it.
    with s.state.tx() as c:
        identity = s.update_identity(c, credential=credential)
        s.state.put(
            c, "as_reader", QueueReader(CS, [identity.as_queue_key], ratchet_key=ratchet_key).to_bytes()
        )
        for pk, sk, not_after in keys:
            s.state.add_connection_key(c, pk, sk, not_after)
    await s.api.finish_user_registration(domain, params, ClientAuth(credential, identity.signing_key))
    with s.state.tx() as c:
        return s.update_identity(c, step=STEP_AS_DONE)


async def _finished_before(s: Session, identity: Identity) -> bool:
    """Whether an earlier finish_user_registration went through (its answer may have been lost)."""
    try:
        await s.tokens.refill(identity.client_id.domain)
    except ServiceError as e:
        if e.status in (401, 403, 404):
            return False
        raise
    return True


def _connection_packages(
    identity: Identity, credential: ClientCredential, now: int, count: int = CONNECTION_PACKAGES
) -> tuple[list[ConnectionPackage], list[tuple[bytes, bytes, int]]]:
    end = min(now + CONNECTION_PACKAGE_LIFETIME, credential.expiration_data.not_after)
    packages, keys = [], []
    for _ in range(count):
        sk, pk = CS.generate_hpke_key_pair()
        payload = ConnectionPackagePayload(
            pk, ExpirationData(max(now - 60, credential.expiration_data.not_before), end)
        )
        packages.append(sign_connection_package(payload, credential, identity.signing_key))
        keys.append((pk, sk, end))
    return packages, keys


async def upload_connection_packages(s: Session, count: int = CONNECTION_PACKAGES) -> None:
    me = s.me()
    packages, keys = _connection_packages(me, me.cred, s.clock(), count)
    with s.state.tx() as c:
        for pk, sk, not_after in keys:
            s.state.add_connection_key(c, pk, sk, not_after)
    await s.api.upload_connection_packages(
        me.client_id.domain, UploadUserIdPackages(tuple(packages)), s.client_auth()
    )
    with s.state.tx() as c:
        s.state.put(c, PACKAGES_LEFT, str(packages_left(s) + count).encode())


#: Meta key: how many of our connection packages the AS probably still holds (each request uses one).
PACKAGES_LEFT = "connection_packages_left"


def packages_left(s: Session) -> int:
    raw = s.state.get(PACKAGES_LEFT)
    return CONNECTION_PACKAGES if raw is None else int(raw)


async def _register_qs(s: Session, identity: Identity) -> Identity:
    domain = identity.client_id.domain
    await s.api.update_profile(domain, UserProfile(identity.user_name).encode(), s.client_auth())
    for attempt in range(2):
        params = CreateUserRecordParams(
            CS.signature_public_key(identity.qs_user_key),
            identity.friendship_token,
            CS.signature_public_key(identity.qs_client_key),
            CS.hpke_public_key(identity.qs_queue_key),
        )
        try:
            resp = await s.api.create_user_record(domain, params)
            break
        except ServiceError as e:
            # An earlier attempt whose answer was lost holds this friendship token: start over with new
            # record keys (the orphaned record expires on the QS).
            if e.code != "conflict" or attempt:
                raise
            with s.state.tx() as c:
                identity = s.update_identity(
                    c, friendship_token=new_secret(), qs_user_key=CS.generate_signature_key_pair()[0]
                )
    with s.state.tx() as c:
        s.state.put(c, "qs_reader", QueueReader(CS, [identity.qs_queue_key]).to_bytes())
        return s.update_identity(c, qs_uid=resp.qs_uid, qs_cid=resp.qs_cid, step=STEP_QS_DONE)


async def publish_key_packages(s: Session, count: int = ADD_PACKAGES) -> None:
    """Publish ``count`` AddPackages and a last-resort one (replacing what the QS held)."""
    me = s.me()
    now = s.clock()
    items = []
    for i in range(count + 1):
        items.append(
            make_add_package(
                me.cred,
                me.signing_key,
                me.friendship_key,
                await s.queue_config(),
                now,
                last_resort=i == count,
            )
        )
    # Private keys first: a Welcome may arrive for any package the QS accepted.
    with s.state.tx() as c:
        for _, bundle, sig_key in items:
            s.state.add_key_package(c, bundle.ref(), bundle.to_bytes(), sig_key, bundle.last_resort, now)
        s.state.prune_key_packages(c, now - 90 * DAY)
    assert me.qs_cid is not None
    params = PublishKeyPackagesParams(me.qs_cid, tuple(ap for ap, _, _ in items))
    await s.api.publish_key_packages(me.client_id.domain, params, s.qs_auth())


def whoami(s: Session) -> dict[str, object]:
    identity = s.state.identity()
    if identity is None:
        raise ClientError("this client is not registered (run: phx client register USER@DOMAIN)")
    out: dict[str, object] = {
        "user": f"{identity.user_name}@{identity.client_id.domain}",
        "user_id": str(identity.user_id),
        "client_id": str(identity.client_id),
        "registered": identity.step == STEP_READY,
    }
    if identity.credential is not None:
        cred = identity.credential
        out["fingerprint"] = cred.fingerprint().hex()
        out["intermediate_fingerprint"] = cred.payload.signer_fingerprint.hex()
        out["valid_until"] = cred.expiration_data.not_after
        cached = s.state.as_credentials(identity.client_id.domain.value)
        if cached is not None:
            from phx.auth.messages import AsCredentialsResponse

            roots = AsCredentialsResponse.decode(cached[0]).as_credentials
            out["as_fingerprints"] = [r.fingerprint().hex() for r in roots]
    return out


async def delete_account(s: Session, password: bytes) -> None:
    """Leave every group, then delete the QS user record and the AS account (Client 2FA), then wipe the
    local state. A wrong password stops before anything is deleted."""
    from .groups import leave_all

    me = s.me()
    domain = me.client_id.domain
    auth = s.client_auth()
    login = client_login_start(password)
    ke2 = await s.api.initiate_2fa(domain, login.ke1, auth)
    ke3 = client_login_finish(password, login, ke2)
    await leave_all(s)
    if me.qs_uid is not None:
        try:
            await s.api.delete_user_record(domain, DeleteUserRecordParams(me.qs_uid), s.qs_auth(user=True))
        except ServiceError as e:
            if e.code != "not_found":
                raise
    await s.api.delete_user(domain, ke3, auth)
    with s.state.tx() as c:
        for table in (
            "meta",
            "tokens",
            "connection_keys",
            "key_packages",
            "contacts",
            "requests",
            "groups",
            "members",
        ):
            c.execute(f"DELETE FROM {table}")
