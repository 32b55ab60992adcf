"""LeafNode and KeyPackage (RFC 9420 §7.2, §10) with their to-be-signed encodings.

These are the hottest structs (a 10,000-member ratchet tree holds 10,000 leaves), so their codecs are
written by hand rather than through the generic :class:`~phx.codec.Struct` plan.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from phx.codec import Reader, Struct, Writer
from phx.mls.messages.common import (
    Capabilities,
    Credential,
    Extension,
    LeafNodeSource,
    Lifetime,
    ProtocolVersion,
    Uint16,
    read_extensions,
    write_extensions,
)

__all__ = ["LeafNode", "KeyPackage", "leaf_node_tbs", "key_package_tbs"]


@dataclass(frozen=True, slots=True)
class LeafNode(Struct):
    """``LeafNode``. ``lifetime`` is set exactly for source key_package, ``parent_hash`` for commit."""

    encryption_key: bytes
    signature_key: bytes
    credential: Credential
    capabilities: Capabilities
    leaf_node_source: LeafNodeSource
    lifetime: Lifetime | None
    parent_hash: bytes | None
    extensions: tuple[Extension, ...]
    signature: bytes

    def __post_init__(self) -> None:
        src = self.leaf_node_source
        if (self.lifetime is not None) != (src == LeafNodeSource.KEY_PACKAGE):
            raise ValueError("LeafNode: lifetime is present exactly for source key_package")
        if (self.parent_hash is not None) != (src == LeafNodeSource.COMMIT):
            raise ValueError("LeafNode: parent_hash is present exactly for source commit")

    def _write_unsigned(self, w: Writer) -> None:
        w.opaque(self.encryption_key)
        w.opaque(self.signature_key)
        self.credential._write(w)
        self.capabilities._write(w)
        src = self.leaf_node_source
        w.u8(src)
        if src == LeafNodeSource.KEY_PACKAGE:
            assert self.lifetime is not None
            self.lifetime._write(w)
        elif src == LeafNodeSource.COMMIT:
            assert self.parent_hash is not None
            w.opaque(self.parent_hash)
        write_extensions(w, self.extensions)

    def _write(self, w: Writer) -> None:
        self._write_unsigned(w)
        w.opaque(self.signature)

    @classmethod
    def _read(cls, r: Reader) -> LeafNode:
        encryption_key = r.opaque()
        signature_key = r.opaque()
        credential = Credential._read(r)
        capabilities = Capabilities._read(r)
        src = LeafNodeSource.read(r)
        lifetime: Lifetime | None = None
        parent_hash: bytes | None = None
        if src == LeafNodeSource.KEY_PACKAGE:
            lifetime = Lifetime._read(r)
        elif src == LeafNodeSource.COMMIT:
            parent_hash = r.opaque()
        extensions = read_extensions(r)
        signature = r.opaque()
        return cls(
            encryption_key,
            signature_key,
            credential,
            capabilities,
            src,
            lifetime,
            parent_hash,
            extensions,
            signature,
        )

    def tbs(self, group_id: bytes | None = None, leaf_index: int | None = None) -> bytes:
        return leaf_node_tbs(self, group_id, leaf_index)

    def with_signature(self, signature: bytes) -> LeafNode:
        return replace(self, signature=signature)


def leaf_node_tbs(leaf: LeafNode, group_id: bytes | None = None, leaf_index: int | None = None) -> bytes:
    """The ``LeafNodeTBS`` bytes; update and commit sources bind the leaf to ``group_id``/``leaf_index``."""
    w = Writer()
    leaf._write_unsigned(w)
    if leaf.leaf_node_source != LeafNodeSource.KEY_PACKAGE:
        if group_id is None or leaf_index is None:
            raise ValueError("LeafNodeTBS for update/commit sources needs group_id and leaf_index")
        w.opaque(group_id)
        w.u32(leaf_index)
    return w.getvalue()


@dataclass(frozen=True, slots=True)
class KeyPackage(Struct):
    version: ProtocolVersion
    cipher_suite: Uint16
    init_key: bytes
    leaf_node: LeafNode
    extensions: tuple[Extension, ...]
    signature: bytes

    def _write_unsigned(self, w: Writer) -> None:
        w.u16(self.version)
        w.u16(self.cipher_suite)
        w.opaque(self.init_key)
        self.leaf_node._write(w)
        write_extensions(w, self.extensions)

    def _write(self, w: Writer) -> None:
        self._write_unsigned(w)
        w.opaque(self.signature)

    @classmethod
    def _read(cls, r: Reader) -> KeyPackage:
        return cls(
            ProtocolVersion.read(r),
            r.u16(),
            r.opaque(),
            LeafNode._read(r),
            read_extensions(r),
            r.opaque(),
        )

    def tbs(self) -> bytes:
        return key_package_tbs(self)

    def with_signature(self, signature: bytes) -> KeyPackage:
        return replace(self, signature=signature)


def key_package_tbs(kp: KeyPackage) -> bytes:
    """The ``KeyPackageTBS`` bytes (everything but the signature)."""
    w = Writer()
    kp._write_unsigned(w)
    return w.getvalue()
