"""Joining structs (RFC 9420 §8.4, §12.4.3): GroupInfo, GroupSecrets, Welcome, PSKLabel."""

from __future__ import annotations

from dataclasses import dataclass, replace

from phx.codec import Reader, Struct, Writer
from phx.mls.messages.common import (
    Extension,
    HPKECiphertext,
    Uint16,
    Uint32,
    read_extensions,
    write_extensions,
)
from phx.mls.messages.proposals import PreSharedKeyID
from phx.mls.messages.tree_structs import GroupContext

__all__ = [
    "GroupInfo",
    "group_info_tbs",
    "PathSecret",
    "GroupSecrets",
    "EncryptedGroupSecrets",
    "Welcome",
    "PSKLabel",
]


@dataclass(frozen=True, slots=True)
class GroupInfo(Struct):
    group_context: GroupContext
    extensions: tuple[Extension, ...]
    confirmation_tag: bytes
    signer: Uint32
    signature: bytes

    def _write_unsigned(self, w: Writer) -> None:
        self.group_context._write(w)
        write_extensions(w, self.extensions)
        w.opaque(self.confirmation_tag)
        w.u32(self.signer)

    def _write(self, w: Writer) -> None:
        self._write_unsigned(w)
        w.opaque(self.signature)

    @classmethod
    def _read(cls, r: Reader) -> GroupInfo:
        return cls(GroupContext._read(r), read_extensions(r), r.opaque(), r.u32(), r.opaque())

    def tbs(self) -> bytes:
        return group_info_tbs(self)

    def with_signature(self, signature: bytes) -> GroupInfo:
        return replace(self, signature=signature)


def group_info_tbs(gi: GroupInfo) -> bytes:
    """The ``GroupInfoTBS`` bytes (everything but the signature)."""
    w = Writer()
    gi._write_unsigned(w)
    return w.getvalue()


@dataclass(frozen=True, slots=True)
class PathSecret(Struct):
    path_secret: bytes


@dataclass(frozen=True, slots=True)
class GroupSecrets(Struct):
    joiner_secret: bytes
    path_secret: PathSecret | None
    psks: tuple[PreSharedKeyID, ...]


@dataclass(frozen=True, slots=True)
class EncryptedGroupSecrets(Struct):
    new_member: bytes
    encrypted_group_secrets: HPKECiphertext


@dataclass(frozen=True, slots=True)
class Welcome(Struct):
    cipher_suite: Uint16
    secrets: tuple[EncryptedGroupSecrets, ...]
    encrypted_group_info: bytes


@dataclass(frozen=True, slots=True)
class PSKLabel(Struct):
    id: PreSharedKeyID
    index: Uint16
    count: Uint16
