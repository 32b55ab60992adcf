"""Test doubles and a small DS client (the client library will do this for real)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from phx.codec import Struct
from phx.config import DsConfig
from phx.crypto import SUITE_1
from phx.delivery.messages import (
    ROLES_EXTENSION_TYPE,
    AddUsersParams,
    AddUsersParamsAad,
    CreateGroupParams,
    DsRequest,
    DsSenderId,
    GroupInfoUpdate,
    Operation,
    RequestGroupIdResponse,
    UpdateClientParams,
    UpdateClientParamsAad,
    UserCredentialInformation,
    WelcomeAttributionCiphertexts,
    make_roles_extension,
)
from phx.delivery.service import DsService
from phx.errors import TokenError, Unavailable
from phx.identifiers import Fqdn, GroupId, QsCid, QsUid
from phx.mls.group import Group
from phx.mls.group_commit import build_group_info
from phx.mls.key_package import (
    DEFAULT_LIFETIME,
    KeyPackageBundle,
    create_key_package,
    default_capabilities,
    key_package_ref,
)
from phx.mls.messages import (
    Credential,
    CredentialType,
    Extension,
    MLSMessage,
    make_external_senders_extension,
)
from phx.privacypass import TokenClass, TokenRedeemer
from phx.privacypass.redeemer import Spend
from phx.queuing.messages import (
    QUEUE_CONFIG_EXTENSION_TYPE,
    ClientQueueConfig,
    FanOutMessage,
    QueueConfig,
    QueueDeleted,
    SealedQueueConfig,
    make_queue_config_extension,
    seal_queue_config,
)
from phx.storage import Connection, Database, migrate

CS = SUITE_1
DOMAIN = Fqdn("example.com")
T0 = 1_767_225_600  # 2026-01-01T00:00:00Z
CAPS = default_capabilities(
    CS, CredentialType.BASIC, extensions=[ROLES_EXTENSION_TYPE, QUEUE_CONFIG_EXTENSION_TYPE]
)


class FakeClock:
    def __init__(self, now: int = T0) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


class AcceptAll:
    """Privacy Pass double: accepts every token; tokens listed in ``federated`` are of the federated
    class (a client of another homeserver), all others local. ``redeemed`` lists the tokens spent."""

    def __init__(self) -> None:
        self.redeemed: list[bytes] = []
        self.federated: set[bytes] = set()

    async def prepare(self, token: bytes, now: int) -> tuple[TokenClass, Spend]:
        token_class = TokenClass.FEDERATED if token in self.federated else TokenClass.LOCAL
        return token_class, (token, b"", 0)

    async def spend(self, spend: Spend) -> None:
        if not self._spend(spend):
            raise TokenError("token has already been spent")

    async def spend_in(self, conn: Connection, spends: Sequence[Spend]) -> list[bool]:
        # Written at once, not with ``conn``: a rolled-back transaction keeps its tokens spent here.
        return [self._spend(spend) for spend in spends]

    def _spend(self, spend: Spend) -> bool:
        self.redeemed.append(spend[0])
        return True


class SingleUse(AcceptAll):
    """Like the real redeemer: a token is accepted once."""

    def _spend(self, spend: Spend) -> bool:
        if spend[0] in self.redeemed:
            return False
        return super()._spend(spend)


class Redeeming(AcceptAll):
    """A real redeemer (:class:`phx.privacypass.TokenRedeemer`) behind the double's bookkeeping."""

    def __init__(self, real: TokenRedeemer) -> None:
        super().__init__()
        self.real = real
        self._raw: dict[Spend, bytes] = {}

    async def prepare(self, token: bytes, now: int) -> tuple[TokenClass, Spend]:
        token_class, spend = await self.real.prepare(token, now)
        self._raw[spend] = token
        return token_class, spend

    async def spend(self, spend: Spend) -> None:
        await self.real.spend(spend)
        self.redeemed.append(self._raw[spend])

    async def spend_in(self, conn: Connection, spends: Sequence[Spend]) -> list[bool]:
        spent = await self.real.spend_in(conn, spends)
        self.redeemed += [self._raw[s] for s, ok in zip(spends, spent, strict=True) if ok]
        return spent


class RecordingSink:
    """The QS double: records fan-outs, reports configured queues as deleted, can be made to fail."""

    def __init__(self) -> None:
        self.messages: list[FanOutMessage] = []
        self.deleted: set[bytes] = set()
        self.fail = False

    async def fan_out(self, message: FanOutMessage, now: int) -> list[QueueDeleted]:
        if self.fail:
            raise Unavailable("QS down")
        self.messages.append(message)
        gid = message.message_content.group_id()
        return [QueueDeleted(c, gid) for c in message.client_queue_configs if c.encode() in self.deleted]

    def take(self) -> list[FanOutMessage]:
        out, self.messages = self.messages, []
        return out


def random_queue_config(domain: Fqdn = DOMAIN) -> ClientQueueConfig:
    """A config the DS never opens: random bytes shaped like a sealed QueueConfig."""
    return ClientQueueConfig(domain, SealedQueueConfig(os.urandom(32), os.urandom(80)))


def real_queue_config(qs_key: bytes, qs_cid: QsCid, domain: Fqdn = DOMAIN) -> ClientQueueConfig:
    return seal_queue_config(qs_key, domain, QueueConfig(None, qs_cid))


@dataclass
class Client:
    name: str
    sig_priv: bytes
    qc: ClientQueueConfig
    group: Group | None = None
    bundle: KeyPackageBundle | None = None
    credential_info: bytes = b""

    @classmethod
    def new(cls, name: str, qc: ClientQueueConfig | None = None) -> Client:
        priv, _ = CS.generate_signature_key_pair()
        return cls(name, priv, qc or random_queue_config(), credential_info=f"cred:{name}".encode())

    @property
    def credential(self) -> Credential:
        return Credential.basic(self.name.encode())

    @property
    def g(self) -> Group:
        assert self.group is not None
        return self.group

    @property
    def leaf(self) -> int:
        return self.g.leaf_index

    def key_package(
        self, now: int, *, extensions: Sequence[Extension] | None = None, lifetime: int = DEFAULT_LIFETIME
    ) -> KeyPackageBundle:
        exts = [make_queue_config_extension(self.qc)] if extensions is None else list(extensions)
        self.bundle = create_key_package(
            CS, self.credential, self.sig_priv, now=now, capabilities=CAPS, extensions=exts, lifetime=lifetime
        )
        return self.bundle

    def kp_ref(self) -> bytes:
        assert self.bundle is not None
        return key_package_ref(CS, self.bundle.key_package)


def pending_gi_update(group: Group) -> GroupInfoUpdate:
    """The committer's signature over the GroupInfo of its pending commit's epoch (with external_pub)."""
    pending = group._pending
    assert pending is not None
    gi = build_group_info(CS, pending.state, group._sig_priv, ratchet_tree=False, external_pub=True)
    return GroupInfoUpdate(gi.signature, gi.extensions)


@dataclass
class Harness:
    service: DsService
    db: Database
    clock: FakeClock
    sink: RecordingSink
    redeemer: AcceptAll
    ear_key: bytes = field(default_factory=lambda: os.urandom(32))
    gid: GroupId | None = None
    tokens: Callable[[bool], bytes] | None = None
    """Where fresh tokens come from (argument: federated class wanted); None: random bytes."""

    @classmethod
    async def start(
        cls, db: Database, *, redeemer: AcceptAll | None = None, config: DsConfig | None = None, **kw: object
    ) -> Harness:
        await migrate(db, "ds")
        clock, sink = FakeClock(), RecordingSink()
        red = redeemer or AcceptAll()
        service = await DsService.open(
            db, config or DsConfig(), DOMAIN, sink=sink, redeemer=red, clock=clock, **kw
        )
        return cls(service, db, clock, sink, red)

    @property
    def group_id(self) -> GroupId:
        assert self.gid is not None
        return self.gid

    @property
    def now(self) -> int:
        return self.clock.now

    async def call(
        self,
        op: Operation,
        params: Struct | None,
        signer: bytes | None = None,
        sender: DsSenderId | None = None,
        *,
        token: bytes | None = b"",
        timestamp: int | None = None,
        group_id: GroupId | None = None,
        remote: bool = False,
    ) -> bytes:
        """One request; ``signer``/``sender`` make the DsAuthToken; ``token`` b"" means a fresh one;
        ``remote``: spend a token of the federated class (a client of another homeserver)."""
        if token != b"":
            pp = token
        elif self.tokens is not None:
            pp = self.tokens(remote)
        else:
            pp = os.urandom(16)
            if remote:
                self.redeemer.federated.add(pp)
        if signer is None:
            req = DsRequest.unsigned(params, privacy_pass_token=pp)
        else:
            assert params is not None and sender is not None
            req = DsRequest.signed(
                op.value, params, group_id or self.group_id, sender, signer,
                self.now if timestamp is None else timestamp, privacy_pass_token=pp,
            )  # fmt: skip
        return await self.service.handle(op.value, req.encode())

    async def as_member(self, op: Operation, params: Struct, client: Client, **kw: object) -> bytes:
        return await self.call(op, params, client.sig_priv, DsSenderId.leaf(client.leaf), **kw)  # type: ignore[arg-type]

    # --- flows -------------------------------------------------------------------------------------
    async def create(self, creator: Client, *, extra_admins: Sequence[int] = ()) -> Group:
        gid = RequestGroupIdResponse.decode(await self.call(Operation.REQUEST_GROUP_ID, None)).group_id
        self.gid = gid
        ds = self.service.verifying_key_response().external_sender
        creator.group = Group.create(
            CS, creator.credential, creator.sig_priv, now=self.now, group_id=gid.to_mls(), capabilities=CAPS,
            extensions=[make_external_senders_extension([ds]), make_roles_extension((0, *extra_admins))],
        )  # fmt: skip
        gi = creator.g.group_info(ratchet_tree=True, external_pub=True).group_info
        assert gi is not None
        params = CreateGroupParams(gid, creator.credential_info, creator.qc, gi, self.ear_key)
        await self.call(Operation.CREATE_GROUP, params, creator.sig_priv, DsSenderId.leaf(0))
        return creator.g

    def add_params(
        self, committer: Client, users: Sequence[Sequence[Client]], **commit_kw: object
    ) -> AddUsersParams:
        kps = [c.key_package(self.now).key_package for user in users for c in user]
        aad = AddUsersParamsAad(
            tuple(UserCredentialInformation(tuple(c.credential_info for c in user)) for user in users)
        )
        res = committer.g.commit(now=self.now, add=kps, authenticated_data=aad.encode(), **commit_kw)  # type: ignore[arg-type]
        assert res.welcome is not None
        infos = tuple(
            WelcomeAttributionCiphertexts(f"wai:{c.name}".encode(), f"cek:{c.name}".encode())
            for user in users
            for c in user
        )
        return AddUsersParams(res.commit, self.ear_key, pending_gi_update(committer.g), res.welcome, infos)

    async def add(self, committer: Client, *users: Sequence[Client]) -> AddUsersParams:
        """Add users (each a list of clients); joiners build their groups from the Welcome."""
        params = self.add_params(committer, users)
        await self.as_member(Operation.ADD_USERS, params, committer)
        committer.g.merge_pending_commit()
        tree = self.service_tree()
        for user in users:
            for c in user:
                assert c.bundle is not None
                c.group = Group.join_from_welcome(params.welcome, c.bundle, now=self.now, ratchet_tree=tree)
        return params

    def service_tree(self) -> bytes:
        """The DS's current public tree (from the cached state)."""
        item = self.service.cache._items[self.group_id.encode()]
        return item[0].cold.public.encoded_tree()

    def update_params(self, client: Client, *, info: bytes | None = None, **kw: object) -> UpdateClientParams:
        aad = UpdateClientParamsAad(info).encode()
        res = client.g.commit(now=self.now, path=True, authenticated_data=aad, **kw)  # type: ignore[arg-type]
        return UpdateClientParams(res.commit, self.ear_key, pending_gi_update(client.g))

    async def update(self, client: Client, others: Sequence[Client] = ()) -> UpdateClientParams:
        params = self.update_params(client)
        await self.as_member(Operation.UPDATE_CLIENT, params, client)
        client.g.merge_pending_commit()
        for o in others:
            o.g.process(params.commit, now=self.now)
        return params


def new_qs_cid() -> QsCid:
    return QsCid(QsUid(uuid.uuid4()), uuid.uuid4())


def fan_out_targets(message: FanOutMessage) -> set[bytes]:
    return {c.encode() for c in message.client_queue_configs}


def mls(message: MLSMessage) -> MLSMessage:
    return MLSMessage.decode(message.encode())
