"""LeafNode and KeyPackage (RFC 9420 §7.2, §10) with their to-be-signed encodings.

These are the hottest structs (a 10,000-member ratchet tree holds 10,000 leaves), so their codecs are
written by hand: decoding from ``bytes`` goes through the position-based parser below, and a LeafNode
keeps its own encoding (the decoded slice, or the first encode) so re-encoding a tree and building tree
hash inputs do not re-serialize unchanged leaves.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from phx.codec import Reader, Struct, Writer, encode_varint
from phx.errors import DecodeError
from phx.mls.messages import fastwire
from phx.mls.messages.common import (
    Capabilities,
    Credential,
    CredentialType,
    Extension,
    LeafNodeSource,
    Lifetime,
    ProtocolVersion,
    Uint16,
    read_extensions,
    write_extensions,
)

__all__ = ["LeafNode", "KeyPackage", "leaf_node_tbs", "key_package_tbs", "parse_leaf_node"]


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
    # The wire encoding, filled lazily; not part of the value.
    _encoded: bytes | None = field(default=None, init=False, repr=False, compare=False, hash=False)

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
        w.buf += self.encoded()

    def encoded(self) -> bytes:
        """The wire encoding (cached)."""
        enc = self._encoded
        if enc is None:
            w = Writer()
            self._write_unsigned(w)
            w.opaque(self.signature)
            enc = bytes(w.buf)
            object.__setattr__(self, "_encoded", enc)
        return enc

    def encode(self) -> bytes:
        return self.encoded()

    @classmethod
    def _read(cls, r: Reader) -> LeafNode:
        data = r.data
        if type(data) is bytes:
            leaf, r.pos = parse_leaf_node(data, r.pos, r.end)
            return leaf
        start = r.pos
        leaf = cls._read_slow(r)
        object.__setattr__(leaf, "_encoded", bytes(r.data[start : r.pos]))
        return leaf

    @classmethod
    def _read_slow(cls, r: Reader) -> LeafNode:
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


def _parse_credential(data: bytes, pos: int, end: int) -> tuple[Credential, int]:
    if pos + 2 > end:
        raise DecodeError("truncated integer")
    t = (data[pos] << 8) | data[pos + 1]
    pos += 2
    if t == CredentialType.X509:
        start, stop = fastwire.vl(data, pos, end)
        certs = []
        while start < stop:
            cert, start = fastwire.opaque(data, start, stop)
            certs.append(cert)
        return Credential(t, certificates=tuple(certs)), stop
    body, pos = fastwire.opaque(data, pos, end)
    if t == CredentialType.BASIC:
        return Credential(t, identity=body), pos
    return Credential(t, data=body), pos


def _parse_extensions(data: bytes, pos: int, end: int) -> tuple[tuple[Extension, ...], int]:
    start, stop = fastwire.vl(data, pos, end)
    if start == stop:
        return (), stop
    exts = []
    while start < stop:
        if start + 2 > stop:
            raise DecodeError("truncated integer")
        t = (data[start] << 8) | data[start + 1]
        body, start = fastwire.opaque(data, start + 2, stop)
        exts.append(Extension(t, body))
    return tuple(exts), stop


# Most leaves of a group advertise the same capabilities: share one immutable object per encoding.
_CAPS_CACHE: dict[bytes, Capabilities] = {}


def _parse_capabilities(raw: bytes) -> Capabilities:
    caps = _CAPS_CACHE.get(raw)
    if caps is None:
        u16_list, n = fastwire.u16_list, len(raw)
        versions, pos = u16_list(raw, 0, n)
        suites, pos = u16_list(raw, pos, n)
        ext_types, pos = u16_list(raw, pos, n)
        proposals, pos = u16_list(raw, pos, n)
        credentials, _ = u16_list(raw, pos, n)
        caps = Capabilities(versions, suites, ext_types, proposals, credentials)
        if len(_CAPS_CACHE) >= 256:
            _CAPS_CACHE.clear()
        _CAPS_CACHE[raw] = caps
    return caps


def parse_leaf_node(data: bytes, pos: int, end: int) -> tuple[LeafNode, int]:
    """Parse one LeafNode from ``data[pos:end]``; return it and the position after it."""
    first = pos
    encryption_key, pos = fastwire.opaque(data, pos, end)
    signature_key, pos = fastwire.opaque(data, pos, end)
    credential, pos = _parse_credential(data, pos, end)
    caps_start = pos
    for _ in range(5):
        pos = fastwire.vl(data, pos, end)[1]
    capabilities = _parse_capabilities(data[caps_start:pos])
    if pos >= end:
        raise DecodeError("truncated integer")
    src_value = data[pos]
    pos += 1
    lifetime: Lifetime | None = None
    parent_hash: bytes | None = None
    if src_value == 1:
        if pos + 16 > end:
            raise DecodeError("truncated integer")
        lifetime = Lifetime(
            int.from_bytes(data[pos : pos + 8], "big"), int.from_bytes(data[pos + 8 : pos + 16], "big")
        )
        pos += 16
    elif src_value == 3:
        parent_hash, pos = fastwire.opaque(data, pos, end)
    elif src_value != 2:
        raise DecodeError(f"unknown LeafNodeSource value {src_value}")
    extensions, pos = _parse_extensions(data, pos, end)
    signature, pos = fastwire.opaque(data, pos, end)
    leaf = LeafNode(
        encryption_key,
        signature_key,
        credential,
        capabilities,
        _SOURCES[src_value],
        lifetime,
        parent_hash,
        extensions,
        signature,
    )
    object.__setattr__(leaf, "_encoded", data[first:pos])
    return leaf, pos


_SOURCES = {s.value: s for s in LeafNodeSource}


def leaf_node_tbs(leaf: LeafNode, group_id: bytes | None = None, leaf_index: int | None = None) -> bytes:
    """The ``LeafNodeTBS`` bytes; update and commit sources bind the leaf to ``group_id``/``leaf_index``."""
    w = Writer()
    # Everything but the trailing signature<V> is the unsigned part.
    sig = leaf.signature
    w.buf += leaf.encoded()[: -(len(sig) + len(encode_varint(len(sig))))]
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
