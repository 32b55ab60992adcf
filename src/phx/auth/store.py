"""The AS's persistent state on either engine: one method per state change, one transaction each.

The SQL is shared (``$n`` placeholders on both engines); where a read-modify-write needs a row lock on
PostgreSQL the statement gains ``FOR UPDATE`` (SQLite's single writer already excludes others). Rules live
in :mod:`phx.auth.core`; the store only applies them inside the transaction that needs them atomic.

Text keys: user ids and client ids in their canonical text form, aliases as given.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from phx.credentials import ClientCredential
from phx.crypto import CipherSuite
from phx.errors import Conflict, NotFound, RateLimited, ValidationError
from phx.federation.ratelimit import DomainRamp
from phx.identifiers import ClientId, UserId
from phx.queues import QueueMessage, QueueState, enqueue
from phx.queues.store import QueueStore
from phx.storage import Connection, Database

from . import core
from .keys import revoke_clients_in
from .messages import Alias, ConnectionPackage, ConnectionPackagePayload

__all__ = [
    "DIRECT_QUEUES",
    "ALIAS_QUEUES",
    "AsStore",
    "ClientEntry",
    "PendingEntry",
    "alias_queue_id",
    "direct_queue_id",
]


@dataclass(frozen=True, slots=True)
class PendingEntry:
    """A row of the book's ephemeral OPAQUE DB."""

    client_credential: ClientCredential | None
    client_csr: bytes | None
    server_state: bytes | None
    expires_at: int


@dataclass(frozen=True, slots=True)
class ClientEntry:
    client_id: ClientId
    credential: ClientCredential


DIRECT_QUEUES = QueueStore("as_direct")
ALIAS_QUEUES = QueueStore("as_alias")


def direct_queue_id(client_id: ClientId) -> bytes:
    return client_id.encode()


def alias_queue_id(alias: Alias) -> bytes:
    return alias.encode()


_FIRST_SEEN = "SELECT first_seen FROM as_federated_domains WHERE domain = $1"


def _for_update(conn: Connection) -> str:
    return " FOR UPDATE" if conn.engine == "postgres" else ""


def register_key(user_id: UserId) -> str:
    return f"register:{user_id}"


def add_client_key(client_id: ClientId) -> str:
    return f"add:{client_id}"


def login_key(client_id: ClientId) -> str:
    return f"login:{client_id}"


class AsStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # --- ephemeral OPAQUE entries --------------------------------------------------------------------

    async def put_pending(
        self,
        key: str,
        *,
        expires_at: int,
        now: int,
        client_credential: ClientCredential | None = None,
        client_csr: bytes | None = None,
        server_state: bytes | None = None,
        keep_public_key: bool = False,
    ) -> None:
        """Create or replace an entry. With ``keep_public_key`` an unexpired entry for another public key
        is a Conflict (someone else is registering that user id right now)."""
        async with self.db.transaction() as conn:
            if keep_public_key and client_credential is not None:
                row = await conn.fetchrow(
                    "SELECT client_credential, expires_at FROM as_opaque_pending WHERE key = $1"
                    + _for_update(conn),
                    key,
                )
                if row is not None and int(row["expires_at"]) >= now and row["client_credential"] is not None:
                    other = ClientCredential.decode(bytes(row["client_credential"]))
                    if other.public_key != client_credential.public_key:
                        raise Conflict("a registration of this user id is already in progress")
            await conn.execute(
                "INSERT INTO as_opaque_pending "
                "(key, client_credential, client_csr, server_state, expires_at) "
                "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (key) DO UPDATE SET "
                "client_credential = excluded.client_credential, client_csr = excluded.client_csr, "
                "server_state = excluded.server_state, expires_at = excluded.expires_at",
                key,
                None if client_credential is None else client_credential.encode(),
                client_csr,
                server_state,
                expires_at,
            )

    async def get_pending(self, key: str, now: int) -> PendingEntry | None:
        async with self.db.transaction(readonly=True) as conn:
            row = await conn.fetchrow(
                "SELECT client_credential, client_csr, server_state, expires_at FROM as_opaque_pending "
                "WHERE key = $1 AND expires_at >= $2",
                key,
                now,
            )
        if row is None:
            return None
        cred = row["client_credential"]
        return PendingEntry(
            None if cred is None else ClientCredential.decode(bytes(cred)),
            None if row["client_csr"] is None else bytes(row["client_csr"]),
            None if row["server_state"] is None else bytes(row["server_state"]),
            int(row["expires_at"]),
        )

    async def take_pending(self, key: str, now: int) -> PendingEntry | None:
        """Remove and return an unexpired entry (a login is answered at most once)."""
        async with self.db.transaction() as conn:
            row = await conn.fetchrow(
                "DELETE FROM as_opaque_pending WHERE key = $1 AND expires_at >= $2 "
                "RETURNING client_credential, client_csr, server_state, expires_at",
                key,
                now,
            )
        if row is None:
            return None
        cred = row["client_credential"]
        return PendingEntry(
            None if cred is None else ClientCredential.decode(bytes(cred)),
            None if row["client_csr"] is None else bytes(row["client_csr"]),
            None if row["server_state"] is None else bytes(row["server_state"]),
            int(row["expires_at"]),
        )

    async def take_login_state(self, key: str, now: int) -> bytes | None:
        """Remove and return a pending OPAQUE server state: a KE3 is checked against it only once."""
        async with self.db.transaction() as conn:
            state = await conn.fetchval(
                "DELETE FROM as_opaque_pending WHERE key = $1 AND expires_at >= $2 RETURNING server_state",
                key,
                now,
            )
        return None if state is None else bytes(state)

    # --- users and clients ---------------------------------------------------------------------------

    async def user_exists(self, user_id: UserId) -> bool:
        async with self.db.transaction(readonly=True) as conn:
            return await conn.fetchval("SELECT 1 FROM as_users WHERE user_id = $1", str(user_id)) is not None

    async def create_user(
        self,
        credential: ClientCredential,
        *,
        opaque_record: bytes,
        packages: Sequence[ConnectionPackage],
        queue: QueueState,
        now: int,
    ) -> None:
        """Create the user entry with its first client and packages; consumes the pending registration."""
        user_id = credential.client_id.user_id
        async with self.db.transaction() as conn:
            deleted = await conn.fetchval(
                "DELETE FROM as_opaque_pending WHERE key = $1 AND expires_at >= $2 "
                "RETURNING client_credential",
                register_key(user_id),
                now,
            )
            if deleted is None or bytes(deleted) != credential.encode():
                raise NotFound("no pending registration for this client credential (expired?)")
            if await conn.fetchval("SELECT 1 FROM as_users WHERE user_id = $1", str(user_id)) is not None:
                raise Conflict("user id already exists")
            await conn.execute(
                "INSERT INTO as_users (user_id, opaque_record, user_profile, created_at) "
                "VALUES ($1, $2, $3, $4)",
                str(user_id),
                opaque_record,
                b"",
                now,
            )
            await self._insert_client(conn, credential, queue, now)
            await self._insert_packages(conn, credential.client_id, packages)

    async def password_file(self, user_id: UserId) -> bytes | None:
        async with self.db.transaction(readonly=True) as conn:
            value = await conn.fetchval("SELECT opaque_record FROM as_users WHERE user_id = $1", str(user_id))
        return None if value is None else bytes(value)

    async def _insert_client(
        self, conn: Connection, credential: ClientCredential, queue: QueueState, now: int
    ) -> None:
        cid = credential.client_id
        qid = direct_queue_id(cid)
        await conn.execute(
            "INSERT INTO as_clients (client_id, user_id, queue_id, credential, fingerprint, not_after, "
            "created_at, activity_time) VALUES ($1, $2, $3, $4, $5, $6, $7, $7)",
            str(cid),
            str(cid.user_id),
            qid,
            credential.encode(),
            credential.fingerprint().value,
            credential.expiration_data.not_after,
            now,
        )
        await DIRECT_QUEUES.create(conn, qid, queue, ())

    async def add_client(self, credential: ClientCredential, *, queue: QueueState, now: int) -> None:
        cid = credential.client_id
        async with self.db.transaction() as conn:
            if await conn.fetchval("SELECT 1 FROM as_users WHERE user_id = $1", str(cid.user_id)) is None:
                raise NotFound("user does not exist")
            if await conn.fetchval("SELECT 1 FROM as_clients WHERE client_id = $1", str(cid)) is not None:
                raise Conflict("client id already exists")
            await self._insert_client(conn, credential, queue, now)

    async def client(self, client_id: ClientId) -> ClientEntry | None:
        async with self.db.transaction(readonly=True) as conn:
            raw = await conn.fetchval(
                "SELECT credential FROM as_clients WHERE client_id = $1", str(client_id)
            )
        return None if raw is None else ClientEntry(client_id, ClientCredential.decode(bytes(raw)))

    async def touch_client(self, client_id: ClientId, now: int) -> None:
        """Record activity, coarsened to the day (the book keeps only month and year; a day is enough for
        the inactivity purge and writes at most once a day per client)."""
        day = now - now % 86_400
        async with self.db.transaction() as conn:
            await conn.execute(
                "UPDATE as_clients SET activity_time = $2 WHERE client_id = $1 AND activity_time < $2",
                str(client_id),
                day,
            )

    async def delete_client(self, client_id: ClientId, now: int) -> None:
        """Remove one client (not the last: that is account deletion) and revoke its credential."""
        async with self.db.transaction() as conn:
            rows = await conn.fetch(
                "SELECT client_id, credential FROM as_clients WHERE user_id = $1" + _for_update(conn),
                str(client_id.user_id),
            )
            target = [r for r in rows if r["client_id"] == str(client_id)]
            if not target:
                raise NotFound("no such client")
            if len(rows) == 1:
                raise ValidationError("cannot remove the last client of a user; delete the account instead")
            await conn.execute("DELETE FROM as_clients WHERE client_id = $1", str(client_id))
            await conn.execute("DELETE FROM as_token_issuance WHERE client_id = $1", str(client_id))
            await revoke_clients_in(conn, [ClientCredential.decode(bytes(target[0]["credential"]))], now)

    async def delete_user(self, user_id: UserId, now: int) -> None:
        """Delete the user entry with its clients, packages and queues; revoke the client credentials."""
        async with self.db.transaction() as conn:
            rows = await conn.fetch(
                "SELECT client_id, credential FROM as_clients WHERE user_id = $1" + _for_update(conn),
                str(user_id),
            )
            deleted = await conn.execute("DELETE FROM as_users WHERE user_id = $1", str(user_id))
            if deleted == 0:
                raise NotFound("user does not exist")
            for r in rows:
                await conn.execute("DELETE FROM as_token_issuance WHERE client_id = $1", r["client_id"])
                await conn.execute("DELETE FROM as_opaque_pending WHERE key = $1", f"login:{r['client_id']}")
            await revoke_clients_in(
                conn, [ClientCredential.decode(bytes(r["credential"])) for r in rows], now
            )

    # --- password login throttle ---------------------------------------------------------------------

    async def check_login_allowed(self, user_id: UserId, now: int) -> None:
        async with self.db.transaction(readonly=True) as conn:
            row = await conn.fetchrow(
                "SELECT window_start, failures FROM as_login_failures WHERE user_id = $1", str(user_id)
            )
        if row is not None:
            core.check_login_failures(int(row["failures"]), int(row["window_start"]), now)

    async def record_login_failure(self, user_id: UserId, now: int) -> None:
        async with self.db.transaction() as conn:
            row = await conn.fetchrow(
                "SELECT window_start, failures FROM as_login_failures WHERE user_id = $1" + _for_update(conn),
                str(user_id),
            )
            if row is None or now >= int(row["window_start"]) + core.LOGIN_FAILURE_WINDOW:
                start, failures = now, 1
            else:
                start, failures = int(row["window_start"]), int(row["failures"]) + 1
            await conn.execute(
                "INSERT INTO as_login_failures (user_id, window_start, failures) VALUES ($1, $2, $3) "
                "ON CONFLICT (user_id) DO UPDATE SET window_start = excluded.window_start, "
                "failures = excluded.failures",
                str(user_id),
                start,
                failures,
            )

    async def clear_login_failures(self, user_id: UserId) -> None:
        async with self.db.transaction() as conn:
            await conn.execute("DELETE FROM as_login_failures WHERE user_id = $1", str(user_id))

    # --- profiles ------------------------------------------------------------------------------------

    async def set_profile(self, user_id: UserId, profile: bytes) -> None:
        async with self.db.transaction() as conn:
            updated = await conn.execute(
                "UPDATE as_users SET user_profile = $2 WHERE user_id = $1", str(user_id), profile
            )
        if updated == 0:
            raise NotFound("user does not exist")

    async def profile(self, user_id: UserId) -> bytes | None:
        async with self.db.transaction(readonly=True) as conn:
            value = await conn.fetchval("SELECT user_profile FROM as_users WHERE user_id = $1", str(user_id))
        return None if value is None else bytes(value)

    # --- connection packages -------------------------------------------------------------------------

    async def _insert_packages(
        self, conn: Connection, client_id: ClientId, packages: Sequence[ConnectionPackage]
    ) -> None:
        await conn.executemany(
            "INSERT INTO as_connection_packages (client_id, user_id, package, not_after) "
            "VALUES ($1, $2, $3, $4)",
            [
                (str(client_id), str(client_id.user_id), p.encode(), p.payload.lifetime.not_after)
                for p in packages
            ],
        )

    async def add_user_packages(
        self, client_id: ClientId, packages: Sequence[ConnectionPackage], *, limit: int, now: int
    ) -> None:
        async with self.db.transaction() as conn:
            await conn.execute(
                "DELETE FROM as_connection_packages WHERE client_id = $1 AND not_after < $2",
                str(client_id),
                now,
            )
            count = int(
                await conn.fetchval(
                    "SELECT COUNT(*) FROM as_connection_packages WHERE client_id = $1", str(client_id)
                )
            )
            if count + len(packages) > limit:
                raise ValidationError(
                    f"a client may store at most {limit} connection packages ({count} stored)"
                )
            await self._insert_packages(conn, client_id, packages)

    async def take_user_package(self, user_id: UserId, now: int) -> ConnectionPackage | None:
        async with self.db.transaction() as conn:
            rows = await conn.fetch(
                "SELECT id, client_id, not_after FROM as_connection_packages WHERE user_id = $1"
                + _for_update(conn),
                str(user_id),
            )
            stored = [
                core.StoredPackage(int(r["id"]), str(r["client_id"]), int(r["not_after"])) for r in rows
            ]
            choice = core.choose_package(stored, now)
            if choice is None:
                return None
            chosen, consume = choice
            raw = await conn.fetchval("SELECT package FROM as_connection_packages WHERE id = $1", chosen.id)
            if consume:
                await conn.execute("DELETE FROM as_connection_packages WHERE id = $1", chosen.id)
        return ConnectionPackage.decode(bytes(raw))

    # --- aliases -------------------------------------------------------------------------------------

    async def register_alias(self, alias: Alias, auth_key: bytes, *, queue: QueueState, now: int) -> None:
        async with self.db.transaction() as conn:
            if await conn.fetchval("SELECT 1 FROM as_aliases WHERE alias = $1", alias.value) is not None:
                raise Conflict("alias is already registered")
            qid = alias_queue_id(alias)
            await conn.execute(
                "INSERT INTO as_aliases (alias, queue_id, auth_key, created_at, activity_time) "
                "VALUES ($1, $2, $3, $4, $4)",
                alias.value,
                qid,
                auth_key,
                now,
            )
            await ALIAS_QUEUES.create(conn, qid, queue, ())

    async def alias_auth_key(self, alias: Alias) -> bytes | None:
        async with self.db.transaction(readonly=True) as conn:
            value = await conn.fetchval("SELECT auth_key FROM as_aliases WHERE alias = $1", alias.value)
        return None if value is None else bytes(value)

    async def touch_alias(self, alias: Alias, now: int) -> None:
        day = now - now % 86_400
        async with self.db.transaction() as conn:
            await conn.execute(
                "UPDATE as_aliases SET activity_time = $2 WHERE alias = $1 AND activity_time < $2",
                alias.value,
                day,
            )

    async def delete_alias(self, alias: Alias) -> None:
        async with self.db.transaction() as conn:
            if await conn.execute("DELETE FROM as_aliases WHERE alias = $1", alias.value) == 0:
                raise NotFound("alias is not registered")

    async def add_alias_packages(
        self, alias: Alias, payloads: Sequence[ConnectionPackagePayload], *, limit: int, now: int
    ) -> None:
        async with self.db.transaction() as conn:
            if await conn.fetchval("SELECT 1 FROM as_aliases WHERE alias = $1", alias.value) is None:
                raise NotFound("alias is not registered")
            await conn.execute(
                "DELETE FROM as_alias_packages WHERE alias = $1 AND not_after < $2", alias.value, now
            )
            count = int(
                await conn.fetchval("SELECT COUNT(*) FROM as_alias_packages WHERE alias = $1", alias.value)
            )
            if count + len(payloads) > limit:
                raise ValidationError(
                    f"an alias may store at most {limit} connection packages ({count} stored)"
                )
            await conn.executemany(
                "INSERT INTO as_alias_packages (alias, payload, not_after) VALUES ($1, $2, $3)",
                [(alias.value, p.encode(), p.lifetime.not_after) for p in payloads],
            )

    async def take_alias_package(self, alias: Alias, now: int) -> ConnectionPackagePayload | None:
        async with self.db.transaction() as conn:
            rows = await conn.fetch(
                "SELECT id, not_after FROM as_alias_packages WHERE alias = $1" + _for_update(conn),
                alias.value,
            )
            stored = [core.StoredPackage(int(r["id"]), alias.value, int(r["not_after"])) for r in rows]
            choice = core.choose_package(stored, now)
            if choice is None:
                return None
            chosen, consume = choice
            raw = await conn.fetchval("SELECT payload FROM as_alias_packages WHERE id = $1", chosen.id)
            if consume:
                await conn.execute("DELETE FROM as_alias_packages WHERE id = $1", chosen.id)
        return ConnectionPackagePayload.decode(bytes(raw))

    # --- queues --------------------------------------------------------------------------------------

    async def enqueue(
        self,
        queues: QueueStore,
        queue_id: bytes,
        payload: bytes,
        *,
        cs: CipherSuite,
        rotation_interval: int,
        now: int,
    ) -> None:
        """Encrypt ``payload`` into a queue under its ratchet (phx.queues), rotating when due."""
        async with self.db.transaction() as conn:
            state = await queues.get(conn, queue_id, for_update=True)
            if state is None:
                raise NotFound("no such queue")
            state, items = enqueue(cs, state, (payload,), now, rotation_interval=rotation_interval)
            await queues.save(conn, {queue_id: state}, [(queue_id, item) for item in items])

    async def dequeue(
        self, queues: QueueStore, queue_id: bytes, start: int, limit: int
    ) -> tuple[list[QueueMessage], int]:
        """Drop items below ``start``; return up to ``limit`` from ``start`` and how many remain after."""
        async with self.db.transaction() as conn:
            state = await queues.get(conn, queue_id, for_update=True)
            if state is None:
                raise NotFound("no such queue")
            if start > state.next_sequence:
                raise ValidationError(
                    f"sequence_number_start {start} is past the queue's end ({state.next_sequence})"
                )
            return await queues.dequeue(conn, queue_id, start, limit)

    # --- token allowances ----------------------------------------------------------------------------

    async def charge_tokens(
        self,
        client_id: ClientId,
        requested: int,
        *,
        epoch: int,
        allowance: int,
        domain_ramp: DomainRamp | None,
        now: int,
        frame: int,
    ) -> None:
        """Count ``requested`` tokens against the client and, for a client of another homeserver
        (``domain_ramp`` given), against its homeserver, whose allowance grows with the time since this
        AS first saw it; or raise RateLimited without counting anything. A homeserver's first contact is
        recorded even when its request is refused, so that refusals cannot keep a domain new forever."""
        refused: RateLimited | None = None
        async with self.db.transaction() as conn:
            charges: list[tuple[str, str, str, int, str]] = [
                ("as_token_issuance", "client_id", str(client_id), allowance, "this client")
            ]
            if domain_ramp is not None:
                domain = client_id.domain.value
                first_seen = await self._saw_domain(conn, domain, now)
                limit = domain_ramp.allowance(first_seen, now)
                if limit is not None:
                    charges.append(
                        ("as_domain_token_issuance", "domain", domain, limit, f"homeserver {domain}")
                    )
            updates: list[tuple[str, str, str, int]] = []
            try:
                for table, column, key, limit, scope in charges:
                    row = await conn.fetchrow(
                        f"SELECT epoch, issued FROM {table} WHERE {column} = $1" + _for_update(conn), key
                    )
                    issued = core.tokens_after_charge(
                        0 if row is None else int(row["issued"]),
                        None if row is None else int(row["epoch"]),
                        epoch=epoch,
                        requested=requested,
                        allowance=limit,
                        now=now,
                        frame=frame,
                        scope=scope,
                    )
                    updates.append((table, column, key, issued))
            except RateLimited as e:
                refused = e  # the transaction still commits the first contact
            else:
                for table, column, key, issued in updates:
                    await conn.execute(
                        f"INSERT INTO {table} ({column}, epoch, issued) VALUES ($1, $2, $3) ON CONFLICT "
                        f"({column}) DO UPDATE SET epoch = excluded.epoch, issued = excluded.issued",
                        key,
                        epoch,
                        issued,
                    )
        if refused is not None:
            raise refused

    async def _saw_domain(self, conn: Connection, domain: str, now: int) -> int:
        """Record a request from ``domain``'s clients; returns when the domain was first seen."""
        await conn.execute(
            "INSERT INTO as_federated_domains (domain, first_seen, last_seen) VALUES ($1, $2, $2) "
            "ON CONFLICT (domain) DO UPDATE SET last_seen = CASE "
            "WHEN excluded.last_seen > as_federated_domains.last_seen THEN excluded.last_seen "
            "ELSE as_federated_domains.last_seen END",
            domain,
            now,
        )
        return int(await conn.fetchval(_FIRST_SEEN, domain))

    async def domain_first_seen(self, domain: str) -> int | None:
        """When a client of ``domain`` first asked for tokens (None: not known, or forgotten)."""
        async with self.db.transaction(readonly=True) as conn:
            value = await conn.fetchval(_FIRST_SEEN, domain)
        return None if value is None else int(value)

    # --- housekeeping --------------------------------------------------------------------------------

    async def purge(self, now: int, *, epoch: int, inactive_before: int) -> dict[str, int]:
        """Drop expired ephemeral entries, stale allowance records, expired packages, and client entries
        inactive since before ``inactive_before`` (book: maximal client record age; their credentials are
        revoked, the user entry stays so the user can add a client with the password), and forget
        federated homeservers not seen since then (their allowance ramps up from the start again)."""
        async with self.db.transaction() as conn:
            await conn.execute(
                "DELETE FROM as_login_failures WHERE window_start < $1", now - core.LOGIN_FAILURE_WINDOW
            )
            inactive = await conn.fetch(
                "SELECT client_id, credential FROM as_clients WHERE activity_time < $1", inactive_before
            )
            for r in inactive:
                await conn.execute("DELETE FROM as_clients WHERE client_id = $1", r["client_id"])
            await revoke_clients_in(
                conn, [ClientCredential.decode(bytes(r["credential"])) for r in inactive], now
            )
            aliases = await conn.execute("DELETE FROM as_aliases WHERE activity_time < $1", inactive_before)
            domains = await conn.execute(
                "DELETE FROM as_federated_domains WHERE last_seen < $1", inactive_before
            )
            return {
                "pending": await conn.execute("DELETE FROM as_opaque_pending WHERE expires_at < $1", now),
                "allowances": await conn.execute("DELETE FROM as_token_issuance WHERE epoch < $1", epoch)
                + await conn.execute("DELETE FROM as_domain_token_issuance WHERE epoch < $1", epoch),
                "packages": await conn.execute("DELETE FROM as_connection_packages WHERE not_after < $1", now)
                + await conn.execute("DELETE FROM as_alias_packages WHERE not_after < $1", now),
                "inactive_clients": len(inactive),
                "inactive_aliases": aliases,
                "federated_domains": domains,
            }
