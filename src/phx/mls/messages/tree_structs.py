"""Tree structs (RFC 9420 §7, §8.1): ParentNode, Node, the ratchet tree vector, UpdatePath, GroupContext.

A ratchet tree is ``tuple[Node | None, ...]`` (``optional<Node> ratchet_tree<V>``), blank nodes as
``None``. Codecs are hand-written because trees are large.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from struct import pack

from phx.codec import Reader, Struct, Writer, decode_all
from phx.errors import DecodeError
from phx.mls.messages import fastwire
from phx.mls.messages.common import (
    Extension,
    HPKECiphertext,
    NodeType,
    ProtocolVersion,
    Uint16,
    Uint64,
    read_extensions,
    write_extensions,
)
from phx.mls.messages.leaf import LeafNode, parse_leaf_node

__all__ = [
    "ParentNode",
    "parse_parent_node",
    "Node",
    "RatchetTree",
    "encode_ratchet_tree",
    "decode_ratchet_tree",
    "read_ratchet_tree",
    "write_ratchet_tree",
    "UpdatePathNode",
    "UpdatePath",
    "GroupContext",
    "tree_hash_input_leaf",
    "tree_hash_input_parent",
    "parent_hash_input",
]


def _read_u32(r: Reader) -> int:
    return r.u32()


@dataclass(frozen=True, slots=True)
class ParentNode(Struct):
    encryption_key: bytes
    parent_hash: bytes
    unmerged_leaves: tuple[int, ...]

    def _write(self, w: Writer) -> None:
        w.opaque(self.encryption_key)
        w.opaque(self.parent_hash)
        w.opaque(pack(f">{len(self.unmerged_leaves)}I", *self.unmerged_leaves))

    @classmethod
    def _read(cls, r: Reader) -> ParentNode:
        if type(r.data) is bytes:
            node, r.pos = parse_parent_node(r.data, r.pos, r.end)
            return node
        return cls(r.opaque(), r.opaque(), r.vector(_read_u32))


def parse_parent_node(data: bytes, pos: int, end: int) -> tuple[ParentNode, int]:
    encryption_key, pos = fastwire.opaque(data, pos, end)
    parent_hash, pos = fastwire.opaque(data, pos, end)
    unmerged, pos = fastwire.u32_list(data, pos, end)
    return ParentNode(encryption_key, parent_hash, unmerged), pos


@dataclass(frozen=True, slots=True)
class Node(Struct):
    """``Node``: a leaf or a parent, told apart by ``node_type`` on the wire."""

    value: LeafNode | ParentNode

    @property
    def node_type(self) -> NodeType:
        return NodeType.LEAF if isinstance(self.value, LeafNode) else NodeType.PARENT

    @property
    def leaf_node(self) -> LeafNode | None:
        v = self.value
        return v if isinstance(v, LeafNode) else None

    @property
    def parent_node(self) -> ParentNode | None:
        v = self.value
        return v if isinstance(v, ParentNode) else None

    def _write(self, w: Writer) -> None:
        v = self.value
        if isinstance(v, LeafNode):
            w.u8(NodeType.LEAF)
        else:
            w.u8(NodeType.PARENT)
        v._write(w)

    @classmethod
    def _read(cls, r: Reader) -> Node:
        t = r.u8()
        if t == NodeType.LEAF:
            return cls(LeafNode._read(r))
        if t == NodeType.PARENT:
            return cls(ParentNode._read(r))
        raise DecodeError(f"unknown NodeType value {t}")


#: ``optional<Node> ratchet_tree<V>``: the tree in array order, blanks as ``None``.
RatchetTree = tuple[Node | None, ...]


def _write_optional_node(w: Writer, node: Node | None) -> None:
    if node is None:
        w.buf.append(0)
    else:
        w.buf.append(1)
        node._write(w)


def _read_optional_node(r: Reader) -> Node | None:
    flag = r.u8()
    if flag == 0:
        return None
    if flag == 1:
        return Node._read(r)
    raise DecodeError(f"invalid optional presence octet {flag}")


def write_ratchet_tree(w: Writer, nodes: Sequence[Node | None]) -> None:
    inner = Writer()
    buf = inner.buf
    for node in nodes:
        if node is None:
            buf.append(0)
            continue
        v = node.value
        if isinstance(v, LeafNode):
            buf += b"\x01\x01"
            buf += v.encoded()
        else:
            buf += b"\x01\x02"
            v._write(inner)
    w.opaque(bytes(buf))


def read_ratchet_tree(r: Reader) -> RatchetTree:
    data = r.data
    if type(data) is not bytes:
        return r.vector(_read_optional_node)
    pos, stop = fastwire.vl(data, r.pos, r.end)
    out: list[Node | None] = []
    append = out.append
    while pos < stop:
        flag = data[pos]
        if flag == 0:
            append(None)
            pos += 1
            continue
        if flag != 1:
            raise DecodeError(f"invalid optional presence octet {flag}")
        if pos + 1 >= stop:
            raise DecodeError("truncated integer")
        node_type = data[pos + 1]
        if node_type == NodeType.LEAF:
            leaf, pos = parse_leaf_node(data, pos + 2, stop)
            append(Node(leaf))
        elif node_type == NodeType.PARENT:
            parent, pos = parse_parent_node(data, pos + 2, stop)
            append(Node(parent))
        else:
            raise DecodeError(f"unknown NodeType value {node_type}")
    r.pos = stop
    return tuple(out)


def encode_ratchet_tree(nodes: Sequence[Node | None]) -> bytes:
    """``optional<Node> ratchet_tree<V>`` (also the ratchet_tree extension's data)."""
    w = Writer()
    write_ratchet_tree(w, nodes)
    return w.getvalue()


def decode_ratchet_tree(data: bytes) -> RatchetTree:
    """Decode ``optional<Node> ratchet_tree<V>``; structural checks (e.g. leaves at even indices) are the
    tree module's job."""
    return decode_all(read_ratchet_tree, data)


@dataclass(frozen=True, slots=True)
class UpdatePathNode(Struct):
    encryption_key: bytes
    encrypted_path_secret: tuple[HPKECiphertext, ...]

    def _write(self, w: Writer) -> None:
        w.opaque(self.encryption_key)
        w.vector(self.encrypted_path_secret, Writer.struct)

    @classmethod
    def _read(cls, r: Reader) -> UpdatePathNode:
        return cls(r.opaque(), r.vector(HPKECiphertext._read))


@dataclass(frozen=True, slots=True)
class UpdatePath(Struct):
    leaf_node: LeafNode
    nodes: tuple[UpdatePathNode, ...]

    def _write(self, w: Writer) -> None:
        self.leaf_node._write(w)
        w.vector(self.nodes, Writer.struct)

    @classmethod
    def _read(cls, r: Reader) -> UpdatePath:
        return cls(LeafNode._read(r), r.vector(UpdatePathNode._read))


@dataclass(frozen=True, slots=True)
class GroupContext(Struct):
    version: ProtocolVersion
    cipher_suite: Uint16
    group_id: bytes
    epoch: Uint64
    tree_hash: bytes
    confirmed_transcript_hash: bytes
    extensions: tuple[Extension, ...]

    def _write(self, w: Writer) -> None:
        w.u16(self.version)
        w.u16(self.cipher_suite)
        w.opaque(self.group_id)
        w.u64(self.epoch)
        w.opaque(self.tree_hash)
        w.opaque(self.confirmed_transcript_hash)
        write_extensions(w, self.extensions)

    @classmethod
    def _read(cls, r: Reader) -> GroupContext:
        return cls(
            ProtocolVersion.read(r),
            r.u16(),
            r.opaque(),
            r.u64(),
            r.opaque(),
            r.opaque(),
            read_extensions(r),
        )


def tree_hash_input_leaf(leaf_index: int, leaf: LeafNode | None) -> bytes:
    """``TreeHashInput`` for a leaf: node_type leaf, then ``LeafNodeHashInput``."""
    w = Writer()
    w.u8(NodeType.LEAF)
    w.u32(leaf_index)
    w.optional(leaf, Writer.struct)
    return w.getvalue()


def tree_hash_input_parent(parent: ParentNode | None, left_hash: bytes, right_hash: bytes) -> bytes:
    """``TreeHashInput`` for a parent: node_type parent, then ``ParentNodeHashInput``."""
    w = Writer()
    w.u8(NodeType.PARENT)
    w.optional(parent, Writer.struct)
    w.opaque(left_hash)
    w.opaque(right_hash)
    return w.getvalue()


def parent_hash_input(encryption_key: bytes, parent_hash: bytes, original_sibling_tree_hash: bytes) -> bytes:
    """``ParentHashInput`` (RFC 9420 §7.9)."""
    w = Writer()
    w.opaque(encryption_key)
    w.opaque(parent_hash)
    w.opaque(original_sibling_tree_hash)
    return w.getvalue()
