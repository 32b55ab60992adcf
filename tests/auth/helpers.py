"""A small AS client for the tests (the client library will do this for real) and service builders."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field, replace

from phx.auth import AsCredentialSet, AsService
from phx.auth.client import alias_request, client_request, plain_request, sign_connection_package
from phx.auth.messages import (
    Alias,
    AsCredentialsResponse,
    AsRequest,
    ConnectionPackage,
    ConnectionPackagePayload,
    Empty,
    FinishUserRegistrationParams,
    Initiate2FaAuthenticationParams,
    Initiate2FaAuthenticationResponse,
    InitUserRegistrationParams,
    InitUserRegistrationResponse,
    RegisterAlias,
    RequestToken,
    TokenKeysResponse,
    TokenResponse,
)
from phx.auth.opaque import (
    client_login_finish,
    client_login_start,
    client_registration_finish,
    client_registration_start,
    load_server_setup,
    new_server_setup,
    server_registration_start,
)
from phx.codec import Struct
from phx.config import AsConfig
from phx.credentials import (
    DEFAULT_CREDENTIAL_CIPHERSUITE,
    LABEL_CLIENT_PAYLOAD,
    ClientCredential,
    ClientCsr,
    CredentialError,
    CredentialFingerprint,
    ExpirationData,
    IntermediateAsCredential,
    create_intermediate_credential,
    issue_client_credential,
    new_as_credential,
    new_client_csr,
)
from phx.crypto import SUITE_1
from phx.identifiers import ClientId, Fqdn, UserId
from phx.privacypass import finalize_tokens, phoenix_challenge, request_tokens
from phx.queues import QueueReader
from phx.storage import Database, migrate

cs = SUITE_1
DOMAIN = Fqdn("example.com")
DAY = 86_400
T0 = 1_700_000_000 - 1_700_000_000 % DAY + 3_600  # an hour into a token time frame
PASSWORD = b"correct horse battery staple"


_STOCK_RECORD: list[bytes] = []


def stock_record() -> bytes:
    if not _STOCK_RECORD:
        setup = load_server_setup(new_server_setup())
        reg = client_registration_start(PASSWORD)
        response = server_registration_start(setup, reg.request, UserId.random(DOMAIN))
        _STOCK_RECORD.append(client_registration_finish(PASSWORD, reg, response))
    return _STOCK_RECORD[0]


class FakeClock:
    def __init__(self, now: int = T0) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


async def make_service(
    db: Database, clock: FakeClock | None = None, *, config: AsConfig | None = None, **kwargs: object
) -> AsService:
    await migrate(db, "as")
    service = AsService(db, DOMAIN, config or AsConfig(), clock=clock or FakeClock(), **kwargs)  # type: ignore[arg-type]
    await service.keys.ensure(service.clock())
    return service


async def call(service: AsService, op: str, request: AsRequest, now: int | None = None) -> bytes:
    return await service.process(op, request.encode(), service.clock() if now is None else now)


async def newest_intermediate(service: AsService, now: int) -> IntermediateAsCredential:
    body = await call(service, "get_as_credentials", plain_request(Empty()), now)
    creds = AsCredentialsResponse.decode(body)
    return max(creds.as_intermediate_credentials, key=lambda c: c.expiration_data.not_after)


def queue_keys() -> tuple[bytes, bytes, bytes]:
    """(HPKE private key, public key, initial ratchet key)."""
    sk, pk = cs.generate_hpke_key_pair()
    return sk, pk, os.urandom(cs.nh)


@dataclass
class Client:
    """One client of one user with every private key, talking to one AsService in-process."""

    service: AsService
    client_id: ClientId
    password: bytes = PASSWORD
    signing_key: bytes = b""
    credential: ClientCredential | None = None
    queue_sk: bytes = b""
    queue_pk: bytes = b""
    ratchet_key: bytes = b""
    tokens: list[bytes] = field(default_factory=list)
    reader: QueueReader | None = None
    connection_sk: bytes = b""

    @classmethod
    def new(cls, service: AsService, user_id: UserId | None = None) -> Client:
        user = user_id or UserId.random(DOMAIN)
        sk, pk, rk = queue_keys()
        csk, _ = cs.generate_hpke_key_pair()
        return cls(
            service, ClientId.random(user), queue_sk=sk, queue_pk=pk, ratchet_key=rk, connection_sk=csk
        )

    @property
    def user_id(self) -> UserId:
        return self.client_id.user_id

    @property
    def cred(self) -> ClientCredential:
        assert self.credential is not None
        return self.credential

    def now(self) -> int:
        return self.service.clock()

    async def csr(self, *, lifetime: int = 30 * DAY, not_before: int | None = None) -> ClientCsr:
        inter = await newest_intermediate(self.service, self.now())
        start = self.now() if not_before is None else not_before
        csr, key = new_client_csr(self.client_id, inter, ExpirationData(start, start + lifetime))
        self.signing_key = key
        return csr

    def request(
        self, op: str, params: Struct, *, now: int | None = None, token: bool = True, credential: bool = True
    ) -> AsRequest:
        t = self.token() if token else None
        if not credential:
            return plain_request(params, token=t)
        return client_request(
            op,
            params,
            as_domain=self.service.domain,
            credential=self.cred,
            private_key=self.signing_key,
            now=self.now() if now is None else now,
            token=t,
        )

    async def call(self, op: str, params: Struct, **kwargs: object) -> bytes:
        return await call(self.service, op, self.request(op, params, **kwargs))  # type: ignore[arg-type]

    def token(self) -> bytes:
        assert self.tokens, "no Privacy Pass tokens left: call fetch_tokens first"
        return self.tokens.pop()

    # --- flows -------------------------------------------------------------------------------------------

    def package(self, *, lifetime: int = 7 * DAY) -> ConnectionPackage:
        _, pk = cs.generate_hpke_key_pair()
        end = min(self.now() + lifetime, self.cred.expiration_data.not_after)
        payload = ConnectionPackagePayload(pk, ExpirationData(self.now(), end))
        return sign_connection_package(payload, self.cred, self.signing_key)

    async def init_registration(
        self, csr: ClientCsr | None = None
    ) -> tuple[InitUserRegistrationResponse, object]:
        csr = csr or await self.csr()
        reg = client_registration_start(self.password)
        params = InitUserRegistrationParams(csr, reg.request)
        resp = InitUserRegistrationResponse.decode(
            await call(self.service, "init_user_registration", plain_request(params))
        )
        self.credential = resp.client_credential
        return resp, reg

    async def register(
        self, *, packages: int = 2, tokens: int = 10, lifetime: int = 30 * DAY, login: bool = False
    ) -> Client:
        """Register through init/finish. Unless ``login`` (the test logs in with the password later), the
        OPAQUE record is a stock one made once for another user id: valid in form, so the AS accepts it,
        but no login will succeed, and the test skips the client-side Argon2 (~50 ms)."""
        resp, reg = await self.init_registration(await self.csr(lifetime=lifetime))
        if login:
            record = client_registration_finish(self.password, reg, resp.opaque_registration_response)  # type: ignore[arg-type]
        else:
            record = stock_record()
        params = FinishUserRegistrationParams(
            self.queue_pk, self.ratchet_key, tuple(self.package() for _ in range(packages)), record
        )
        await self.call("finish_user_registration", params, token=False)
        self.reader = QueueReader(cs, [self.queue_sk], ratchet_key=self.ratchet_key)
        if tokens:
            await self.fetch_tokens(tokens)
        return self

    async def csr_with_signer(self, signer: CredentialFingerprint) -> ClientCsr:
        """A correctly self-signed CSR that names ``signer`` as the intermediate to sign it."""
        csr = await self.csr()
        payload = replace(csr.payload, signer_fingerprint=signer)
        sig = payload.credential_ciphersuite.sign(self.signing_key, LABEL_CLIENT_PAYLOAD, payload.encode())
        return ClientCsr(payload, sig)

    async def fetch_tokens(self, n: int) -> None:
        keys = TokenKeysResponse.decode(await call(self.service, "get_token_keys", plain_request(Empty())))
        key = keys.key_for(self.client_id.domain, self.service.domain)
        pending = request_tokens(key, phoenix_challenge(self.service.domain), n)
        body = await self.call("request_tokens", RequestToken(pending.request), token=False)
        response = TokenResponse.decode(body).token_response
        self.tokens.extend(t.encode() for t in finalize_tokens(pending, response))

    async def second_factor(self, password: bytes | None = None) -> bytes:
        """Run initiate_2fa_authentication and return the KE3 for the following Client 2FA call."""
        login = client_login_start(password or self.password)
        body = await self.call("initiate_2fa_authentication", Initiate2FaAuthenticationParams(login.ke1))
        ke2 = Initiate2FaAuthenticationResponse.decode(body).opaque_ke2
        return client_login_finish(password or self.password, login, ke2)


@dataclass
class AliasOwner:
    service: AsService
    alias: Alias
    auth_sk: bytes
    auth_pk: bytes
    queue_sk: bytes
    queue_pk: bytes
    ratchet_key: bytes

    @classmethod
    def new(cls, service: AsService, name: str | None = None) -> AliasOwner:
        auth_sk, auth_pk = DEFAULT_CREDENTIAL_CIPHERSUITE.generate_key_pair()
        sk, pk, rk = queue_keys()
        return cls(service, Alias(name or f"alias-{uuid.uuid4().hex[:8]}"), auth_sk, auth_pk, sk, pk, rk)

    def register_params(self) -> RegisterAlias:
        return RegisterAlias(self.alias, self.auth_pk, self.queue_pk, self.ratchet_key)

    def request(self, op: str, params: Struct, token: bytes | None, *, now: int | None = None) -> AsRequest:
        return alias_request(
            op,
            params,
            as_domain=self.service.domain,
            alias_private_key=self.auth_sk,
            now=self.service.clock() if now is None else now,
            token=token,
        )


def short_config(**changes: object) -> AsConfig:
    return replace(AsConfig(), **changes)  # type: ignore[arg-type]


class RemoteAs:
    """Another homeserver's AS key material, and an :class:`AsCredentialSource` serving it."""

    def __init__(self, domain: Fqdn, now: int) -> None:
        self.domain = domain
        self.root, self.root_key = new_as_credential(domain, ExpirationData(now - DAY, now + 3650 * DAY))
        self.inter, self.inter_key = create_intermediate_credential(
            self.root, self.root_key, ExpirationData(now - DAY, now + 700 * DAY), now=now
        )
        self.revoked: set[CredentialFingerprint] = set()
        self.lookups = 0

    def client(self, now: int, user_id: UserId | None = None) -> tuple[ClientCredential, bytes]:
        cid = ClientId.random(user_id or UserId.random(self.domain))
        csr, key = new_client_csr(cid, self.inter, ExpirationData(now - 60, now + 30 * DAY))
        cred = issue_client_credential(
            csr,
            intermediate=self.inter,
            intermediate_private_key=self.inter_key,
            as_credential=self.root,
            now=now,
        )
        return cred, key

    def as_client(self, service: AsService, user_id: UserId | None = None) -> Client:
        cred, key = self.client(service.clock(), user_id)
        return Client(service, cred.client_id, signing_key=key, credential=cred)

    async def credentials_for(self, domain: Fqdn, now: int) -> AsCredentialSet:
        self.lookups += 1
        if domain != self.domain:
            raise CredentialError(f"no AS credentials known for {domain}")
        return AsCredentialSet(domain, (self.root,), (self.inter,), frozenset(self.revoked))
