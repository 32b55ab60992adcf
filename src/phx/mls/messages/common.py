"""Enums and small building blocks shared by every RFC 9420 wire struct.

Closed enums (the RFC's ``select`` has no default branch, so an unknown value leaves the rest of the
message unparseable) are :class:`~phx.codec.WireEnum` subclasses and reject unknown values on decode.
Open registries (cipher suites, extension types, proposal types inside capability lists, credential
types) stay plain ``int`` on the wire so GREASE and future values survive a decode/encode round trip;
the ``IntEnum`` classes below only name the well-known values.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Annotated

from phx.codec import U8, U16, U32, U64, Reader, Struct, WireEnum, Writer

__all__ = [
    "Uint8",
    "Uint16",
    "Uint32",
    "Uint64",
    "ProtocolVersion",
    "CredentialType",
    "ExtensionType",
    "ProposalType",
    "WireFormat",
    "ContentType",
    "SenderType",
    "LeafNodeSource",
    "NodeType",
    "PSKType",
    "ResumptionPSKUsage",
    "ProposalOrRefType",
    "Credential",
    "Capabilities",
    "Lifetime",
    "Extension",
    "HPKECiphertext",
    "read_extensions",
    "write_extensions",
    "read_u16_list",
]

Uint8 = Annotated[int, U8]
Uint16 = Annotated[int, U16]
Uint32 = Annotated[int, U32]
Uint64 = Annotated[int, U64]


class ProtocolVersion(WireEnum):
    """uint16; only mls10 exists, and a message of another version cannot be parsed further."""

    MLS10 = 1


class CredentialType(enum.IntEnum):
    """Names for well-known credential types; the wire field stays an open ``int``."""

    BASIC = 1
    X509 = 2


class ExtensionType(enum.IntEnum):
    """Names for well-known extension types (RFC 9420 §17.3); the wire field stays an open ``int``."""

    APPLICATION_ID = 1
    RATCHET_TREE = 2
    REQUIRED_CAPABILITIES = 3
    EXTERNAL_PUB = 4
    EXTERNAL_SENDERS = 5


class ProposalType(WireEnum):
    """uint16. Closed on decode of a Proposal: the RFC defines no generic body for unknown types."""

    ADD = 1
    UPDATE = 2
    REMOVE = 3
    PSK = 4
    REINIT = 5
    EXTERNAL_INIT = 6
    GROUP_CONTEXT_EXTENSIONS = 7


class WireFormat(WireEnum):
    PUBLIC_MESSAGE = 1
    PRIVATE_MESSAGE = 2
    WELCOME = 3
    GROUP_INFO = 4
    KEY_PACKAGE = 5


class ContentType(WireEnum):
    __wire_width__ = U8
    APPLICATION = 1
    PROPOSAL = 2
    COMMIT = 3


class SenderType(WireEnum):
    __wire_width__ = U8
    MEMBER = 1
    EXTERNAL = 2
    NEW_MEMBER_PROPOSAL = 3
    NEW_MEMBER_COMMIT = 4


class LeafNodeSource(WireEnum):
    __wire_width__ = U8
    KEY_PACKAGE = 1
    UPDATE = 2
    COMMIT = 3


class NodeType(WireEnum):
    __wire_width__ = U8
    LEAF = 1
    PARENT = 2


class PSKType(WireEnum):
    __wire_width__ = U8
    EXTERNAL = 1
    RESUMPTION = 2


class ResumptionPSKUsage(WireEnum):
    __wire_width__ = U8
    APPLICATION = 1
    REINIT = 2
    BRANCH = 3


class ProposalOrRefType(WireEnum):
    __wire_width__ = U8
    PROPOSAL = 1
    REFERENCE = 2


def read_u16_list(r: Reader) -> tuple[int, ...]:
    return r.vector(Reader.u16)


def _write_u16_list(w: Writer, items: tuple[int, ...]) -> None:
    w.opaque(b"".join(v.to_bytes(2, "big") for v in items))


@dataclass(frozen=True, slots=True)
class Credential(Struct):
    """``Credential``: a type plus a type-dependent body.

    basic carries ``identity``; x509 carries ``certificates`` (each ``cert_data``); any other type carries
    its body as one ``opaque<V>`` in ``data`` (how a custom type such as the Phoenix leaf credential
    plugs in). Fields that do not belong to the type must stay empty.
    """

    credential_type: int
    identity: bytes = b""
    certificates: tuple[bytes, ...] = ()
    data: bytes = b""

    def __post_init__(self) -> None:
        t = self.credential_type
        if not 0 <= t <= 0xFFFF:
            raise ValueError(f"credential type {t} out of range")
        if t == CredentialType.BASIC:
            ok = not self.certificates and not self.data
        elif t == CredentialType.X509:
            ok = not self.identity and not self.data
        else:
            ok = not self.identity and not self.certificates
        if not ok:
            raise ValueError(f"credential fields do not match credential type {t}")

    @classmethod
    def basic(cls, identity: bytes) -> Credential:
        return cls(CredentialType.BASIC, identity=identity)

    @classmethod
    def x509(cls, certificates: tuple[bytes, ...]) -> Credential:
        return cls(CredentialType.X509, certificates=certificates)

    @classmethod
    def custom(cls, credential_type: int, data: bytes) -> Credential:
        return cls(credential_type, data=data)

    def _write(self, w: Writer) -> None:
        t = self.credential_type
        w.u16(t)
        if t == CredentialType.BASIC:
            w.opaque(self.identity)
        elif t == CredentialType.X509:
            w.vector(self.certificates, Writer.opaque)
        else:
            w.opaque(self.data)

    @classmethod
    def _read(cls, r: Reader) -> Credential:
        t = r.u16()
        if t == CredentialType.BASIC:
            return cls(t, identity=r.opaque())
        if t == CredentialType.X509:
            return cls(t, certificates=r.vector(Reader.opaque))
        return cls(t, data=r.opaque())


@dataclass(frozen=True, slots=True)
class Capabilities(Struct):
    """All lists are open uint16 registries (GREASE values included), kept as plain ints."""

    versions: tuple[int, ...] = (ProtocolVersion.MLS10,)
    cipher_suites: tuple[int, ...] = ()
    extensions: tuple[int, ...] = ()
    proposals: tuple[int, ...] = ()
    credentials: tuple[int, ...] = ()

    def _write(self, w: Writer) -> None:
        _write_u16_list(w, self.versions)
        _write_u16_list(w, self.cipher_suites)
        _write_u16_list(w, self.extensions)
        _write_u16_list(w, self.proposals)
        _write_u16_list(w, self.credentials)

    @classmethod
    def _read(cls, r: Reader) -> Capabilities:
        return cls(read_u16_list(r), read_u16_list(r), read_u16_list(r), read_u16_list(r), read_u16_list(r))


@dataclass(frozen=True, slots=True)
class Lifetime(Struct):
    not_before: Uint64
    not_after: Uint64

    def _write(self, w: Writer) -> None:
        w.u64(self.not_before)
        w.u64(self.not_after)

    @classmethod
    def _read(cls, r: Reader) -> Lifetime:
        return cls(r.u64(), r.u64())


@dataclass(frozen=True, slots=True)
class Extension(Struct):
    """An extension of any type; unknown types are kept as they came."""

    extension_type: Uint16
    extension_data: bytes

    def _write(self, w: Writer) -> None:
        w.u16(self.extension_type)
        w.opaque(self.extension_data)

    @classmethod
    def _read(cls, r: Reader) -> Extension:
        return cls(r.u16(), r.opaque())


def read_extensions(r: Reader) -> tuple[Extension, ...]:
    return r.vector(Extension._read)


def write_extensions(w: Writer, exts: tuple[Extension, ...]) -> None:
    inner = Writer()
    for e in exts:
        inner.u16(e.extension_type)
        inner.opaque(e.extension_data)
    w.opaque(bytes(inner.buf))


@dataclass(frozen=True, slots=True)
class HPKECiphertext(Struct):
    kem_output: bytes
    ciphertext: bytes

    def _write(self, w: Writer) -> None:
        w.opaque(self.kem_output)
        w.opaque(self.ciphertext)

    @classmethod
    def _read(cls, r: Reader) -> HPKECiphertext:
        return cls(r.opaque(), r.opaque())
