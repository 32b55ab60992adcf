"""Identifiers of the Phoenix protocol (book: spec/glossary.md) as wire structs.

=======================  =====================================  ======================================
struct                   wire form                              text form
=======================  =====================================  ======================================
:class:`Fqdn`            ``opaque<V>`` ASCII, at most 253 bytes  ``example.com``
:class:`UserId`          ``Fqdn as_domain, opaque user_id[16]``  ``<user uuid>@<domain>``
:class:`ClientId`        ``UserId, opaque client_uuid[16]``      ``<user uuid>.<client uuid>@<domain>``
:class:`QsUid`           ``opaque user_id[16]``                  ``<uuid>``
:class:`QsCid`           ``QsUid, opaque client_id[16]``         ``<qs uid>.<client uuid>``
:class:`GroupId`         ``opaque uuid[16], Fqdn ds_domain``     ``<group uuid>@<domain>``
=======================  =====================================  ======================================

Every domain inside an identifier is the *homeserver* domain (``example.com``), never a service host
name; the services of a homeserver live at ``as.<domain>``, ``ds.<domain>`` and ``qs.<domain>``
(:func:`service_domain`). The MLS ``group_id`` of a Phoenix group is the encoding of its
:class:`GroupId` (docs/decisions.md).

Constructing an invalid identifier raises :class:`~phx.errors.ValidationError`; decoding invalid bytes
raises :class:`~phx.errors.DecodeError`.
"""

from __future__ import annotations

import enum
import re
import uuid
from dataclasses import dataclass
from typing import Self

from phx.codec import Reader, Struct, Writer
from phx.errors import DecodeError, ValidationError

__all__ = [
    "MAX_DOMAIN_LENGTH",
    "ClientId",
    "Fqdn",
    "GroupId",
    "PseudonymousClientId",
    "QsCid",
    "QsUid",
    "Service",
    "UserId",
    "format_uuid",
    "parse_service_domain",
    "parse_uuid",
    "service_domain",
]

#: RFC 1035 limit on a domain name in text form (without a trailing dot).
MAX_DOMAIN_LENGTH = 253
_MAX_LABEL = 63
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")
_UUID_TEXT = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


#: Names that passed :func:`_domain_problem` (a busy homeserver decodes the same few domains in every
#: frame and identifier). Bounded: a peer sending many distinct names only empties it now and then.
_VALID_NAMES: set[str] = set()
#: Decoded :class:`Fqdn` values by their wire bytes (frozen, so one instance can be shared).
_DECODED: dict[bytes, Fqdn] = {}
_CACHE_LIMIT = 4096
#: Decoded :class:`GroupId` values by their MLS ``group_id`` bytes (frozen, shared like ``_DECODED``).
_GROUP_IDS: dict[bytes, GroupId] = {}


def _domain_problem(name: str) -> str | None:
    """Why ``name`` is not a canonical homeserver/host domain, or None when it is."""
    if name in _VALID_NAMES:
        return None
    problem = _check_domain(name)
    if problem is None:
        if len(_VALID_NAMES) >= _CACHE_LIMIT:
            _VALID_NAMES.clear()
        _VALID_NAMES.add(name)
    return problem


def _check_domain(name: str) -> str | None:
    if not name:
        return "domain name is empty"
    if len(name) > MAX_DOMAIN_LENGTH:
        return f"domain name longer than {MAX_DOMAIN_LENGTH} characters"
    labels = name.split(".")
    for label in labels:
        if not label:
            return f"empty label in domain name {name!r}"
        if len(label) > _MAX_LABEL:
            return f"label longer than {_MAX_LABEL} characters in {name!r}"
        if not _LABEL.fullmatch(label):
            return f"invalid label {label!r} in {name!r} (lowercase letters, digits and inner hyphens only)"
    # An all-numeric last label would make IPv4 literals like 127.0.0.1 pass as domains.
    if labels[-1].isdigit():
        return f"{name!r} looks like an IP address, not a domain name"
    return None


def format_uuid(value: uuid.UUID) -> str:
    """The canonical text form: lowercase, hyphenated (8-4-4-4-12)."""
    return str(value)


def parse_uuid(text: str) -> uuid.UUID:
    """Parse the hyphenated 8-4-4-4-12 form (case-insensitive); other spellings are rejected."""
    lowered = text.lower()
    if not _UUID_TEXT.fullmatch(lowered):
        raise ValidationError(f"not a hyphenated UUID: {text!r}")
    return uuid.UUID(lowered)


def _check_uuid(owner: str, name: str, value: object) -> None:
    if not isinstance(value, uuid.UUID):
        raise ValidationError(f"{owner}.{name} must be a uuid.UUID, got {type(value).__name__}")


def _read_uuid(r: Reader) -> uuid.UUID:
    return uuid.UUID(bytes=r.take(16))


@dataclass(frozen=True, slots=True, order=True)
class Fqdn(Struct):
    """A fully qualified domain name in canonical form.

    Canonical means lowercase ASCII labels of 1-63 letters, digits or hyphens (no leading or trailing
    hyphen), joined by single dots, at most 253 characters, no trailing dot. Single-label names such
    as ``localhost`` are allowed (docs/decisions.md); a name whose last label is all digits is not, so
    an IPv4 address is never mistaken for a domain. Internationalised names must be given in their
    ASCII (``xn--``) form. Use :meth:`parse` for human input: it folds case first.
    """

    value: str

    def __post_init__(self) -> None:
        if not isinstance(self.value, str):
            raise ValidationError(f"Fqdn must be a str, got {type(self.value).__name__}")
        problem = _domain_problem(self.value)
        if problem is not None:
            raise ValidationError(problem)

    @classmethod
    def parse(cls, text: str) -> Fqdn:
        """Parse human input: ASCII case is folded; anything else must already be canonical."""
        if not isinstance(text, str) or not text.isascii():
            raise ValidationError(f"domain name must be ASCII: {text!r}")
        return cls(text.lower())

    def _write(self, w: Writer) -> None:
        w.opaque(self.value.encode("ascii"))

    @classmethod
    def _read(cls, r: Reader) -> Self:
        raw = r.opaque(MAX_DOMAIN_LENGTH)
        known = _DECODED.get(raw)
        if known is not None and cls is Fqdn:
            return known  # type: ignore[return-value]
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            raise DecodeError("domain name is not ASCII") from None
        problem = _domain_problem(text)
        if problem is not None:
            # Decoding is strict: a non-canonical spelling (say, uppercase) is not silently folded,
            # since two encodings of one name would break identity comparisons.
            raise DecodeError(problem)
        value = cls(text)
        if cls is Fqdn:
            if len(_DECODED) >= _CACHE_LIMIT:
                _DECODED.clear()
            _DECODED[raw] = value
        return value

    def service(self, service: Service) -> Fqdn:
        """The host name of one of this homeserver's services (``as.<domain>`` etc.)."""
        return service_domain(self, service)

    def __str__(self) -> str:
        return self.value


class Service(enum.StrEnum):
    """The three services of a homeserver; the value is the sub-domain label each is reached at."""

    AS = "as"
    DS = "ds"
    QS = "qs"


def service_domain(domain: Fqdn, service: Service) -> Fqdn:
    """``as.example.com`` for ``(example.com, AS)``; raises ValidationError if the result is too long."""
    return Fqdn(f"{service.value}.{domain.value}")


def parse_service_domain(host: Fqdn) -> tuple[Service, Fqdn]:
    """Split ``qs.example.com`` into ``(Service.QS, example.com)``; ValidationError if not a service host."""
    head, sep, rest = host.value.partition(".")
    if not sep:
        raise ValidationError(f"{host} is not a service host name (as./ds./qs.<domain>)")
    try:
        service = Service(head)
    except ValueError:
        raise ValidationError(f"{host} is not a service host name (as./ds./qs.<domain>)") from None
    return service, Fqdn(rest)


def _split_at(text: str, what: str) -> tuple[str, str]:
    local, sep, domain = text.rpartition("@")
    if not sep or not local:
        raise ValidationError(f"not a {what} (expected <uuid>@<domain>): {text!r}")
    return local, domain


@dataclass(frozen=True, slots=True, order=True)
class UserId(Struct):
    """A user: a UUID qualified by the homeserver domain of the user's AS (book: ``UserId``)."""

    as_domain: Fqdn
    user_id: uuid.UUID

    def __post_init__(self) -> None:
        if not isinstance(self.as_domain, Fqdn):
            raise ValidationError("UserId.as_domain must be an Fqdn")
        _check_uuid("UserId", "user_id", self.user_id)

    @classmethod
    def random(cls, domain: Fqdn) -> UserId:
        return cls(domain, uuid.uuid4())

    @classmethod
    def parse(cls, text: str) -> UserId:
        """Parse ``<uuid>@<domain>``."""
        local, domain = _split_at(text, "user id")
        return cls(Fqdn.parse(domain), parse_uuid(local))

    def _write(self, w: Writer) -> None:
        self.as_domain._write(w)
        w.raw(self.user_id.bytes)

    @classmethod
    def _read(cls, r: Reader) -> Self:
        return cls(Fqdn.read(r), _read_uuid(r))

    def __str__(self) -> str:
        return f"{format_uuid(self.user_id)}@{self.as_domain}"


@dataclass(frozen=True, slots=True, order=True)
class ClientId(Struct):
    """A client of a user (book: ``ClientId``); text form ``<user uuid>.<client uuid>@<domain>``."""

    user_id: UserId
    client_uuid: uuid.UUID

    def __post_init__(self) -> None:
        if not isinstance(self.user_id, UserId):
            raise ValidationError("ClientId.user_id must be a UserId")
        _check_uuid("ClientId", "client_uuid", self.client_uuid)

    @classmethod
    def random(cls, user_id: UserId) -> ClientId:
        return cls(user_id, uuid.uuid4())

    @classmethod
    def parse(cls, text: str) -> ClientId:
        local, domain = _split_at(text, "client id")
        user_part, sep, client_part = local.partition(".")
        if not sep:
            raise ValidationError(f"not a client id (expected <user>.<client>@<domain>): {text!r}")
        return cls(UserId(Fqdn.parse(domain), parse_uuid(user_part)), parse_uuid(client_part))

    @property
    def domain(self) -> Fqdn:
        return self.user_id.as_domain

    def _write(self, w: Writer) -> None:
        self.user_id._write(w)
        w.raw(self.client_uuid.bytes)

    @classmethod
    def _read(cls, r: Reader) -> Self:
        return cls(UserId.read(r), _read_uuid(r))

    def __str__(self) -> str:
        return f"{format_uuid(self.user_id.user_id)}.{format_uuid(self.client_uuid)}@{self.user_id.as_domain}"


@dataclass(frozen=True, slots=True, order=True)
class QsUid(Struct):
    """The id of a QS user record; deliberately unrelated to the :class:`UserId` (no domain)."""

    user_id: uuid.UUID

    def __post_init__(self) -> None:
        _check_uuid("QsUid", "user_id", self.user_id)

    @classmethod
    def random(cls) -> QsUid:
        return cls(uuid.uuid4())

    @classmethod
    def parse(cls, text: str) -> QsUid:
        return cls(parse_uuid(text))

    def _write(self, w: Writer) -> None:
        w.raw(self.user_id.bytes)

    @classmethod
    def _read(cls, r: Reader) -> Self:
        return cls(_read_uuid(r))

    def __str__(self) -> str:
        return format_uuid(self.user_id)


@dataclass(frozen=True, slots=True, order=True)
class PseudonymousClientId(Struct):
    """A client record inside a QS user record (book: ``PseudonymousClientId``, a.k.a. QsCid)."""

    qs_uid: QsUid
    client_id: uuid.UUID

    def __post_init__(self) -> None:
        if not isinstance(self.qs_uid, QsUid):
            raise ValidationError("PseudonymousClientId.qs_uid must be a QsUid")
        _check_uuid("PseudonymousClientId", "client_id", self.client_id)

    @classmethod
    def random(cls, qs_uid: QsUid) -> PseudonymousClientId:
        return cls(qs_uid, uuid.uuid4())

    @classmethod
    def parse(cls, text: str) -> PseudonymousClientId:
        user_part, sep, client_part = text.partition(".")
        if not sep:
            raise ValidationError(f"not a QS client id (expected <qs uid>.<client uuid>): {text!r}")
        return cls(QsUid(parse_uuid(user_part)), parse_uuid(client_part))

    def _write(self, w: Writer) -> None:
        self.qs_uid._write(w)
        w.raw(self.client_id.bytes)

    @classmethod
    def _read(cls, r: Reader) -> Self:
        return cls(QsUid.read(r), _read_uuid(r))

    def __str__(self) -> str:
        return f"{self.qs_uid}.{format_uuid(self.client_id)}"


QsCid = PseudonymousClientId


@dataclass(frozen=True, slots=True, order=True)
class GroupId(Struct):
    """A group, qualified by the homeserver domain of the DS that owns it.

    The MLS ``group_id`` of the group is ``GroupId.encode()``, so any party holding an MLS message
    can tell which DS to contact (``ds.<ds_domain>``) by decoding it with :meth:`from_mls`.
    """

    group_uuid: uuid.UUID
    ds_domain: Fqdn

    def __post_init__(self) -> None:
        _check_uuid("GroupId", "group_uuid", self.group_uuid)
        if not isinstance(self.ds_domain, Fqdn):
            raise ValidationError("GroupId.ds_domain must be an Fqdn")

    @classmethod
    def random(cls, domain: Fqdn) -> GroupId:
        return cls(uuid.uuid4(), domain)

    @classmethod
    def parse(cls, text: str) -> GroupId:
        """Parse ``<uuid>@<domain>``."""
        local, domain = _split_at(text, "group id")
        return cls(parse_uuid(local), Fqdn.parse(domain))

    @classmethod
    def from_mls(cls, group_id: bytes) -> GroupId:
        """Decode an MLS ``group_id``; DecodeError if it is not a Phoenix group id. Decoded once per
        distinct id (a busy group's every message names it; the DS and the QS on both sides of federation
        look it up); bounded like the domain caches, and bytes that fail are never remembered."""
        gid = _GROUP_IDS.get(group_id)
        if gid is None:
            gid = GroupId.decode(group_id)
            if len(_GROUP_IDS) >= _CACHE_LIMIT:
                _GROUP_IDS.clear()
            _GROUP_IDS[group_id] = gid
        return gid

    def to_mls(self) -> bytes:
        return self.encode()

    def _write(self, w: Writer) -> None:
        w.raw(self.group_uuid.bytes)
        self.ds_domain._write(w)

    @classmethod
    def _read(cls, r: Reader) -> Self:
        return cls(_read_uuid(r), Fqdn.read(r))

    def __str__(self) -> str:
        return f"{format_uuid(self.group_uuid)}@{self.ds_domain}"
