"""The Delivery Service: decode -> lock + decrypt -> rules (:mod:`.operations`) -> store -> fan out.

One request on a group, step by step (:meth:`DsService.handle`):

1. decode the :class:`~.messages.DsRequest` and redeem the Privacy Pass token (every endpoint); the
   token's class tells clients of other homeservers apart, who may not request group ids or create
   groups (book: federation/use_cases.md);
2. in one write transaction: lock the group's row (PostgreSQL ``FOR UPDATE``; SQLite's single writer),
   take the decrypted state from the cache if its version still matches the row and the EAR key's digest
   matches, else decrypt it (the roster only for application messages and queue updates); run the
   DS-induced removals (:func:`.core.maintenance`), check the DsAuthToken, apply the endpoint's rule;
   re-encrypt what changed and append the resulting fan-outs, EAR-encrypted, to the group's outbox;
3. after the commit: hand the outbox (older undelivered fan-outs first) to the QS, drop what was handed
   over and store the QueueDeleted answers sealed under the group's QueueIdEncryptionKey.

Application messages change no state: they are handed to the QS directly (after any pending outbox
entries) and a failure is the client's 503. A per-group asyncio lock keeps requests on one group in
order within the process (transaction and hand-over), so fan-outs leave in commit order. With the QS in
process and the group's state cached, an application message skips all of step 2: it is checked against
the cached state and delivered in the QS's shared transactions under a guard on the group's row
(:mod:`.express`).

Collaborators are passed in: ``sink`` (:class:`~.fanout.FanOutSink`), ``redeemer`` (Privacy Pass,
:class:`TokenRedeemer`), ``clock`` (unix seconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from phx.codec import Struct
from phx.config import DsConfig
from phx.crypto import SUITE_1, CipherSuite
from phx.errors import (
    Conflict,
    DecodeError,
    NotFound,
    PhxError,
    TokenError,
    Unavailable,
    ValidationError,
)
from phx.identifiers import Fqdn, GroupId
from phx.mls.messages import MLSMessage
from phx.privacypass import TokenClass
from phx.privacypass.redeemer import Spend
from phx.queuing.fanout import GuardFailed
from phx.queuing.messages import FanOutMessage, QueueDeleted
from phx.storage import Connection, Database

from . import core, operations
from .core import DsContext, Outputs
from .express import ExpressKey, GroupGuard, SpendingRedeemer
from .fanout import FanOutSink, LocalQsSink
from .messages import (
    AddUsersParams,
    CreateGroupParams,
    DeleteGroupParams,
    DsRequest,
    DsSenderId,
    DsVerifyingKeyResponse,
    ExternalCommitInfoParams,
    JoinConnectionGroupParams,
    Operation,
    RemoveUsersParams,
    RequestGroupIdResponse,
    ResyncClientParams,
    SelfRemoveUserParams,
    SendMessageParams,
    UpdateClientParams,
    UpdateQueueInfoParams,
    WelcomeInfoParams,
)
from .state import (
    COLD,
    PAST,
    ROSTER,
    GroupState,
    PaddingTarget,
    PastState,
    WrongEarKey,
    decrypt_section,
    encrypt_section,
    month_start,
    padding_unit,
)
from .store import DsStore, GroupRow

if TYPE_CHECKING:
    from starlette.routing import BaseRoute

__all__ = ["DsService", "TokenRedeemer"]

log = logging.getLogger("phx.delivery")

OUTBOX = b"outbox"
_KEY_SIGNING = "signing_key"
_KEY_PADDING = "padding_target"
#: Requests that need the roster only (no ratchet tree, unless DS-induced removals are due).
ROSTER_ONLY = frozenset({Operation.SEND_MESSAGE, Operation.UPDATE_QUEUE_INFO, Operation.WELCOME_INFO})
#: Endpoints only local clients may use (book: federation/use_cases.md): a request spending a token of
#: :attr:`TokenClass.FEDERATED` is refused with :class:`~.core.LocalClientsOnly`.
LOCAL_ONLY = frozenset({Operation.REQUEST_GROUP_ID, Operation.CREATE_GROUP})
DEFAULT_CACHE_BYTES = 256 << 20
MAINTENANCE_INTERVAL = 300.0


class TokenRedeemer(SpendingRedeemer, Protocol):
    """Privacy Pass as the DS uses it (:class:`phx.privacypass.TokenRedeemer`): every check first
    (:meth:`prepare`, raising :class:`~phx.errors.TokenError` for a bad token), the spending apart."""

    async def prepare(self, token: bytes, now: int) -> tuple[TokenClass, Spend]:
        """Check a token; its class (whom it was issued to) and the record that spends it."""
        ...

    async def spend(self, spend: Spend) -> None:
        """Record a prepared token as spent (committed on return); TokenError if it already was."""
        ...


#: (state, authenticated sender, params, now, prefetched data) -> outputs
Rule = Callable[[GroupState, DsSenderId | None, Any, int, Any], Outputs]


@dataclass(frozen=True, slots=True)
class _Op:
    params: type[Struct]
    group_id: Callable[[Any], GroupId]
    auth: str | None  # "leaf", "key_package" or None
    rule: Rule


# --- the decrypted-state cache -------------------------------------------------------------------------


class _Cache:
    """Decrypted group states between requests, LRU, bounded by an estimate of their size.

    An entry is used only if the row's version (read under the lock) is the one it was stored at, and
    only with the EAR key whose SHA-256 it records; it holds no key. Nothing here is ever written out."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.size = 0
        self._items: OrderedDict[bytes, tuple[GroupState, bytes, int]] = OrderedDict()

    def take(self, key: bytes, version: int) -> tuple[GroupState, bytes] | None:
        item = self._items.pop(key, None)
        if item is None:
            return None
        self.size -= item[2]
        state, digest, _ = item
        return (state, digest) if state.version == version else None

    def peek(self, key: bytes) -> tuple[GroupState, bytes] | None:
        """The entry without taking it out (for a read-only use that does not await)."""
        item = self._items.get(key)
        if item is None:
            return None
        self._items.move_to_end(key)
        return item[0], item[1]

    def put(self, key: bytes, state: GroupState, digest: bytes) -> None:
        self.drop(key)
        state.ear_key = None
        weight = state.weight()
        if weight > self.budget:
            return
        self._items[key] = (state, digest, weight)
        self.size += weight
        while self.size > self.budget:
            _, (_, _, w) = self._items.popitem(last=False)
            self.size -= w

    def drop(self, key: bytes) -> None:
        item = self._items.pop(key, None)
        if item is not None:
            self.size -= item[2]

    def clear(self) -> None:
        self._items.clear()
        self.size = 0

    def __len__(self) -> int:
        return len(self._items)


def _ear_digest(ear_key: bytes) -> bytes:
    return hashlib.sha256(b"phx ds ear key" + ear_key).digest()


class _GroupLocks:
    """One asyncio lock per group with requests in flight (entries vanish when unused)."""

    def __init__(self) -> None:
        self._locks: dict[bytes, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: bytes) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    def busy(self, key: bytes) -> bool:
        return key in self._locks


# --- the service -------------------------------------------------------------------------------------


class DsService:
    name = "ds"

    def __init__(
        self,
        db: Database,
        config: DsConfig,
        domain: Fqdn,
        *,
        signing_key: bytes,
        sink: FanOutSink,
        redeemer: TokenRedeemer,
        clock: Callable[[], int],
        padding_target: int = 1,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        random: Callable[[int], bytes] = os.urandom,
        cs: CipherSuite = SUITE_1,
    ) -> None:
        self.db = db
        self.config = config
        self.domain = domain
        self.sink = sink
        self.redeemer = redeemer
        self.clock = clock
        self.random = random
        self.cs = cs
        self.ctx = DsContext(domain, config, signing_key, cs)
        self.store = DsStore()
        self.padding = PaddingTarget(config.padding_percentile, padding_target)
        self.cache = _Cache(cache_bytes)
        self._locks = _GroupLocks()
        self._guard = GroupGuard(self.store, redeemer)
        # MLS group id -> (group id, its encoding), for the unlocked path (a busy group sends many messages)
        self._task: asyncio.Task[None] | None = None
        self._ops: dict[Operation, _Op] = {
            Operation.UPDATE_QUEUE_INFO: _Op(
                UpdateQueueInfoParams, lambda p: p.group_id, "leaf",
                lambda s, sid, p, now, _: operations.update_queue_info(s, _leaf(sid), p),
            ),
            Operation.WELCOME_INFO: _Op(
                WelcomeInfoParams, lambda p: p.group_id, "key_package",
                lambda s, sid, p, now, past: operations.welcome_info(s, _sid(sid), p, past),
            ),
            # No sender token: the connection responder is not a member yet (docs/decisions.md); the
            # group state EAR key in the request authenticates, as for join_connection_group.
            Operation.EXTERNAL_COMMIT_INFO: _Op(
                ExternalCommitInfoParams, lambda p: p.group_id, None,
                lambda s, sid, p, now, _: operations.external_commit_info(s),
            ),
            Operation.ADD_USERS: _Op(
                AddUsersParams, lambda p: operations.group_id_of_message(p.commit), "leaf",
                lambda s, sid, p, now, _: operations.add_users(s, self.ctx, _leaf(sid), p, now),
            ),
            Operation.REMOVE_USERS: _Op(
                RemoveUsersParams, lambda p: operations.group_id_of_message(p.commit), "leaf",
                lambda s, sid, p, now, _: operations.remove_users(s, self.ctx, _leaf(sid), p, now),
            ),
            Operation.UPDATE_CLIENT: _Op(
                UpdateClientParams, lambda p: operations.group_id_of_message(p.commit), "leaf",
                lambda s, sid, p, now, _: operations.update_client(s, self.ctx, _leaf(sid), p, now),
            ),
            Operation.JOIN_CONNECTION_GROUP: _Op(
                JoinConnectionGroupParams, lambda p: operations.group_id_of_message(p.external_commit), None,
                lambda s, sid, p, now, _: operations.join_connection_group(s, self.ctx, p, now),
            ),
            Operation.RESYNC_CLIENT: _Op(
                ResyncClientParams, lambda p: operations.group_id_of_message(p.external_commit), "leaf",
                lambda s, sid, p, now, _: operations.resync_client(s, self.ctx, _leaf(sid), p, now),
            ),
            Operation.SELF_REMOVE_USER: _Op(
                SelfRemoveUserParams, lambda p: operations.group_id_of_message(p.remove_proposal), "leaf",
                lambda s, sid, p, now, _: operations.self_remove_user(s, self.ctx, _leaf(sid), p, now),
            ),
            Operation.SEND_MESSAGE: _Op(
                SendMessageParams, lambda p: operations.group_id_of_message(p.application_message), "leaf",
                lambda s, sid, p, now, _: operations.send_message(s, _leaf(sid), p),
            ),
            Operation.DELETE_GROUP: _Op(
                DeleteGroupParams, lambda p: operations.group_id_of_message(p.commit), "leaf",
                lambda s, sid, p, now, _: operations.delete_group(s, self.ctx, _leaf(sid), p, now),
            ),
        }  # fmt: skip

    @classmethod
    async def open(
        cls,
        db: Database,
        config: DsConfig,
        domain: Fqdn,
        *,
        sink: FanOutSink,
        redeemer: TokenRedeemer,
        clock: Callable[[], int],
        **kwargs: Any,
    ) -> DsService:
        """Load the DS's signing key (generated on first start) and last padding target from the
        database (the ``ds`` migrations must have run)."""
        cs: CipherSuite = kwargs.get("cs", SUITE_1)
        now = clock()
        store = DsStore()
        async with db.transaction() as conn:
            await store.put_key(conn, _KEY_SIGNING, cs.generate_signature_key_pair()[0], now, replace=False)
            signing = await store.get_key(conn, _KEY_SIGNING)
            padding = await store.get_key(conn, _KEY_PADDING)
        assert signing is not None
        target = int.from_bytes(padding, "big") if padding else 1
        return cls(
            db, config, domain, signing_key=signing, sink=sink, redeemer=redeemer, clock=clock,
            padding_target=target, **kwargs,
        )  # fmt: skip

    # --- server integration --------------------------------------------------------------------------

    def routes(self) -> list[BaseRoute]:
        from .routes import ds_routes

        return ds_routes(self)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._maintenance_loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _maintenance_loop(self) -> None:
        while True:
            try:
                await self.expire(self.clock())
            except Exception:
                log.exception("DS maintenance failed")
            await asyncio.sleep(MAINTENANCE_INTERVAL)

    def verifying_key_response(self) -> DsVerifyingKeyResponse:
        return DsVerifyingKeyResponse(self.ctx.external_sender())

    # --- dispatch ------------------------------------------------------------------------------------

    async def handle(self, operation: str, body: bytes) -> bytes:
        """Run one DS operation on its encoded :class:`DsRequest`; returns the encoded response (empty
        for operations without one). Whether the client belongs to this homeserver is the class of the
        Privacy Pass token it spends (the only thing the DS learns about who is asking)."""
        try:
            op = Operation(operation)
        except ValueError:
            raise NotFound(f"no DS operation {operation!r}") from None
        now = self.clock()
        request = DsRequest.decode(body)
        if request.privacy_pass_token is None:
            raise TokenError("every DS operation needs a Privacy Pass token")
        token_class, spend = await self.redeemer.prepare(request.privacy_pass_token, now)
        # An application message's token is spent in the transaction that delivers it (.express), or
        # below if it takes the locked path; every other request's right away.
        express = op == Operation.SEND_MESSAGE
        if not express:
            await self.redeemer.spend(spend)
        if op in LOCAL_ONLY and token_class is not TokenClass.LOCAL:
            # The token stays spent: the request was made and cost the DS a redemption.
            raise core.LocalClientsOnly(f"{op.value} is only open to clients of this homeserver")
        if op == Operation.REQUEST_GROUP_ID:
            return (await self._request_group_id(request, now)).encode()
        if op == Operation.CREATE_GROUP:
            await self._create_group(request, now)
            return b""
        spec = self._ops[op]
        try:
            params = spec.params.decode(request.params)
        except DecodeError:
            if express:
                await self.redeemer.spend(spend)
            raise
        if express:
            if isinstance(params, SendMessageParams) and await self._send_unlocked(
                request, params, now, spend
            ):
                return b""
            await self.redeemer.spend(spend)
        out = await self._group_request(op, spec, spec.group_id(params), request, params, now)
        return b"" if out.response is None else out.response.encode()

    # --- group creation ------------------------------------------------------------------------------

    async def _request_group_id(self, request: DsRequest, now: int) -> RequestGroupIdResponse:
        if request.params or request.auth_token is not None:
            raise DecodeError("request_group_id takes no params and no auth token")
        async with self.db.transaction() as conn:
            for _ in range(8):
                gid = GroupId.random(self.domain)
                if await self.store.reserve(
                    conn, gid.encode(), now + self.config.group_id_reservation, month_start(now)
                ):
                    return RequestGroupIdResponse(gid)
        raise Unavailable("could not sample an unused group id")

    async def _create_group(self, request: DsRequest, now: int) -> None:
        params = CreateGroupParams.decode(request.params)
        state = operations.create_group(self.ctx, params, now, random=self.random)
        core.check_leaf_sender(core.authenticate(state, request, Operation.CREATE_GROUP, self.ctx, now))
        key = params.group_id.encode()
        self.padding.observe(key, len(state.roster.members))
        roster, cold = state.seal(*self._units())
        assert cold is not None
        async with self.db.transaction() as conn:
            until = await self.store.reservation(conn, key)
            if until is None:
                if await self.store.group_exists(conn, key) is not None:
                    raise Conflict("the group already exists")
                raise NotFound("no reservation for this group id (request one first)")
            if until < now:
                raise NotFound("the reservation of this group id has lapsed")
            await self.store.create(
                conn, key, roster, cold, state.queue_id_public_key(self.cs), month_start(now)
            )
        state.saved(1)
        self.cache.put(key, state, _ear_digest(params.initial_ear_key))

    # --- application messages without the group lock (.express) --------------------------------------

    async def _send_unlocked(
        self, request: DsRequest, params: SendMessageParams, now: int, spend: Spend
    ) -> bool:
        """Check and deliver an application message against the cached state, in the QS's shared
        transaction under :attr:`_guard`, which also records the request's token (``spend``) as spent.
        False: nothing was delivered and the token was not spent here, take the locked path (no QS in this
        process, state not cached, anything refused or changed since, the token spent before)."""
        sink = self.sink
        deliverer = sink.shared_deliverer(self.db) if isinstance(sink, LocalQsSink) else None
        if deliverer is None:
            return False
        gid, key = self._group_key(params.application_message)
        cached = self.cache.peek(key)
        if cached is None and self._locks.busy(key):
            # A locked request has the state out of the cache: wait for it (and any queued before us),
            # then the state is most likely back.
            async with self._locks.hold(key):
                pass
            cached = self.cache.peek(key)
        if cached is None:
            return False
        state, digest = cached
        if not hmac.compare_digest(digest, _ear_digest(params.group_state_ear_key)):
            return False
        if core.needs_maintenance(state, self.ctx, now, 0):
            return False
        try:
            sid = core.authenticate(state, request, Operation.SEND_MESSAGE.value, self.ctx, now)
            out = operations.send_message(state, _leaf(sid), params)
        except PhxError:
            # The cached state may be behind the row: the locked path answers for the current one.
            return False
        qs_now = deliverer.clock()
        prepared = [deliverer.prepare(m, qs_now) for m in out.fan_outs]
        try:
            results = await deliverer.deliver_prepared(
                prepared, guard=self._guard, key=ExpressKey.of(key, state.version, spend), order=key
            )
        except GuardFailed:
            return False
        except Exception as e:
            log.warning("fan-out for %s failed: %s", gid, e)
            raise Unavailable("the local QS did not take the message") from e
        deleted = [d for r in results for d in r]
        if deleted:
            await self.queue_deleted(deleted)
        return True

    def _group_key(self, message: MLSMessage) -> tuple[GroupId, bytes]:
        """The message's group id and its encoding (the key of the state cache and the group locks)."""
        private = message.private_message
        gid = (
            GroupId.from_mls(private.group_id)
            if private is not None
            else operations.group_id_of_message(message)
        )
        return gid, gid.encode()

    # --- requests on a group -------------------------------------------------------------------------

    def _units(self) -> tuple[int, int]:
        target = self.padding.target()
        return padding_unit(target, ROSTER), padding_unit(target, COLD)

    async def _group_request(
        self, op: Operation, spec: _Op, gid: GroupId, request: DsRequest, params: Any, now: int
    ) -> Outputs:
        key = gid.encode()
        ear_key: bytes = params.group_state_ear_key
        async with self._locks.hold(key):
            failure: PhxError | None = None
            async with self.db.transaction() as conn:
                row = await self.store.lock_group(conn, key)
                if row is None:
                    raise NotFound("no such group")
                state = await self._load(conn, gid, row, ear_key, cold=op not in ROSTER_ONLY)
                try:
                    pending = await self._pending(conn, state, row)
                    maint = await self._maintenance(conn, state, row, now)
                    try:
                        sid = None
                        if spec.auth is not None:
                            sid = core.authenticate(state, request, op, self.ctx, now, kind=spec.auth)
                        extra = await self._prefetch(op, conn, state, params)
                        out = spec.rule(state, sid, params, now, extra)
                    except PhxError as e:
                        failure, out = e, Outputs()
                    queued: list[tuple[int | None, FanOutMessage]] = list(pending)
                    direct: list[FanOutMessage] = []
                    if out.delete_group:
                        await self.store.delete_group(conn, key)
                        queued += [(None, m) for m in maint.fan_outs]
                        direct = out.fan_outs
                    elif state.dirty:
                        await self._save(conn, state, now)
                        fan_outs = maint.fan_outs + out.fan_outs
                        blobs = [self._seal_outbox(state, m) for m in fan_outs]
                        ids = await self.store.add_outbox(conn, key, blobs, now)
                        queued += list(zip(ids, fan_outs, strict=True))
                    else:
                        direct = out.fan_outs
                except BaseException:
                    self.cache.drop(key)
                    raise
            if out.delete_group:
                self.cache.drop(key)
                self.padding.forget(key)
            else:
                self.padding.observe(key, len(state.roster.members))
                self.cache.put(key, state, _ear_digest(ear_key))
            await self._deliver(gid, row.queue_id_key, queued, direct, now, alive=not out.delete_group)
        if failure is not None:
            raise failure
        return out

    async def _load(
        self, conn: Connection, gid: GroupId, row: GroupRow, ear_key: bytes, *, cold: bool
    ) -> GroupState:
        key = gid.encode()
        cached = self.cache.take(key, row.version)
        if cached is not None:
            state, digest = cached
            if not hmac.compare_digest(digest, _ear_digest(ear_key)):
                self.cache.put(key, state, digest)
                raise WrongEarKey("the GroupStateEarKey does not decrypt this group's state")
            state.ear_key = ear_key
        else:
            blobs = await self.store.load(conn, key, cold=cold)
            state = GroupState.decrypt(gid, ear_key, blobs.roster, blobs.cold, version=row.version)
            if not hmac.compare_digest(state.queue_id_public_key(self.cs), row.queue_id_key):
                raise DecodeError("stored QueueIdEncryptionKey does not match the group state")
        if cold:
            await self._ensure_cold(conn, state)
        return state

    async def _ensure_cold(self, conn: Connection, state: GroupState) -> None:
        if not state.cold_available:
            state.attach_cold(await self.store.load_cold(conn, state.group_id.encode()))

    async def _pending(
        self, conn: Connection, state: GroupState, row: GroupRow
    ) -> list[tuple[int | None, FanOutMessage]]:
        if not row.has_outbox:
            return []
        assert state.ear_key is not None
        out: list[tuple[int | None, FanOutMessage]] = []
        for oid, blob in await self.store.outbox(conn, state.group_id.encode()):
            plain = decrypt_section(state.ear_key, state.group_id, OUTBOX, blob, cs=self.cs)
            out.append((oid, FanOutMessage.decode(plain)))
        return out

    async def _maintenance(self, conn: Connection, state: GroupState, row: GroupRow, now: int) -> Outputs:
        if not (row.has_deleted_queues or core.needs_maintenance(state, self.ctx, now, 0)):
            return Outputs()
        await self._ensure_cold(conn, state)
        deleted = await self.store.take_deleted_queues(conn, state.group_id.encode())
        return core.maintenance(state, self.ctx, now, deleted)

    async def _prefetch(self, op: Operation, conn: Connection, state: GroupState, params: Any) -> Any:
        """What a rule needs from storage besides the state: the past state a Welcome info asks for."""
        if op != Operation.WELCOME_INFO:
            return None
        blob = await self.store.past_state(conn, state.group_id.encode(), params.epoch)
        if blob is None:
            return None
        assert state.ear_key is not None
        return PastState.decode(decrypt_section(state.ear_key, state.group_id, PAST, blob, cs=self.cs))

    def _seal_outbox(self, state: GroupState, message: FanOutMessage) -> bytes:
        assert state.ear_key is not None
        unit = self._units()[0]
        plain = state.encode_fan_out(message)
        return encrypt_section(state.ear_key, state.group_id, OUTBOX, plain, unit, cs=self.cs)

    async def _save(self, conn: Connection, state: GroupState, now: int) -> None:
        key = state.group_id.encode()
        roster, cold = state.seal(*self._units())
        version = state.version + 1
        await self.store.save(conn, key, version, roster, cold, month_start(now))
        if state.new_past:
            assert state.ear_key is not None
            unit = padding_unit(self.padding.target(), PAST)
            blobs = [
                (p.epoch, encrypt_section(state.ear_key, state.group_id, PAST, p.encode(), unit, cs=self.cs))
                for p in state.new_past
            ]
            await self.store.add_past_states(conn, key, blobs)
        if state.joiners_changed:
            await self.store.keep_past_states(conn, key, sorted(state.roster.past_epochs()))
        state.saved(version)

    async def _deliver(
        self,
        gid: GroupId,
        queue_id_key: bytes,
        queued: Sequence[tuple[int | None, FanOutMessage]],
        direct: Sequence[FanOutMessage],
        now: int,
        *,
        alive: bool,
    ) -> None:
        """Hand the outbox, then the direct fan-outs, to the QS in order; stop at the first failure (the
        rest of the outbox waits for the group's next request). A failed direct fan-out is the caller's
        503."""
        delivered: list[int] = []
        deleted: list[QueueDeleted] = []
        error: PhxError | None = None
        items = [*queued, *((None, m) for m in direct)]
        for oid, message in items:
            try:
                deleted += await self.sink.fan_out(message, now)
            except Exception as e:
                log.warning("fan-out for %s failed: %s", gid, e)
                error = Unavailable("the local QS did not take the message")
                break
            if oid is not None:
                delivered.append(oid)
        if alive and (delivered or deleted):
            sealed = [
                core.seal_queue_config(self.cs, queue_id_key, gid, d.client_queue_config)
                for d in deleted
                if d.group_id == gid
            ]
            async with self.db.transaction() as conn:
                await self.store.remove_outbox(conn, delivered)
                if sealed:
                    await self.store.add_deleted_queues(conn, gid.encode(), sealed)
        if error is not None and direct and alive:
            raise error

    # --- QS reports and expiry -----------------------------------------------------------------------

    async def queue_deleted(self, reports: Sequence[QueueDeleted], *, source: Fqdn | None = None) -> None:
        """QueueDeleted reports arriving later (from federated QSs, via the local QS). With ``source`` (the
        reporting homeserver), reports about other homeservers' queues are dropped: a QS may only declare
        its own queues gone (each report becomes a removal proposal)."""
        by_group: dict[GroupId, list[QueueDeleted]] = {}
        for r in reports:
            if source is not None and r.client_queue_config.client_homeserver_domain != source:
                log.warning(
                    "dropping a QueueDeleted report from %s about a queue of another homeserver", source
                )
                continue
            by_group.setdefault(r.group_id, []).append(r)
        async with self.db.transaction() as conn:
            for gid, items in by_group.items():
                qid = await self.store.group_exists(conn, gid.encode())
                if qid is None:
                    continue
                sealed = [core.seal_queue_config(self.cs, qid, gid, r.client_queue_config) for r in items]
                await self.store.add_deleted_queues(conn, gid.encode(), sealed)

    async def expire(self, now: int) -> tuple[int, int]:
        """Delete groups unused for the configured interval and lapsed reservations; persist the padding
        target. Returns (groups, reservations) deleted."""
        cutoff = month_start(now - self.config.group_expiry)
        async with self.db.transaction() as conn:
            result = await self.store.expire(conn, cutoff, now)
            if self.padding.observed:
                target = self.padding.target().to_bytes(8, "big")
                await self.store.put_key(conn, _KEY_PADDING, target, now, replace=True)
        return result


def _sid(sid: DsSenderId | None) -> DsSenderId:
    if sid is None:
        raise ValidationError("this operation needs an authenticated sender")
    return sid


def _leaf(sid: DsSenderId | None) -> int:
    return core.check_leaf_sender(_sid(sid))
