"""The Authentication Service: decode → authenticate → rules (:mod:`.core`) → store → encode.

Every operation takes an encoded :class:`~.messages.AsRequest` and returns the encoded response struct
(empty for operations without one). The operation table and its authentication modes are in
:mod:`.core`; here each request goes through, in order:

1. the Privacy Pass token, when the operation needs one (redeemed before any other work, so every request
   that costs the server something costs the client a token);
2. the authentication the operation asks for (Client Credential: timestamp, signature, chain up to this
   AS's root or — for token issuance only — a remote AS's via ``remote_credentials``, and for local
   clients the registered client entry; Alias auth key; the OPAQUE steps inside the handlers);
3. the handler.

Construction is explicit (no globals): a :class:`~phx.storage.Database` already migrated for ``as``, the
domain, the ``[as]`` config, a clock. :meth:`start` creates the key material if needed and runs
:meth:`housekeeping` periodically (key rotation, expiry of ephemeral entries, allowances, spent tokens,
inactive entries).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from phx.codec import Struct
from phx.config import AsConfig
from phx.credentials import ClientCredential, ClientCsr, CredentialError, issue_client_credential
from phx.crypto import SUITE_1, CipherSuite, HpkeError
from phx.errors import AuthError, Conflict, Forbidden, NotFound, TokenError, ValidationError
from phx.federation.ratelimit import DomainRamp
from phx.identifiers import ClientId, Fqdn, UserId
from phx.privacypass import IssuerKeyring, TokenClass, TokenRedeemer, phoenix_challenge
from phx.queues import QueueState, new_queue
from phx.storage import Database

from . import core, opaque
from .core import OPERATIONS, Operation
from .keys import AsCredentialSource, AsKeyMaterial, AsKeyStore
from .messages import (
    Alias,
    AliasClientsParams,
    AliasClientsResponse,
    AsCredentialsResponse,
    AsRequest,
    ConnectionPackage,
    DeleteAlias,
    DeleteClientParams,
    DeleteUserParams,
    DequeueAliasMessagesParams,
    DequeueMessagesParams,
    DequeueMessagesResponse,
    EnqueueAliasMessageParams,
    EnqueueMessageParams,
    FinishClientAdditionParams,
    FinishClientAdditionResponse,
    FinishUserRegistrationParams,
    InitClientAdditionParams,
    InitClientAdditionResponse,
    Initiate2FaAuthenticationParams,
    Initiate2FaAuthenticationResponse,
    InitUserRegistrationParams,
    InitUserRegistrationResponse,
    RegisterAlias,
    RequestToken,
    TokenKeysResponse,
    TokenResponse,
    UpdateUserProfileParams,
    UploadAliasPackages,
    UploadUserIdPackages,
    UserClientsParams,
    UserClientsResponse,
    UserProfileParams,
    UserProfileResponse,
)
from .store import (
    ALIAS_QUEUES,
    DIRECT_QUEUES,
    AsStore,
    add_client_key,
    alias_queue_id,
    direct_queue_id,
    login_key,
    register_key,
)

if TYPE_CHECKING:
    from starlette.routing import BaseRoute

__all__ = ["AsService"]

log = logging.getLogger("phx.auth")

DAY = 86_400
Handler = Callable[[Operation, AsRequest, int], Awaitable[Struct | None]]


def _wall_clock() -> int:
    return int(time.time())


class AsService:
    name = "as"

    def __init__(
        self,
        db: Database,
        domain: Fqdn,
        config: AsConfig,
        *,
        clock: Callable[[], int] = _wall_clock,
        max_clock_skew: int = 300,
        remote_credentials: AsCredentialSource | None = None,
        ratchet_rotation_interval: int = DAY,
        housekeeping_interval: float = 300.0,
        cs: CipherSuite = SUITE_1,
    ) -> None:
        self.db = db
        self.domain = domain
        self.config = config
        self.clock = clock
        self.max_clock_skew = max_clock_skew
        self.remote_credentials = remote_credentials
        self.ratchet_rotation_interval = ratchet_rotation_interval
        self.housekeeping_interval = housekeeping_interval
        self.cs = cs
        self.store = AsStore(db)
        self.keys = AsKeyStore(db, domain, config)
        self.token_keys = IssuerKeyring(db, config.token_time_frame)
        self.redeemer = TokenRedeemer(db, self.token_keys, phoenix_challenge(domain))
        # Per-frame allowance of all clients of one other homeserver, by how long we have known it.
        self.domain_ramp = DomainRamp(
            initial=config.new_domain_token_allowance,
            full=config.domain_token_allowance,
            doubling=config.domain_token_allowance_doubling,
        )
        self._task: asyncio.Task[None] | None = None
        self._touched: set[str] = set()
        self._touched_day = 0
        self._handlers: dict[str, Handler] = {name: getattr(self, f"_op_{name}") for name in OPERATIONS}

    # --- server plumbing -----------------------------------------------------------------------------

    def routes(self) -> Sequence[BaseRoute]:
        from .routes import as_routes

        return as_routes(self)

    async def start(self) -> None:
        await self.keys.ensure(self.clock())
        await self.keys.opaque_setup(self.clock())
        self._task = asyncio.create_task(self._housekeeping_loop(), name="phx-as-housekeeping")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _housekeeping_loop(self) -> None:
        while True:
            await asyncio.sleep(self.housekeeping_interval)
            try:
                await self.housekeeping(self.clock())
            except Exception:
                log.exception("AS housekeeping failed")

    async def housekeeping(self, now: int) -> dict[str, int]:
        """Rotate keys when due and drop what has expired; returns counts of what was removed."""
        await self.keys.ensure(now)
        frame = self.config.token_time_frame
        stats = await self.store.purge(
            now, epoch=now // frame, inactive_before=now - self.config.max_client_record_age
        )
        stats["spent_tokens"] = await self.redeemer.purge(now)
        stats["revocations"] = await self.keys.purge(now)
        if stats["inactive_clients"]:
            self.keys.forget_cache()
            self._touched.clear()
        return stats

    # --- dispatch ------------------------------------------------------------------------------------

    async def handle(self, operation: str, body: bytes) -> bytes:
        return await self.process(operation, body, self.clock())

    async def process(self, operation: str, body: bytes, now: int) -> bytes:
        op = OPERATIONS.get(operation)
        if op is None:
            raise NotFound(f"no AS operation {operation!r}")
        request = AsRequest.decode(body)
        if op.token:
            if request.privacy_pass_token is None:
                raise TokenError(f"{op.name} requires a Privacy Pass token")
            await self.redeemer.redeem(request.privacy_pass_token, now)
        if request.client_auth is not None and op.auth not in _CLIENT_AUTH_MODES:
            raise ValidationError(f"{op.name} takes no client authentication")
        if request.alias_auth is not None and op.auth is not core.AuthMode.ALIAS:
            raise ValidationError(f"{op.name} takes no alias authentication")
        response = await self._handlers[op.name](op, request, now)
        return b"" if response is None else response.encode()

    # --- authentication ------------------------------------------------------------------------------

    async def _client(
        self, op: Operation, request: AsRequest, now: int, *, remote: bool = False
    ) -> ClientCredential:
        """Client Credential authentication; local clients must be registered, remote ones only where
        ``remote`` (token issuance) and verified against their own AS."""
        auth = request.client_auth
        if auth is None:
            raise AuthError(f"{op.name} requires Client Credential authentication")
        cred = core.verify_client_request(
            auth,
            request.params,
            domain=self.domain,
            operation=op.name,
            now=now,
            max_age=self.config.max_auth_token_age,
            max_skew=self.max_clock_skew,
        )
        domain = cred.client_id.domain
        if domain == self.domain:
            (await self.keys.credentials_for(domain, now)).verify_client(cred, now)
            entry = await self.store.client(cred.client_id)
            if entry is None or entry.credential != cred:
                raise AuthError("this client credential is not registered with this AS")
            await self._touch(cred.client_id, now)
            return cred
        if not remote:
            raise Forbidden("only clients of this homeserver may use this operation")
        if self.remote_credentials is None:
            raise CredentialError(f"no AS credentials known for {domain}")
        (await self.remote_credentials.credentials_for(domain, now)).verify_client(cred, now)
        return cred

    async def _touch(self, client_id: ClientId, now: int) -> None:
        """Record activity once per client and day (the cache only remembers today's clients)."""
        day = now - now % DAY
        if day != self._touched_day:
            self._touched.clear()
            self._touched_day = day
        key = str(client_id)
        if key not in self._touched:
            await self.store.touch_client(client_id, now)
            self._touched.add(key)

    async def _alias(self, op: Operation, request: AsRequest, alias: Alias, now: int) -> None:
        auth = request.alias_auth
        if auth is None:
            raise AuthError(f"{op.name} requires alias authentication")
        core.check_timestamp(
            auth.timestamp, now, max_age=self.config.max_auth_token_age, max_skew=self.max_clock_skew
        )
        key = await self.store.alias_auth_key(alias)
        if key is None:
            raise NotFound("alias is not registered")
        core.verify_alias_request(
            auth,
            request.params,
            key,
            domain=self.domain,
            operation=op.name,
            now=now,
            max_age=self.config.max_auth_token_age,
            max_skew=self.max_clock_skew,
        )
        await self.store.touch_alias(alias, now)

    async def _material(self, now: int) -> AsKeyMaterial:
        material = await self.keys.material(now)
        if material.signing_root(now) is None:
            material = await self.keys.ensure(now)
        return material

    async def _issue(self, csr: ClientCsr, now: int) -> ClientCredential:
        core.check_csr(
            csr,
            domain=self.domain,
            now=now,
            max_skew=self.max_clock_skew,
            max_lifetime=self.config.client_credential_max_lifetime,
        )
        inter, root = (await self._material(now)).signer_for(csr.payload.signer_fingerprint, now)
        assert inter.private_key is not None
        return issue_client_credential(
            csr,
            intermediate=inter.credential,
            intermediate_private_key=inter.private_key,
            as_credential=root.credential,
            now=now,
            max_lifetime=self.config.client_credential_max_lifetime,
        )

    def _new_queue(self, encryption_key: bytes, ratchet_key: bytes, now: int) -> QueueState:
        core.check_queue_keys(encryption_key, ratchet_key)
        try:
            # A trial seal: a key that cannot be sealed to would make every later key rotation fail, i.e.
            # every sender's enqueue; refuse it now, from its owner.
            self.cs.hpke.seal(encryption_key, b"phx queue key check", b"", b"")
        except (HpkeError, ValueError):
            raise ValidationError("queue encryption key is not a usable HPKE public key") from None
        state, items = new_queue(self.cs, encryption_key, now, ratchet_key=ratchet_key)
        assert not items
        return state

    def _local_user(self, user_id: UserId) -> None:
        if user_id.as_domain != self.domain:
            raise NotFound(f"{user_id} is not a user of this homeserver")

    # --- registration, client addition, deletion -----------------------------------------------------

    async def _op_init_user_registration(self, op: Operation, request: AsRequest, now: int) -> Struct:
        p = InitUserRegistrationParams.decode(request.params)
        user_id = p.client_csr.payload.client_id.user_id
        credential = await self._issue(p.client_csr, now)
        if await self.store.user_exists(user_id):
            raise Conflict("user id already exists")
        setup = await self.keys.opaque_setup(now)
        response = opaque.server_registration_start(setup, p.opaque_registration_request, user_id)
        await self.store.put_pending(
            register_key(user_id),
            client_credential=credential,
            expires_at=now + self.config.opaque_state_expiry,
            now=now,
            keep_public_key=True,
        )
        return InitUserRegistrationResponse(credential, response)

    async def _op_finish_user_registration(self, op: Operation, request: AsRequest, now: int) -> None:
        auth = request.client_auth
        if auth is None:
            raise AuthError("finishing a registration requires the new client credential's signature")
        cred = core.verify_client_request(
            auth,
            request.params,
            domain=self.domain,
            operation=op.name,
            now=now,
            max_age=self.config.max_auth_token_age,
            max_skew=self.max_clock_skew,
        )
        user_id = cred.client_id.user_id
        pending = await self.store.get_pending(register_key(user_id), now)
        if pending is None or pending.client_credential != cred:
            raise AuthError("no pending registration for this client credential (expired?)")
        (await self.keys.credentials_for(self.domain, now)).verify_client(cred, now)
        p = FinishUserRegistrationParams.decode(request.params)
        queue = self._new_queue(p.queue_encryption_key, p.initial_queue_ratchet_key, now)
        record = opaque.server_registration_finish(p.opaque_registration_record)
        self._check_packages(p.connection_packages, cred, now)
        await self.store.create_user(
            cred, opaque_record=record, packages=p.connection_packages, queue=queue, now=now
        )
        return None

    async def _op_initiate_2fa_authentication(self, op: Operation, request: AsRequest, now: int) -> Struct:
        cred = await self._client(op, request, now)
        p = Initiate2FaAuthenticationParams.decode(request.params)
        ke2, state = await self._login_start(cred.client_id.user_id, p.opaque_ke1, now)
        await self.store.put_pending(
            login_key(cred.client_id),
            server_state=state,
            expires_at=now + self.config.opaque_state_expiry,
            now=now,
        )
        return Initiate2FaAuthenticationResponse(ke2)

    async def _login_start(self, user_id: UserId, ke1: bytes, now: int) -> tuple[bytes, bytes]:
        password_file = await self.store.password_file(user_id)
        if password_file is None:
            raise NotFound("user does not exist")
        await self.store.check_login_allowed(user_id, now)
        return opaque.server_login_start(await self.keys.opaque_setup(now), password_file, ke1, user_id)

    async def _login_finish(self, user_id: UserId, state: bytes, ke3: bytes, now: int) -> None:
        """Check KE3; failures count towards the user's password-guessing throttle."""
        try:
            opaque.server_login_finish(state, ke3)
        except opaque.OpaqueAuthError:
            await self.store.record_login_failure(user_id, now)
            raise
        await self.store.clear_login_failures(user_id)

    async def _second_factor(self, client_id: ClientId, ke3: bytes, now: int) -> None:
        """Client 2FA: the KE3 of a login started with initiate_2fa_authentication (used up either way)."""
        state = await self.store.take_login_state(login_key(client_id), now)
        if state is None:
            raise AuthError("no 2FA login in progress for this client (initiate_2fa_authentication first)")
        await self._login_finish(client_id.user_id, state, ke3, now)

    async def _op_delete_user(self, op: Operation, request: AsRequest, now: int) -> None:
        cred = await self._client(op, request, now)
        p = DeleteUserParams.decode(request.params)
        await self._second_factor(cred.client_id, p.opaque_ke3, now)
        await self.store.delete_user(cred.client_id.user_id, now)
        self.keys.forget_cache()
        return None

    async def _op_delete_client(self, op: Operation, request: AsRequest, now: int) -> None:
        cred = await self._client(op, request, now)
        p = DeleteClientParams.decode(request.params)
        if p.client_id.user_id != cred.client_id.user_id:
            raise Forbidden("a client can only remove clients of its own user")
        await self._second_factor(cred.client_id, p.opaque_ke3, now)
        await self.store.delete_client(p.client_id, now)
        self._touched.discard(str(p.client_id))
        self.keys.forget_cache()
        return None

    async def _op_init_client_addition(self, op: Operation, request: AsRequest, now: int) -> Struct:
        p = InitClientAdditionParams.decode(request.params)
        csr = p.client_csr
        client_id = csr.payload.client_id
        # Everything about the CSR is checked now, so a bad one fails before a password round trip.
        await self._issue(csr, now)
        if await self.store.client(client_id) is not None:
            raise Conflict("client id already exists")
        ke2, state = await self._login_start(client_id.user_id, p.opaque_ke1, now)
        await self.store.put_pending(
            add_client_key(client_id),
            client_csr=csr.encode(),
            server_state=state,
            expires_at=now + self.config.opaque_state_expiry,
            now=now,
        )
        return InitClientAdditionResponse(ke2)

    async def _op_finish_client_addition(self, op: Operation, request: AsRequest, now: int) -> Struct:
        p = FinishClientAdditionParams.decode(request.params)
        pending = await self.store.take_pending(add_client_key(p.client_id), now)
        if pending is None or pending.server_state is None or pending.client_csr is None:
            raise AuthError("no client addition in progress for this client id (expired?)")
        await self._login_finish(p.client_id.user_id, pending.server_state, p.opaque_ke3, now)
        credential = await self._issue(ClientCsr.decode(pending.client_csr), now)
        queue = self._new_queue(p.queue_encryption_key, p.initial_queue_ratchet_key, now)
        await self.store.add_client(credential, queue=queue, now=now)
        return FinishClientAdditionResponse(credential)

    # --- profiles ------------------------------------------------------------------------------------

    async def _op_update_user_profile(self, op: Operation, request: AsRequest, now: int) -> None:
        cred = await self._client(op, request, now)
        p = UpdateUserProfileParams.decode(request.params)
        if len(p.new_user_profile) > core.MAX_USER_PROFILE:
            raise ValidationError(f"user profile larger than {core.MAX_USER_PROFILE} bytes")
        await self.store.set_profile(cred.client_id.user_id, p.new_user_profile)
        return None

    async def _op_fetch_user_profile(self, op: Operation, request: AsRequest, now: int) -> Struct:
        p = UserProfileParams.decode(request.params)
        self._local_user(p.user_id)
        profile = await self.store.profile(p.user_id)
        if profile is None:
            raise NotFound("user does not exist")
        return UserProfileResponse(profile)

    # --- connection packages -------------------------------------------------------------------------

    def _check_packages(
        self, packages: Sequence[ConnectionPackage], cred: ClientCredential, now: int
    ) -> None:
        if len(packages) > self.config.max_connection_packages:
            raise ValidationError(f"at most {self.config.max_connection_packages} connection packages")
        for package in packages:
            core.check_connection_package(package, cred, now)

    async def _op_upload_user_id_connection_packages(
        self, op: Operation, request: AsRequest, now: int
    ) -> None:
        cred = await self._client(op, request, now)
        p = UploadUserIdPackages.decode(request.params)
        self._check_packages(p.connection_packages, cred, now)
        await self.store.add_user_packages(
            cred.client_id, p.connection_packages, limit=self.config.max_connection_packages, now=now
        )
        return None

    async def _op_get_user_id_connection_package(self, op: Operation, request: AsRequest, now: int) -> Struct:
        p = UserClientsParams.decode(request.params)
        self._local_user(p.user_id)
        package = await self.store.take_user_package(p.user_id, now)
        if package is None:
            raise NotFound("no connection package available for this user")
        return UserClientsResponse(package)

    # --- direct queues -------------------------------------------------------------------------------

    def _check_ctxt(self, ctxt: bytes) -> None:
        if not 0 < len(ctxt) <= core.MAX_CONNECTION_ESTABLISHMENT_CTXT:
            raise ValidationError("connection establishment ciphertext is empty or too large")

    def _dequeue_limit(self, asked: int) -> int:
        return max(0, min(asked, self.config.max_messages_per_dequeue))

    async def _op_dequeue_messages(self, op: Operation, request: AsRequest, now: int) -> Struct:
        cred = await self._client(op, request, now)
        p = DequeueMessagesParams.decode(request.params)
        items, remaining = await self.store.dequeue(
            DIRECT_QUEUES,
            direct_queue_id(cred.client_id),
            p.sequence_number_start,
            self._dequeue_limit(p.max_message_number),
        )
        return DequeueMessagesResponse(tuple(items), remaining)

    async def _op_enqueue_message(self, op: Operation, request: AsRequest, now: int) -> None:
        p = EnqueueMessageParams.decode(request.params)
        self._local_user(p.client_id.user_id)
        self._check_ctxt(p.connection_establishment_ctxt)
        await self.store.enqueue(
            DIRECT_QUEUES,
            direct_queue_id(p.client_id),
            p.connection_establishment_ctxt,
            cs=self.cs,
            rotation_interval=self.ratchet_rotation_interval,
            now=now,
        )
        return None

    # --- AS credentials ------------------------------------------------------------------------------

    async def _op_get_as_credentials(self, op: Operation, request: AsRequest, now: int) -> Struct:
        if request.params:
            raise ValidationError("get_as_credentials takes no params")
        published = (await self._material(now)).published(now)
        return AsCredentialsResponse(
            published.as_credentials, published.intermediates, tuple(sorted(published.revoked))
        )

    # --- aliases -------------------------------------------------------------------------------------

    async def _op_register_alias(self, op: Operation, request: AsRequest, now: int) -> None:
        p = RegisterAlias.decode(request.params)
        core.check_alias_auth_key(p.alias_auth_key)
        queue = self._new_queue(p.queue_encryption_key, p.initial_queue_ratchet_key, now)
        await self.store.register_alias(p.alias, p.alias_auth_key, queue=queue, now=now)
        return None

    async def _op_delete_alias(self, op: Operation, request: AsRequest, now: int) -> None:
        p = DeleteAlias.decode(request.params)
        await self._alias(op, request, p.alias, now)
        await self.store.delete_alias(p.alias)
        return None

    async def _op_dequeue_alias_messages(self, op: Operation, request: AsRequest, now: int) -> Struct:
        p = DequeueAliasMessagesParams.decode(request.params)
        await self._alias(op, request, p.alias, now)
        items, remaining = await self.store.dequeue(
            ALIAS_QUEUES,
            alias_queue_id(p.alias),
            p.sequence_number_start,
            self._dequeue_limit(p.max_message_number),
        )
        return DequeueMessagesResponse(tuple(items), remaining)

    async def _op_enqueue_alias_message(self, op: Operation, request: AsRequest, now: int) -> None:
        p = EnqueueAliasMessageParams.decode(request.params)
        self._check_ctxt(p.connection_establishment_ctxt)
        await self.store.enqueue(
            ALIAS_QUEUES,
            alias_queue_id(p.alias),
            p.connection_establishment_ctxt,
            cs=self.cs,
            rotation_interval=self.ratchet_rotation_interval,
            now=now,
        )
        return None

    async def _op_upload_alias_connection_packages(self, op: Operation, request: AsRequest, now: int) -> None:
        p = UploadAliasPackages.decode(request.params)
        await self._alias(op, request, p.alias, now)
        if len(p.connection_packages) > self.config.max_connection_packages:
            raise ValidationError(f"at most {self.config.max_connection_packages} connection packages")
        for payload in p.connection_packages:
            core.check_payload(payload, now)
        await self.store.add_alias_packages(
            p.alias, p.connection_packages, limit=self.config.max_connection_packages, now=now
        )
        return None

    async def _op_get_alias_connection_package(self, op: Operation, request: AsRequest, now: int) -> Struct:
        p = AliasClientsParams.decode(request.params)
        payload = await self.store.take_alias_package(p.alias, now)
        if payload is None:
            raise NotFound("no connection package available for this alias")
        return AliasClientsResponse(payload)

    # --- Privacy Pass --------------------------------------------------------------------------------

    async def _op_request_tokens(self, op: Operation, request: AsRequest, now: int) -> Struct:
        cred = await self._client(op, request, now, remote=True)
        p = RequestToken.decode(request.params)
        remote = cred.client_id.domain != self.domain
        # Clients of other homeservers get tokens under the frame's other key: a DS redeeming one knows
        # the holder is not ours (and may not create groups), and learns nothing more about it.
        keys = await self.token_keys.current(now)
        key = keys.key_for(TokenClass.FEDERATED if remote else TokenClass.LOCAL)
        batch = key.parse(p.token_request, max_batch=self.config.max_tokens_per_request)
        await self.store.charge_tokens(
            cred.client_id,
            len(batch),
            epoch=keys.epoch,
            allowance=self.config.token_allowance,
            domain_ramp=self.domain_ramp if remote else None,
            now=now,
            frame=self.config.token_time_frame,
        )
        return TokenResponse(key.evaluate(batch))

    async def _op_get_token_keys(self, op: Operation, request: AsRequest, now: int) -> Struct:
        if request.params:
            raise ValidationError("get_token_keys takes no params")
        keys = await self.token_keys.current(now)
        return TokenKeysResponse(keys.key.public_key, keys.federated.public_key, keys.not_after)


_CLIENT_AUTH_MODES = (core.AuthMode.CLIENT_CREDENTIAL, core.AuthMode.CLIENT_2FA, core.AuthMode.PENDING_CLIENT)
