"""The client's state under its home directory: one SQLite file, written in transactions.

Every command opens the file, works, and commits each consistent step on its own (one queue item, one
accepted commit, one registration stage), so a command that dies half-way — network gone, process
killed — leaves the state of the last completed step and the next command continues from there.

Secrets are stored in the clear (the file is created ``0600``); the home directory is the client's
key store. Identifiers are stored in their text forms, structs as their wire encodings.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from phx.codec import U8, Struct
from phx.credentials import ClientCredential
from phx.identifiers import ClientId, GroupId, QsCid, QsUid, UserId

__all__ = [
    "STEP_AS_DONE",
    "STEP_NEW",
    "STEP_QS_DONE",
    "STEP_READY",
    "AliasRow",
    "ClientState",
    "Contact",
    "GroupRow",
    "Identity",
    "MemberRow",
    "MessageRow",
    "RequestRow",
]

SCHEMA_VERSION = 1
FILE_NAME = "client.sqlite3"

STEP_NEW = 0
STEP_AS_DONE = 1
STEP_QS_DONE = 2
STEP_READY = 3

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE as_credentials (domain TEXT PRIMARY KEY, data BLOB NOT NULL, fetched_at INTEGER NOT NULL);
CREATE TABLE tokens (
    id INTEGER PRIMARY KEY, domain TEXT NOT NULL, token BLOB NOT NULL, obtained_at INTEGER NOT NULL
);
CREATE INDEX tokens_domain ON tokens (domain);
CREATE TABLE connection_keys (
    public_key BLOB PRIMARY KEY, private_key BLOB NOT NULL, not_after INTEGER NOT NULL
);
CREATE TABLE key_packages (
    ref BLOB PRIMARY KEY, bundle BLOB NOT NULL, signature_encryption_key BLOB NOT NULL,
    last_resort INTEGER NOT NULL, created_at INTEGER NOT NULL, used INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE users (user_id TEXT PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE contacts (
    user_id TEXT PRIMARY KEY, group_id TEXT NOT NULL, friendship_token BLOB, friendship_key BLOB,
    wai_key BLOB, created_at INTEGER NOT NULL, keys_sent INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE requests (
    id INTEGER PRIMARY KEY, direction TEXT NOT NULL, user_id TEXT NOT NULL, group_id TEXT NOT NULL,
    package BLOB NOT NULL, status TEXT NOT NULL, created_at INTEGER NOT NULL, target TEXT NOT NULL DEFAULT ''
);
CREATE TABLE groups (
    group_id TEXT PRIMARY KEY, kind TEXT NOT NULL, name TEXT NOT NULL, state BLOB NOT NULL,
    ear_key BLOB NOT NULL, credential_key BLOB NOT NULL, leaf_key BLOB NOT NULL, status TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE members (
    group_id TEXT NOT NULL, leaf INTEGER NOT NULL, client_id TEXT NOT NULL, user_id TEXT NOT NULL,
    credential BLOB NOT NULL, PRIMARY KEY (group_id, leaf)
);
CREATE TABLE aliases (
    alias TEXT PRIMARY KEY, auth_key BLOB NOT NULL, queue_key BLOB NOT NULL, reader BLOB NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE messages (
    id INTEGER PRIMARY KEY, group_id TEXT NOT NULL, sender TEXT NOT NULL, text TEXT NOT NULL,
    sent_at INTEGER NOT NULL, outgoing INTEGER NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class Identity(Struct):
    """Who this client is and every long-lived private key it holds (book: clients.md, "Client state")."""

    step: Annotated[int, U8]
    user_name: str
    client_id: ClientId
    signing_key: bytes
    credential: ClientCredential | None
    as_queue_key: bytes
    qs_user_key: bytes
    qs_client_key: bytes
    qs_queue_key: bytes
    qs_uid: QsUid | None
    qs_cid: QsCid | None
    friendship_token: bytes
    friendship_key: bytes
    wai_key: bytes

    @property
    def user_id(self) -> UserId:
        return self.client_id.user_id

    @property
    def cred(self) -> ClientCredential:
        if self.credential is None:
            raise RuntimeError("registration has not obtained a client credential yet")
        return self.credential


@dataclass(frozen=True, slots=True)
class Contact:
    user_id: UserId
    group_id: GroupId
    friendship_token: bytes | None
    friendship_key: bytes | None
    wai_key: bytes | None
    created_at: int
    #: Whether our current friendship keys have been sent to this contact.
    keys_sent: bool = False


@dataclass(frozen=True, slots=True)
class RequestRow:
    id: int
    direction: str  # "in" | "out"
    user_id: UserId
    group_id: GroupId
    package: bytes  # in: the ConnectionEstablishmentPackage; out: the sealed ctxt still to deliver
    status: str  # in: pending|accepted|rejected; out: sending|pending|accepted|rejected
    created_at: int
    target: str  # out: the client id the ctxt is for


@dataclass(frozen=True, slots=True)
class GroupRow:
    group_id: GroupId
    kind: str  # "group" | "connection"
    name: str
    state: bytes
    ear_key: bytes
    credential_key: bytes
    leaf_key: bytes
    status: str  # "active" | "left" | "removed" | "deleted"
    created_at: int


@dataclass(frozen=True, slots=True)
class MemberRow:
    leaf: int
    client_id: ClientId
    user_id: UserId
    credential: ClientCredential


@dataclass(frozen=True, slots=True)
class AliasRow:
    alias: str  # ``name@domain``
    auth_key: bytes
    queue_key: bytes
    reader: bytes  # the alias queue's QueueReader
    created_at: int


@dataclass(frozen=True, slots=True)
class MessageRow:
    id: int
    group_id: GroupId
    sender: UserId
    text: str
    sent_at: int
    outgoing: bool


class ClientState:
    """The SQLite file of one client. Use :meth:`tx` for every write (``BEGIN IMMEDIATE`` … commit)."""

    def __init__(self, home: Path) -> None:
        home.mkdir(parents=True, exist_ok=True)
        path = home / FILE_NAME
        fresh = not path.exists()
        if fresh:
            fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
            os.close(fd)
        self.path = path
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA busy_timeout=10000")
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            with self.tx() as c:
                # executescript() would commit on its own; one statement at a time stays in this transaction.
                for statement in _statements(_SCHEMA):
                    c.execute(statement)
                c.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        elif version != SCHEMA_VERSION:
            raise RuntimeError(f"{path} has client state version {version}, this phx knows {SCHEMA_VERSION}")

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # --- meta ----------------------------------------------------------------------------------------

    def get(self, key: str) -> bytes | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def put(self, c: sqlite3.Connection, key: str, value: bytes) -> None:
        c.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = ?",
            (key, value, value),
        )

    def delete_meta(self, c: sqlite3.Connection, key: str) -> None:
        c.execute("DELETE FROM meta WHERE key = ?", (key,))

    def identity(self) -> Identity | None:
        data = self.get("identity")
        return None if data is None else Identity.decode(data)

    def put_identity(self, c: sqlite3.Connection, identity: Identity) -> None:
        self.put(c, "identity", identity.encode())

    # --- AS credentials and tokens -------------------------------------------------------------------

    def as_credentials(self, domain: str) -> tuple[bytes, int] | None:
        row = self.db.execute(
            "SELECT data, fetched_at FROM as_credentials WHERE domain = ?", (domain,)
        ).fetchone()
        return None if row is None else (bytes(row[0]), int(row[1]))

    def put_as_credentials(self, domain: str, data: bytes, now: int) -> None:
        with self.tx() as c:
            c.execute(
                "INSERT INTO as_credentials VALUES (?, ?, ?) "
                "ON CONFLICT (domain) DO UPDATE SET data = excluded.data, fetched_at = excluded.fetched_at",
                (domain, data, now),
            )

    def take_token(self, domain: str) -> bytes | None:
        """Remove and return one token (gone even if the request using it fails: a token is never reused)."""
        with self.tx() as c:
            row = c.execute(
                "SELECT id, token FROM tokens WHERE domain = ? ORDER BY id LIMIT 1", (domain,)
            ).fetchone()
            if row is None:
                return None
            c.execute("DELETE FROM tokens WHERE id = ?", (row[0],))
            return bytes(row[1])

    def add_tokens(self, domain: str, tokens: list[bytes], now: int) -> None:
        with self.tx() as c:
            c.executemany(
                "INSERT INTO tokens (domain, token, obtained_at) VALUES (?, ?, ?)",
                [(domain, t, now) for t in tokens],
            )

    def drop_tokens(self, domain: str) -> None:
        with self.tx() as c:
            c.execute("DELETE FROM tokens WHERE domain = ?", (domain,))

    def token_count(self, domain: str) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM tokens WHERE domain = ?", (domain,)).fetchone()[0])

    # --- connection keys and KeyPackages -------------------------------------------------------------

    def add_connection_key(
        self, c: sqlite3.Connection, public_key: bytes, private_key: bytes, not_after: int
    ) -> None:
        c.execute(
            "INSERT OR REPLACE INTO connection_keys VALUES (?, ?, ?)", (public_key, private_key, not_after)
        )

    def connection_keys(self) -> list[bytes]:
        return [
            bytes(r[0])
            for r in self.db.execute("SELECT private_key FROM connection_keys ORDER BY rowid DESC")
        ]

    def add_key_package(
        self, c: sqlite3.Connection, ref: bytes, bundle: bytes, sig_key: bytes, last_resort: bool, now: int
    ) -> None:
        c.execute(
            "INSERT OR REPLACE INTO key_packages "
            "(ref, bundle, signature_encryption_key, last_resort, created_at) VALUES (?, ?, ?, ?, ?)",
            (ref, bundle, sig_key, int(last_resort), now),
        )

    def key_package(self, ref: bytes) -> tuple[bytes, bytes, bool] | None:
        row = self.db.execute(
            "SELECT bundle, signature_encryption_key, last_resort FROM key_packages WHERE ref = ?", (ref,)
        ).fetchone()
        return None if row is None else (bytes(row[0]), bytes(row[1]), bool(row[2]))

    def use_key_package(self, c: sqlite3.Connection, ref: bytes) -> None:
        # The last-resort package stays: it may be handed out (and used) again.
        c.execute("UPDATE key_packages SET used = 1 WHERE ref = ? AND last_resort = 0", (ref,))

    def unused_key_packages(self) -> int:
        return int(
            self.db.execute(
                "SELECT COUNT(*) FROM key_packages WHERE used = 0 AND last_resort = 0"
            ).fetchone()[0]
        )

    def prune_key_packages(self, c: sqlite3.Connection, before: int) -> None:
        c.execute("DELETE FROM key_packages WHERE created_at < ?", (before,))

    # --- users, contacts, requests -------------------------------------------------------------------

    def user_name(self, user_id: UserId) -> str | None:
        row = self.db.execute("SELECT name FROM users WHERE user_id = ?", (str(user_id),)).fetchone()
        return None if row is None else str(row[0])

    def put_user_name(self, c: sqlite3.Connection, user_id: UserId, name: str) -> None:
        c.execute("INSERT OR REPLACE INTO users VALUES (?, ?)", (str(user_id), name))

    def contacts(self) -> list[Contact]:
        rows = self.db.execute("SELECT * FROM contacts ORDER BY created_at, user_id").fetchall()
        return [_contact(r) for r in rows]

    def contact(self, user_id: UserId) -> Contact | None:
        row = self.db.execute("SELECT * FROM contacts WHERE user_id = ?", (str(user_id),)).fetchone()
        return None if row is None else _contact(row)

    def contact_by_group(self, group_id: GroupId) -> Contact | None:
        row = self.db.execute("SELECT * FROM contacts WHERE group_id = ?", (str(group_id),)).fetchone()
        return None if row is None else _contact(row)

    def put_contact(self, c: sqlite3.Connection, contact: Contact) -> None:
        c.execute(
            "INSERT OR REPLACE INTO contacts VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                str(contact.user_id), str(contact.group_id), contact.friendship_token, contact.friendship_key,
                contact.wai_key, contact.created_at, int(contact.keys_sent),
            ),
        )  # fmt: skip

    def resend_keys(self, c: sqlite3.Connection) -> None:
        c.execute("UPDATE contacts SET keys_sent = 0")

    def delete_contact(self, c: sqlite3.Connection, user_id: UserId) -> None:
        c.execute("DELETE FROM contacts WHERE user_id = ?", (str(user_id),))

    def add_request(
        self, c: sqlite3.Connection, direction: str, user_id: UserId, group_id: GroupId, package: bytes,
        status: str, now: int, target: str = "",
    ) -> int:  # fmt: skip
        cur = c.execute(
            "INSERT INTO requests (direction, user_id, group_id, package, status, created_at, target) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (direction, str(user_id), str(group_id), package, status, now, target),
        )
        assert cur.lastrowid is not None
        return int(cur.lastrowid)

    def requests(self, direction: str | None = None, status: str | None = None) -> list[RequestRow]:
        sql = "SELECT * FROM requests WHERE 1 = 1"
        args: list[Any] = []
        if direction is not None:
            sql += " AND direction = ?"
            args.append(direction)
        if status is not None:
            sql += " AND status = ?"
            args.append(status)
        return [_request(r) for r in self.db.execute(sql + " ORDER BY id", args)]

    def request(self, request_id: int) -> RequestRow | None:
        row = self.db.execute("SELECT * FROM requests WHERE id = ?", (request_id,)).fetchone()
        return None if row is None else _request(row)

    def request_by_group(self, group_id: GroupId) -> RequestRow | None:
        row = self.db.execute(
            "SELECT * FROM requests WHERE group_id = ? ORDER BY id DESC LIMIT 1", (str(group_id),)
        ).fetchone()
        return None if row is None else _request(row)

    def set_request_user(self, c: sqlite3.Connection, request_id: int, user_id: UserId) -> None:
        c.execute("UPDATE requests SET user_id = ? WHERE id = ?", (str(user_id), request_id))

    def set_request_status(self, c: sqlite3.Connection, request_id: int, status: str) -> None:
        c.execute("UPDATE requests SET status = ? WHERE id = ?", (status, request_id))

    # --- groups and members --------------------------------------------------------------------------

    def groups(self, kind: str | None = None) -> list[GroupRow]:
        if kind is None:
            rows = self.db.execute("SELECT * FROM groups ORDER BY created_at, group_id").fetchall()
        else:
            rows = self.db.execute(
                "SELECT * FROM groups WHERE kind = ? ORDER BY created_at, group_id", (kind,)
            ).fetchall()
        return [_group(r) for r in rows]

    def group(self, group_id: GroupId) -> GroupRow | None:
        row = self.db.execute("SELECT * FROM groups WHERE group_id = ?", (str(group_id),)).fetchone()
        return None if row is None else _group(row)

    def put_group(self, c: sqlite3.Connection, g: GroupRow) -> None:
        c.execute(
            "INSERT OR REPLACE INTO groups VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                str(g.group_id),
                g.kind,
                g.name,
                g.state,
                g.ear_key,
                g.credential_key,
                g.leaf_key,
                g.status,
                g.created_at,
            ),
        )

    def delete_group(self, c: sqlite3.Connection, group_id: GroupId) -> None:
        c.execute("DELETE FROM groups WHERE group_id = ?", (str(group_id),))
        c.execute("DELETE FROM members WHERE group_id = ?", (str(group_id),))

    def members(self, group_id: GroupId) -> list[MemberRow]:
        rows = self.db.execute(
            "SELECT leaf, client_id, user_id, credential FROM members WHERE group_id = ? ORDER BY leaf",
            (str(group_id),),
        ).fetchall()
        return [
            MemberRow(
                int(r[0]), ClientId.parse(r[1]), UserId.parse(r[2]), ClientCredential.decode(bytes(r[3]))
            )
            for r in rows
        ]

    def put_member(self, c: sqlite3.Connection, group_id: GroupId, member: MemberRow) -> None:
        c.execute(
            "INSERT OR REPLACE INTO members VALUES (?, ?, ?, ?, ?)",
            (
                str(group_id),
                member.leaf,
                str(member.client_id),
                str(member.user_id),
                member.credential.encode(),
            ),
        )

    def delete_members(self, c: sqlite3.Connection, group_id: GroupId) -> None:
        c.execute("DELETE FROM members WHERE group_id = ?", (str(group_id),))

    def delete_member(self, c: sqlite3.Connection, group_id: GroupId, leaf: int) -> None:
        c.execute("DELETE FROM members WHERE group_id = ? AND leaf = ?", (str(group_id), leaf))

    # --- aliases -------------------------------------------------------------------------------------

    def aliases(self) -> list[AliasRow]:
        rows = self.db.execute("SELECT * FROM aliases ORDER BY created_at, alias").fetchall()
        return [AliasRow(r[0], bytes(r[1]), bytes(r[2]), bytes(r[3]), int(r[4])) for r in rows]

    def put_alias(self, c: sqlite3.Connection, a: AliasRow) -> None:
        c.execute(
            "INSERT OR REPLACE INTO aliases VALUES (?, ?, ?, ?, ?)",
            (a.alias, a.auth_key, a.queue_key, a.reader, a.created_at),
        )

    def delete_alias(self, c: sqlite3.Connection, alias: str) -> None:
        c.execute("DELETE FROM aliases WHERE alias = ?", (alias,))

    # --- messages ------------------------------------------------------------------------------------

    def add_message(
        self,
        c: sqlite3.Connection,
        group_id: GroupId,
        sender: UserId,
        text: str,
        sent_at: int,
        outgoing: bool,
    ) -> int:
        cur = c.execute(
            "INSERT INTO messages (group_id, sender, text, sent_at, outgoing) VALUES (?, ?, ?, ?, ?)",
            (str(group_id), str(sender), text, sent_at, int(outgoing)),
        )
        assert cur.lastrowid is not None
        return int(cur.lastrowid)

    def messages(self, group_id: GroupId | None = None, after: int = 0) -> list[MessageRow]:
        sql = "SELECT * FROM messages WHERE id > ?"
        args: list[Any] = [after]
        if group_id is not None:
            sql += " AND group_id = ?"
            args.append(str(group_id))
        rows = self.db.execute(sql + " ORDER BY id", args).fetchall()
        return [
            MessageRow(int(r[0]), GroupId.parse(r[1]), UserId.parse(r[2]), str(r[3]), int(r[4]), bool(r[5]))
            for r in rows
        ]


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


def _opt(v: Any) -> bytes | None:
    return None if v is None else bytes(v)


def _contact(r: Any) -> Contact:
    return Contact(
        UserId.parse(r[0]), GroupId.parse(r[1]), _opt(r[2]), _opt(r[3]), _opt(r[4]), int(r[5]), bool(r[6])
    )


def _request(r: Any) -> RequestRow:
    return RequestRow(
        int(r[0]), r[1], UserId.parse(r[2]), GroupId.parse(r[3]), bytes(r[4]), r[5], int(r[6]), r[7]
    )


def _group(r: Any) -> GroupRow:
    return GroupRow(
        GroupId.parse(r[0]), r[1], r[2], bytes(r[3]), bytes(r[4]), bytes(r[5]), bytes(r[6]), r[7], int(r[8])
    )
