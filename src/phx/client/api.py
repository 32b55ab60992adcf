"""One typed method per service endpoint the client uses, over the services' own wire structs.

Every request is built with the service's own envelope helpers (:func:`phx.auth.client.client_request`,
:meth:`phx.queuing.messages.QsClientRequest.signed`, :meth:`phx.delivery.messages.DsRequest.signed`), paid
with a Privacy Pass token of the service's homeserver where the operation needs one (from a
:class:`TokenSource`). A request refused with ``bad_token`` (a token of an issuer key that has rotated
away) is retried once with a fresh token; the service refused it before doing anything else.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from phx.auth.client import alias_request, client_request, plain_request
from phx.auth.messages import (
    Alias,
    AliasClientsParams,
    AliasClientsResponse,
    AsCredentialsResponse,
    DeleteAlias,
    DeleteUserParams,
    DequeueAliasMessagesParams,
    Empty,
    EnqueueAliasMessageParams,
    EnqueueMessageParams,
    FinishUserRegistrationParams,
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
from phx.auth.messages import (
    DequeueMessagesParams as AsDequeueParams,
)
from phx.auth.messages import (
    DequeueMessagesResponse as AsDequeueResponse,
)
from phx.codec import Struct
from phx.credentials import ClientCredential
from phx.delivery.messages import (
    AddUsersParams,
    CreateGroupParams,
    DeleteGroupParams,
    DsRequest,
    DsSenderId,
    DsVerifyingKeyResponse,
    ExternalCommitInfoParams,
    ExternalCommitInfoResponse,
    JoinConnectionGroupParams,
    RemoveUsersParams,
    RequestGroupIdResponse,
    ResyncClientParams,
    SelfRemoveUserParams,
    SendMessageParams,
    UpdateClientParams,
    WelcomeInfoParams,
    WelcomeInfoResponse,
)
from phx.identifiers import Fqdn, GroupId, QsCid, QsUid, Service
from phx.queuing.messages import (
    AddPackageParams,
    AddPackageResponse,
    CreateUserRecordParams,
    CreateUserRecordResponse,
    DeleteUserRecordParams,
    DequeueMessagesParams,
    DequeueMessagesResponse,
    PublishKeyPackagesParams,
    QsClientRequest,
    QueueConfigEncryptionKeyResponse,
    UpdateUserRecordParams,
)
from phx.queuing.messages import (
    Operation as QsOp,
)

from .transport import ServiceError, Transport

__all__ = ["Api", "ClientAuth", "DsAuth", "QsAuth", "TokenSource"]

S = TypeVar("S", bound=Struct)


class TokenSource(Protocol):
    async def take(self, domain: Fqdn) -> bytes:
        """One unspent Privacy Pass token of ``domain`` (fetched from ``as.<domain>`` when needed)."""
        ...

    async def invalidate(self, domain: Fqdn) -> None:
        """Forget every cached token of ``domain`` (they were refused)."""
        ...


@dataclass(frozen=True, slots=True)
class ClientAuth:
    """Client Credential authentication towards an AS."""

    credential: ClientCredential
    private_key: bytes


@dataclass(frozen=True, slots=True)
class QsAuth:
    sender: QsUid | QsCid
    private_key: bytes


@dataclass(frozen=True, slots=True)
class DsAuth:
    """The DsAuthToken signer: a leaf (or a KeyPackage for welcome information) and its signature key."""

    sender: DsSenderId
    private_key: bytes


class Api:
    def __init__(self, transport: Transport, tokens: TokenSource, clock: Callable[[], int]) -> None:
        self.transport = transport
        self.tokens = tokens
        self.clock = clock

    async def _paid(
        self, domain: Fqdn, send: Callable[[bytes | None], Awaitable[bytes]], token: bool
    ) -> bytes:
        if not token:
            return await send(None)
        try:
            return await send(await self.tokens.take(domain))
        except ServiceError as e:
            if e.code != "bad_token":
                raise
        await self.tokens.invalidate(domain)
        return await send(await self.tokens.take(domain))

    # --- AS ------------------------------------------------------------------------------------------

    async def _as(
        self,
        domain: Fqdn,
        op: str,
        params: Struct,
        *,
        auth: ClientAuth | None = None,
        alias_key: bytes | None = None,
        token: bool = True,
    ) -> bytes:
        async def send(pp: bytes | None) -> bytes:
            if alias_key is not None:
                request = alias_request(
                    op, params, as_domain=domain, alias_private_key=alias_key, now=self.clock(), token=pp
                )
            elif auth is None:
                request = plain_request(params, token=pp)
            else:
                request = client_request(
                    op, params, as_domain=domain, credential=auth.credential,
                    private_key=auth.private_key, now=self.clock(), token=pp,
                )  # fmt: skip
            return await self.transport.call(domain, Service.AS, op, request.encode())

        return await self._paid(domain, send, token)

    async def as_credentials(self, domain: Fqdn) -> AsCredentialsResponse:
        return AsCredentialsResponse.decode(
            await self._as(domain, "get_as_credentials", Empty(), token=False)
        )

    async def token_keys(self, domain: Fqdn) -> TokenKeysResponse:
        return TokenKeysResponse.decode(await self._as(domain, "get_token_keys", Empty(), token=False))

    async def request_tokens(self, domain: Fqdn, params: RequestToken, auth: ClientAuth) -> TokenResponse:
        body = await self._as(domain, "request_tokens", params, auth=auth, token=False)
        return TokenResponse.decode(body)

    async def init_user_registration(
        self, domain: Fqdn, params: InitUserRegistrationParams
    ) -> InitUserRegistrationResponse:
        body = await self._as(domain, "init_user_registration", params, token=False)
        return InitUserRegistrationResponse.decode(body)

    async def finish_user_registration(
        self, domain: Fqdn, params: FinishUserRegistrationParams, auth: ClientAuth
    ) -> None:
        await self._as(domain, "finish_user_registration", params, auth=auth, token=False)

    async def initiate_2fa(self, domain: Fqdn, ke1: bytes, auth: ClientAuth) -> bytes:
        body = await self._as(
            domain, "initiate_2fa_authentication", Initiate2FaAuthenticationParams(ke1), auth=auth
        )
        return Initiate2FaAuthenticationResponse.decode(body).opaque_ke2

    async def delete_user(self, domain: Fqdn, ke3: bytes, auth: ClientAuth) -> None:
        await self._as(domain, "delete_user", DeleteUserParams(ke3), auth=auth)

    async def update_profile(self, domain: Fqdn, profile: bytes, auth: ClientAuth) -> None:
        await self._as(domain, "update_user_profile", UpdateUserProfileParams(profile), auth=auth)

    async def fetch_profile(self, params: UserProfileParams) -> UserProfileResponse:
        body = await self._as(params.user_id.as_domain, "fetch_user_profile", params)
        return UserProfileResponse.decode(body)

    async def upload_connection_packages(
        self, domain: Fqdn, params: UploadUserIdPackages, auth: ClientAuth
    ) -> None:
        await self._as(domain, "upload_user_id_connection_packages", params, auth=auth)

    async def connection_package(self, params: UserClientsParams) -> UserClientsResponse:
        body = await self._as(params.user_id.as_domain, "get_user_id_connection_package", params)
        return UserClientsResponse.decode(body)

    async def enqueue_message(self, params: EnqueueMessageParams) -> None:
        await self._as(params.client_id.domain, "enqueue_message", params)

    async def dequeue_messages(
        self, domain: Fqdn, params: AsDequeueParams, auth: ClientAuth
    ) -> AsDequeueResponse:
        return AsDequeueResponse.decode(await self._as(domain, "dequeue_messages", params, auth=auth))

    async def register_alias(self, domain: Fqdn, params: RegisterAlias) -> None:
        await self._as(domain, "register_alias", params)

    async def delete_alias(self, domain: Fqdn, alias: Alias, alias_key: bytes) -> None:
        await self._as(domain, "delete_alias", DeleteAlias(alias), alias_key=alias_key)

    async def upload_alias_packages(
        self, domain: Fqdn, params: UploadAliasPackages, alias_key: bytes
    ) -> None:
        await self._as(domain, "upload_alias_connection_packages", params, alias_key=alias_key)

    async def dequeue_alias_messages(
        self, domain: Fqdn, params: DequeueAliasMessagesParams, alias_key: bytes
    ) -> AsDequeueResponse:
        body = await self._as(domain, "dequeue_alias_messages", params, alias_key=alias_key)
        return AsDequeueResponse.decode(body)

    async def alias_package(self, domain: Fqdn, alias: Alias) -> AliasClientsResponse:
        body = await self._as(domain, "get_alias_connection_package", AliasClientsParams(alias))
        return AliasClientsResponse.decode(body)

    async def enqueue_alias_message(self, domain: Fqdn, params: EnqueueAliasMessageParams) -> None:
        await self._as(domain, "enqueue_alias_message", params)

    # --- QS ------------------------------------------------------------------------------------------

    async def _qs(
        self, domain: Fqdn, op: QsOp, params: Struct | None, *, auth: QsAuth | None = None, token: bool = True
    ) -> bytes:
        async def send(pp: bytes | None) -> bytes:
            if auth is None:
                body = b"" if params is None else params.encode()
                request = QsClientRequest(body, None, pp)
            else:
                assert params is not None
                request = QsClientRequest.signed(
                    op.value, params, auth.sender, auth.private_key, self.clock(), privacy_pass_token=pp
                )
            return await self.transport.call(domain, Service.QS, op.value, request.encode())

        return await self._paid(domain, send, token)

    async def queue_config_key(self, domain: Fqdn) -> bytes:
        body = await self._qs(domain, QsOp.QUEUE_CONFIG_ENCRYPTION_KEY, None)
        return QueueConfigEncryptionKeyResponse.decode(body).encryption_key

    async def create_user_record(
        self, domain: Fqdn, params: CreateUserRecordParams
    ) -> CreateUserRecordResponse:
        return CreateUserRecordResponse.decode(await self._qs(domain, QsOp.CREATE_USER_RECORD, params))

    async def update_user_record(self, domain: Fqdn, params: UpdateUserRecordParams, auth: QsAuth) -> None:
        await self._qs(domain, QsOp.UPDATE_USER_RECORD, params, auth=auth)

    async def delete_user_record(self, domain: Fqdn, params: DeleteUserRecordParams, auth: QsAuth) -> None:
        await self._qs(domain, QsOp.DELETE_USER_RECORD, params, auth=auth)

    async def publish_key_packages(
        self, domain: Fqdn, params: PublishKeyPackagesParams, auth: QsAuth
    ) -> None:
        await self._qs(domain, QsOp.PUBLISH_KEY_PACKAGES, params, auth=auth)

    async def add_packages(self, domain: Fqdn, params: AddPackageParams) -> AddPackageResponse:
        return AddPackageResponse.decode(await self._qs(domain, QsOp.GET_ADD_PACKAGES, params))

    async def dequeue(
        self, domain: Fqdn, params: DequeueMessagesParams, auth: QsAuth
    ) -> DequeueMessagesResponse:
        body = await self._qs(domain, QsOp.DEQUEUE_MESSAGES, params, auth=auth, token=False)
        return DequeueMessagesResponse.decode(body)

    # --- DS ------------------------------------------------------------------------------------------

    async def _ds(
        self,
        domain: Fqdn,
        op: str,
        params: Struct | None,
        group_id: GroupId | None = None,
        auth: DsAuth | None = None,
    ) -> bytes:
        async def send(pp: bytes | None) -> bytes:
            if auth is None:
                request = DsRequest.unsigned(params, privacy_pass_token=pp)
            else:
                assert params is not None and group_id is not None
                request = DsRequest.signed(
                    op, params, group_id, auth.sender, auth.private_key, self.clock(), privacy_pass_token=pp
                )
            return await self.transport.call(domain, Service.DS, op, request.encode())

        return await self._paid(domain, send, True)

    async def ds_verifying_key(self, domain: Fqdn) -> DsVerifyingKeyResponse:
        body = await self.transport.call(domain, Service.DS, "verifying_key", b"")
        return DsVerifyingKeyResponse.decode(body)

    async def request_group_id(self, domain: Fqdn) -> GroupId:
        return RequestGroupIdResponse.decode(await self._ds(domain, "request_group_id", None)).group_id

    async def create_group(self, params: CreateGroupParams, auth: DsAuth) -> None:
        gid = params.group_id
        await self._ds(gid.ds_domain, "create_group", params, gid, auth)

    async def welcome_info(self, params: WelcomeInfoParams, auth: DsAuth) -> WelcomeInfoResponse:
        gid = params.group_id
        return WelcomeInfoResponse.decode(await self._ds(gid.ds_domain, "welcome_info", params, gid, auth))

    async def external_commit_info(
        self, params: ExternalCommitInfoParams, auth: DsAuth | None
    ) -> ExternalCommitInfoResponse:
        gid = params.group_id
        body = await self._ds(gid.ds_domain, "external_commit_info", params, gid, auth)
        return ExternalCommitInfoResponse.decode(body)

    async def add_users(self, group_id: GroupId, params: AddUsersParams, auth: DsAuth) -> None:
        await self._ds(group_id.ds_domain, "add_users", params, group_id, auth)

    async def remove_users(self, group_id: GroupId, params: RemoveUsersParams, auth: DsAuth) -> None:
        await self._ds(group_id.ds_domain, "remove_users", params, group_id, auth)

    async def update_client(self, group_id: GroupId, params: UpdateClientParams, auth: DsAuth) -> None:
        await self._ds(group_id.ds_domain, "update_client", params, group_id, auth)

    async def join_connection_group(self, group_id: GroupId, params: JoinConnectionGroupParams) -> None:
        await self._ds(group_id.ds_domain, "join_connection_group", params)

    async def resync_client(self, group_id: GroupId, params: ResyncClientParams, auth: DsAuth) -> None:
        await self._ds(group_id.ds_domain, "resync_client", params, group_id, auth)

    async def self_remove(self, group_id: GroupId, params: SelfRemoveUserParams, auth: DsAuth) -> None:
        await self._ds(group_id.ds_domain, "self_remove_user", params, group_id, auth)

    async def send_message(self, group_id: GroupId, params: SendMessageParams, auth: DsAuth) -> None:
        await self._ds(group_id.ds_domain, "send_message", params, group_id, auth)

    async def delete_group(self, group_id: GroupId, params: DeleteGroupParams, auth: DsAuth) -> None:
        await self._ds(group_id.ds_domain, "delete_group", params, group_id, auth)
