"""Proposals and Commit (RFC 9420 §12.1, §12.4).

A :class:`Proposal` wraps one body class; ``proposal_type`` follows from the body's class. The RFC's
``Proposal`` select has no default branch and no generic body for other types, so an unknown proposal
type is a :class:`~phx.errors.DecodeError` (capability lists still carry any uint16).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from phx.codec import Reader, Struct, Writer
from phx.errors import DecodeError
from phx.mls.messages.common import (
    Extension,
    ProposalOrRefType,
    ProposalType,
    ProtocolVersion,
    PSKType,
    ResumptionPSKUsage,
    Uint16,
    Uint32,
    read_extensions,
    write_extensions,
)
from phx.mls.messages.leaf import KeyPackage, LeafNode
from phx.mls.messages.tree_structs import UpdatePath

__all__ = [
    "Add",
    "Update",
    "Remove",
    "PreSharedKeyID",
    "PreSharedKey",
    "ReInit",
    "ExternalInit",
    "GroupContextExtensions",
    "ProposalBody",
    "Proposal",
    "ProposalOrRef",
    "Commit",
]


@dataclass(frozen=True, slots=True)
class Add(Struct):
    PROPOSAL_TYPE: ClassVar[ProposalType] = ProposalType.ADD
    key_package: KeyPackage


@dataclass(frozen=True, slots=True)
class Update(Struct):
    PROPOSAL_TYPE: ClassVar[ProposalType] = ProposalType.UPDATE
    leaf_node: LeafNode


@dataclass(frozen=True, slots=True)
class Remove(Struct):
    PROPOSAL_TYPE: ClassVar[ProposalType] = ProposalType.REMOVE
    removed: Uint32


@dataclass(frozen=True, slots=True)
class PreSharedKeyID(Struct):
    """``PreSharedKeyID``: external PSKs set ``psk_id``; resumption PSKs set usage/group id/epoch."""

    psktype: PSKType
    psk_id: bytes | None
    usage: ResumptionPSKUsage | None
    psk_group_id: bytes | None
    psk_epoch: int | None
    psk_nonce: bytes

    def __post_init__(self) -> None:
        ext = self.psktype == PSKType.EXTERNAL
        if (self.psk_id is not None) != ext:
            raise ValueError("PreSharedKeyID: psk_id is present exactly for external PSKs")
        res = (self.usage, self.psk_group_id, self.psk_epoch)
        if not all((v is None) == ext for v in res):
            raise ValueError("PreSharedKeyID: usage/group id/epoch are present exactly for resumption")

    @classmethod
    def external(cls, psk_id: bytes, psk_nonce: bytes) -> PreSharedKeyID:
        return cls(PSKType.EXTERNAL, psk_id, None, None, None, psk_nonce)

    @classmethod
    def resumption(
        cls, usage: ResumptionPSKUsage, psk_group_id: bytes, psk_epoch: int, psk_nonce: bytes
    ) -> PreSharedKeyID:
        return cls(PSKType.RESUMPTION, None, usage, psk_group_id, psk_epoch, psk_nonce)

    def _write(self, w: Writer) -> None:
        w.u8(self.psktype)
        if self.psktype == PSKType.EXTERNAL:
            assert self.psk_id is not None
            w.opaque(self.psk_id)
        else:
            assert self.usage is not None and self.psk_group_id is not None and self.psk_epoch is not None
            w.u8(self.usage)
            w.opaque(self.psk_group_id)
            w.u64(self.psk_epoch)
        w.opaque(self.psk_nonce)

    @classmethod
    def _read(cls, r: Reader) -> PreSharedKeyID:
        t = PSKType.read(r)
        if t == PSKType.EXTERNAL:
            return cls(t, r.opaque(), None, None, None, r.opaque())
        usage = ResumptionPSKUsage.read(r)
        return cls(t, None, usage, r.opaque(), r.u64(), r.opaque())


@dataclass(frozen=True, slots=True)
class PreSharedKey(Struct):
    PROPOSAL_TYPE: ClassVar[ProposalType] = ProposalType.PSK
    psk: PreSharedKeyID


@dataclass(frozen=True, slots=True)
class ReInit(Struct):
    PROPOSAL_TYPE: ClassVar[ProposalType] = ProposalType.REINIT
    group_id: bytes
    version: ProtocolVersion
    cipher_suite: Uint16
    extensions: tuple[Extension, ...]

    def _write(self, w: Writer) -> None:
        w.opaque(self.group_id)
        w.u16(self.version)
        w.u16(self.cipher_suite)
        write_extensions(w, self.extensions)

    @classmethod
    def _read(cls, r: Reader) -> ReInit:
        return cls(r.opaque(), ProtocolVersion.read(r), r.u16(), read_extensions(r))


@dataclass(frozen=True, slots=True)
class ExternalInit(Struct):
    PROPOSAL_TYPE: ClassVar[ProposalType] = ProposalType.EXTERNAL_INIT
    kem_output: bytes


@dataclass(frozen=True, slots=True)
class GroupContextExtensions(Struct):
    PROPOSAL_TYPE: ClassVar[ProposalType] = ProposalType.GROUP_CONTEXT_EXTENSIONS
    extensions: tuple[Extension, ...]

    def _write(self, w: Writer) -> None:
        write_extensions(w, self.extensions)

    @classmethod
    def _read(cls, r: Reader) -> GroupContextExtensions:
        return cls(read_extensions(r))


ProposalBody = Add | Update | Remove | PreSharedKey | ReInit | ExternalInit | GroupContextExtensions

_BODY_READERS: dict[int, type[ProposalBody]] = {
    ProposalType.ADD: Add,
    ProposalType.UPDATE: Update,
    ProposalType.REMOVE: Remove,
    ProposalType.PSK: PreSharedKey,
    ProposalType.REINIT: ReInit,
    ProposalType.EXTERNAL_INIT: ExternalInit,
    ProposalType.GROUP_CONTEXT_EXTENSIONS: GroupContextExtensions,
}


@dataclass(frozen=True, slots=True)
class Proposal(Struct):
    """``Proposal``: ``proposal_type`` then the body selected by it."""

    value: ProposalBody

    @property
    def proposal_type(self) -> ProposalType:
        return self.value.PROPOSAL_TYPE

    def _write(self, w: Writer) -> None:
        w.u16(self.value.PROPOSAL_TYPE)
        self.value._write(w)

    @classmethod
    def _read(cls, r: Reader) -> Proposal:
        t = r.u16()
        body_cls = _BODY_READERS.get(t)
        if body_cls is None:
            raise DecodeError(f"unknown ProposalType value {t}")
        return cls(body_cls._read(r))


@dataclass(frozen=True, slots=True)
class ProposalOrRef(Struct):
    """``ProposalOrRef``: an inline :class:`Proposal` or a ProposalRef (``bytes``)."""

    value: Proposal | bytes

    @property
    def type(self) -> ProposalOrRefType:
        return ProposalOrRefType.REFERENCE if isinstance(self.value, bytes) else ProposalOrRefType.PROPOSAL

    @property
    def proposal(self) -> Proposal | None:
        v = self.value
        return v if isinstance(v, Proposal) else None

    @property
    def reference(self) -> bytes | None:
        v = self.value
        return v if isinstance(v, bytes) else None

    def _write(self, w: Writer) -> None:
        v = self.value
        if isinstance(v, bytes):
            w.u8(ProposalOrRefType.REFERENCE)
            w.opaque(v)
        else:
            w.u8(ProposalOrRefType.PROPOSAL)
            v._write(w)

    @classmethod
    def _read(cls, r: Reader) -> ProposalOrRef:
        t = ProposalOrRefType.read(r)
        if t == ProposalOrRefType.PROPOSAL:
            return cls(Proposal._read(r))
        return cls(r.opaque())


@dataclass(frozen=True, slots=True)
class Commit(Struct):
    proposals: tuple[ProposalOrRef, ...]
    path: UpdatePath | None

    def _write(self, w: Writer) -> None:
        w.vector(self.proposals, Writer.struct)
        w.optional(self.path, Writer.struct)

    @classmethod
    def _read(cls, r: Reader) -> Commit:
        return cls(r.vector(ProposalOrRef._read), r.optional(UpdatePath._read))
