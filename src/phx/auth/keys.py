"""AS key material: the credential chain's roots and intermediates, rotation, revocation, OPAQUE setup.

Policy (:func:`plan_rotation`, pure): there is always a *signing root* (valid now, key held, not revoked,
the one expiring last) with at least one intermediate lifetime left — otherwise a new root is created —
and under it an intermediate with at least half an intermediate lifetime left — otherwise a new one is
created. With the defaults (root 10 years, intermediate 2 years, client credentials at most 1 year) the
newest intermediate can always sign a full-length client credential. Old roots and intermediates stay
published until they expire; revoked ones leave the published lists and their fingerprints are listed
until they would have expired anyway.

Clients pick the intermediate in their CSR (``signer_fingerprint``); the AS signs with that intermediate
if it is one of its own, valid and unrevoked.

:class:`AsCredentialSource` is how request checks find the credentials of a client's AS: the local
:class:`AsKeyStore` serves this homeserver's domain; federation supplies another source for remote
domains (book: federation, "Authentication of remote clients").
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from phx.config import AsConfig
from phx.credentials import (
    AsCredential,
    ClientCredential,
    CredentialError,
    CredentialFingerprint,
    CsrError,
    ExpirationData,
    IntermediateAsCredential,
    VerifiedClientChain,
    create_intermediate_credential,
    new_as_credential,
    verify_client_credential,
)
from phx.errors import NotFound
from phx.identifiers import Fqdn
from phx.storage import Connection, Database

from . import opaque

__all__ = [
    "AsCredentialSet",
    "AsCredentialSource",
    "AsKeyMaterial",
    "AsKeyStore",
    "IntermediateEntry",
    "RootEntry",
    "Rotation",
    "plan_rotation",
]

_PG_LOCK_KEY = 0x7068785F61736B65  # "phx_aske": serializes key creation across processes
_OPAQUE_SETUP = "opaque_server_setup"


@dataclass(frozen=True, slots=True)
class AsCredentialSet:
    """What ``get AS credentials`` returns for one domain, and what client credentials verify against."""

    domain: Fqdn
    as_credentials: tuple[AsCredential, ...]
    intermediates: tuple[IntermediateAsCredential, ...]
    revoked: frozenset[CredentialFingerprint]

    def verify_client(self, credential: ClientCredential, now: int) -> VerifiedClientChain:
        if credential.client_id.domain != self.domain:
            raise CredentialError(
                f"credential of {credential.client_id.domain} checked against {self.domain}"
            )
        return verify_client_credential(
            credential,
            intermediates=self.intermediates,
            as_credentials=self.as_credentials,
            now=now,
            revoked=self.revoked,
        )


class AsCredentialSource(Protocol):
    async def credentials_for(self, domain: Fqdn, now: int) -> AsCredentialSet:
        """The credentials of ``domain``'s AS; raises CredentialError (or Unavailable) if unknown."""
        ...


@dataclass(frozen=True, slots=True)
class RootEntry:
    credential: AsCredential
    private_key: bytes | None

    @property
    def fingerprint(self) -> CredentialFingerprint:
        return self.credential.fingerprint()

    @property
    def validity(self) -> ExpirationData:
        return self.credential.expiration_data


@dataclass(frozen=True, slots=True)
class IntermediateEntry:
    credential: IntermediateAsCredential
    private_key: bytes | None

    @property
    def fingerprint(self) -> CredentialFingerprint:
        return self.credential.fingerprint()

    @property
    def validity(self) -> ExpirationData:
        return self.credential.expiration_data

    @property
    def signer(self) -> CredentialFingerprint:
        return self.credential.payload.signer_fingerprint


@dataclass(frozen=True, slots=True)
class AsKeyMaterial:
    domain: Fqdn
    roots: tuple[RootEntry, ...]
    intermediates: tuple[IntermediateEntry, ...]
    revoked: frozenset[CredentialFingerprint]

    def _usable(self, entry: RootEntry | IntermediateEntry, now: int) -> bool:
        return entry.validity.is_valid_at(now) and entry.fingerprint not in self.revoked

    def signing_root(self, now: int) -> RootEntry | None:
        usable = [r for r in self.roots if r.private_key is not None and self._usable(r, now)]
        # Entries are in creation order; on equal periods the newest wins (an operator rotation).
        return max(
            reversed(usable), key=lambda r: (r.validity.not_after, r.validity.not_before), default=None
        )

    def newest_intermediate(self, root: RootEntry, now: int) -> IntermediateEntry | None:
        fp = root.fingerprint
        usable = [
            i
            for i in self.intermediates
            if i.private_key is not None and i.signer == fp and self._usable(i, now)
        ]
        return max(
            reversed(usable), key=lambda i: (i.validity.not_after, i.validity.not_before), default=None
        )

    def published(self, now: int) -> AsCredentialSet:
        """Unexpired, unrevoked roots and intermediates (whose root is unrevoked), and the revocations."""
        roots = tuple(
            r.credential
            for r in self.roots
            if r.validity.not_after >= now and r.fingerprint not in self.revoked
        )
        root_fps = {r.fingerprint() for r in roots}
        inters = tuple(
            i.credential
            for i in self.intermediates
            if i.validity.not_after >= now and i.fingerprint not in self.revoked and i.signer in root_fps
        )
        return AsCredentialSet(self.domain, roots, inters, self.revoked)

    def verification_set(self, now: int) -> AsCredentialSet:
        """Like :meth:`published` but keeping revoked credentials, so that checks against it fail with
        RevokedCredential rather than with an unknown signer."""
        roots = tuple(r.credential for r in self.roots if r.validity.not_after >= now)
        inters = tuple(i.credential for i in self.intermediates if i.validity.not_after >= now)
        return AsCredentialSet(self.domain, roots, inters, self.revoked)

    def signer_for(self, fingerprint: CredentialFingerprint, now: int) -> tuple[IntermediateEntry, RootEntry]:
        """The intermediate a CSR names (ours, key held, valid, unrevoked) and its root."""
        for inter in self.intermediates:
            if inter.fingerprint != fingerprint:
                continue
            root = next((r for r in self.roots if r.fingerprint == inter.signer), None)
            if inter.private_key is None or root is None or not self._usable(inter, now):
                break
            if not self._usable(root, now):
                break
            return inter, root
        raise CsrError("the CSR names an intermediate credential this AS does not sign with")


class Rotation(enum.Enum):
    NEW_ROOT = "new_root"
    NEW_INTERMEDIATE = "new_intermediate"


def plan_rotation(material: AsKeyMaterial, now: int, config: AsConfig) -> list[Rotation]:
    """What :meth:`AsKeyStore.ensure` must create at ``now`` (see the module docstring)."""
    steps: list[Rotation] = []
    root = material.signing_root(now)
    if root is None or root.validity.not_after - now < config.intermediate_credential_lifetime:
        return [Rotation.NEW_ROOT, Rotation.NEW_INTERMEDIATE]
    inter = material.newest_intermediate(root, now)
    if inter is None or inter.validity.not_after - now < config.intermediate_credential_lifetime // 2:
        steps.append(Rotation.NEW_INTERMEDIATE)
    return steps


class AsKeyStore:
    """Key material in the database, cached per process (reloaded after ``cache_ttl`` seconds so that
    rotations by another process become visible)."""

    def __init__(self, db: Database, domain: Fqdn, config: AsConfig, *, cache_ttl: int = 60) -> None:
        self.db = db
        self.domain = domain
        self.config = config
        self.cache_ttl = cache_ttl
        self._cached: AsKeyMaterial | None = None
        self._cached_at = 0
        self._opaque: opaque.ServerSetup | None = None

    # --- reading -------------------------------------------------------------------------------------

    async def _load(self, conn: Connection, now: int) -> AsKeyMaterial:
        rows = await conn.fetch(
            "SELECT kind, credential, private_key FROM as_signing_credentials ORDER BY created_at, not_after"
        )
        roots: list[RootEntry] = []
        inters: list[IntermediateEntry] = []
        for row in rows:
            key = None if row["private_key"] is None else bytes(row["private_key"])
            if row["kind"] == "root":
                roots.append(RootEntry(AsCredential.decode(bytes(row["credential"])), key))
            else:
                inters.append(
                    IntermediateEntry(IntermediateAsCredential.decode(bytes(row["credential"])), key)
                )
        revoked = await conn.fetch(
            "SELECT fingerprint FROM as_revoked_credentials WHERE not_after >= $1", now
        )
        fps = frozenset(CredentialFingerprint(bytes(r["fingerprint"])) for r in revoked)
        return AsKeyMaterial(self.domain, tuple(roots), tuple(inters), fps)

    async def material(self, now: int) -> AsKeyMaterial:
        if self._cached is None or not 0 <= now - self._cached_at < self.cache_ttl:
            async with self.db.transaction(readonly=True) as conn:
                self._remember(await self._load(conn, now), now)
        assert self._cached is not None
        return self._cached

    def _remember(self, material: AsKeyMaterial, now: int) -> None:
        self._cached = material
        self._cached_at = now

    async def credentials_for(self, domain: Fqdn, now: int) -> AsCredentialSet:
        if domain != self.domain:
            raise CredentialError(f"no AS credentials known for {domain}")
        return (await self.material(now)).verification_set(now)

    # --- creating ------------------------------------------------------------------------------------

    async def _locked(self, conn: Connection) -> None:
        if conn.engine == "postgres":
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _PG_LOCK_KEY)

    async def _insert(
        self, conn: Connection, kind: str, cred: AsCredential | IntermediateAsCredential, key: bytes, now: int
    ) -> None:
        exp = cred.expiration_data
        await conn.execute(
            "INSERT INTO as_signing_credentials "
            "(fingerprint, kind, credential, private_key, not_before, not_after, created_at) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7)",
            cred.fingerprint().value,
            kind,
            cred.encode(),
            key,
            exp.not_before,
            exp.not_after,
            now,
        )

    async def _new_root(self, conn: Connection, now: int) -> RootEntry:
        cred, key = new_as_credential(
            self.domain, ExpirationData.starting(now, self.config.as_credential_lifetime)
        )
        await self._insert(conn, "root", cred, key, now)
        return RootEntry(cred, key)

    async def _new_intermediate(self, conn: Connection, root: RootEntry, now: int) -> IntermediateEntry:
        assert root.private_key is not None
        not_after = min(now + self.config.intermediate_credential_lifetime, root.validity.not_after)
        cred, key = create_intermediate_credential(
            root.credential, root.private_key, ExpirationData(now, not_after), now=now
        )
        await self._insert(conn, "intermediate", cred, key, now)
        return IntermediateEntry(cred, key)

    async def ensure(self, now: int) -> AsKeyMaterial:
        """Create whatever :func:`plan_rotation` asks for (idempotent; safe across processes)."""
        async with self.db.transaction() as conn:
            await self._locked(conn)
            material = await self._load(conn, now)
            steps = plan_rotation(material, now, self.config)
            if steps:
                root = material.signing_root(now)
                if Rotation.NEW_ROOT in steps or root is None:
                    root = await self._new_root(conn, now)
                await self._new_intermediate(conn, root, now)
                material = await self._load(conn, now)
        self._remember(material, now)
        return material

    async def rotate_intermediate(self, now: int) -> IntermediateAsCredential:
        """Publish a new intermediate under the signing root now (operator action)."""
        async with self.db.transaction() as conn:
            await self._locked(conn)
            material = await self._load(conn, now)
            root = material.signing_root(now) or await self._new_root(conn, now)
            inter = await self._new_intermediate(conn, root, now)
            self._remember(await self._load(conn, now), now)
        return inter.credential

    async def rotate_root(self, now: int) -> AsCredential:
        """Publish a new root and an intermediate under it; the old root stays valid until it expires."""
        async with self.db.transaction() as conn:
            await self._locked(conn)
            root = await self._new_root(conn, now)
            await self._new_intermediate(conn, root, now)
            self._remember(await self._load(conn, now), now)
        return root.credential

    async def revoke(self, fingerprint: CredentialFingerprint, not_after: int, now: int) -> None:
        """Put a credential of this AS's chain (root, intermediate or client) on the revocation list."""
        async with self.db.transaction() as conn:
            await revoke_in(conn, fingerprint, not_after, now)
        self._cached = None

    async def revoke_signing_credential(self, fingerprint: CredentialFingerprint, now: int) -> None:
        async with self.db.transaction(readonly=True) as conn:
            not_after = await conn.fetchval(
                "SELECT not_after FROM as_signing_credentials WHERE fingerprint = $1", fingerprint.value
            )
        if not_after is None:
            raise NotFound("no root or intermediate credential with that fingerprint")
        await self.revoke(fingerprint, int(not_after), now)

    def forget_cache(self) -> None:
        self._cached = None

    async def purge(self, now: int) -> int:
        """Drop revocations of credentials that have expired anyway."""
        async with self.db.transaction() as conn:
            return await conn.execute("DELETE FROM as_revoked_credentials WHERE not_after < $1", now)

    # --- OPAQUE --------------------------------------------------------------------------------------

    async def opaque_setup(self, now: int) -> opaque.ServerSetup:
        """The AS's OPAQUE key material, created on first use."""
        if self._opaque is None:
            async with self.db.transaction() as conn:
                await conn.execute(
                    "INSERT INTO as_secrets (name, value, created_at) VALUES ($1, $2, $3) "
                    "ON CONFLICT (name) DO NOTHING",
                    _OPAQUE_SETUP,
                    opaque.new_server_setup(),
                    now,
                )
                raw = await conn.fetchval("SELECT value FROM as_secrets WHERE name = $1", _OPAQUE_SETUP)
            self._opaque = opaque.load_server_setup(bytes(raw))
        return self._opaque


async def revoke_in(conn: Connection, fingerprint: CredentialFingerprint, not_after: int, now: int) -> None:
    await conn.execute(
        "INSERT INTO as_revoked_credentials (fingerprint, not_after, revoked_at) VALUES ($1, $2, $3) "
        "ON CONFLICT (fingerprint) DO NOTHING",
        fingerprint.value,
        not_after,
        now,
    )


async def revoke_clients_in(conn: Connection, credentials: Iterable[ClientCredential], now: int) -> None:
    """Revoke the credentials of removed clients, so peers stop accepting them (until they expire)."""
    for cred in credentials:
        if cred.expiration_data.not_after >= now:
            await revoke_in(conn, cred.fingerprint(), cred.expiration_data.not_after, now)
