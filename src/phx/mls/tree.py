"""The public ratchet tree (RFC 9420 §4.1, §7): contents, resolution, evolution, tree and parent hashes.

:class:`RatchetTree` holds only public data: the DS and every member use it alike; private keys live in
:class:`phx.mls.treekem.PrivateTree`. Nodes are stored by array index (leaf ``i`` at ``2*i``) as
:class:`LeafNode` / :class:`ParentNode` values or ``None`` for blank, in a list always exactly as long as
a full tree (``2*n_leaves - 1``, ``n_leaves`` a power of two).

Tree hashes are cached per node and invalidated along the direct path of every write, so a commit that
rewrites one path costs O(log n) hash computations instead of O(n). Extending or truncating the tree
keeps the cached hashes valid: in the array layout the old tree is exactly the left subtree of the new
one and a node's hash depends only on its subtree. Encryption and signature keys are indexed so the
uniqueness checks of §7.3 do not scan the tree.

Join-time validation (§12.4.3.1) lives in :mod:`phx.mls.tree_validation`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import replace

from phx.codec import Writer
from phx.crypto import CipherSuite
from phx.errors import MlsError
from phx.mls import tree_math as tm
from phx.mls.messages import LeafNode, LeafNodeSource, Node, ParentNode, decode_ratchet_tree

__all__ = ["RatchetTree", "TreeNode"]

TreeNode = LeafNode | ParentNode


def _opaque(b: bytes) -> bytes:
    n = len(b)
    if n < 0x40:
        return bytes((n,)) + b
    if n < 0x4000:
        return (0x4000 | n).to_bytes(2, "big") + b
    return (0x80000000 | n).to_bytes(4, "big") + b


def _leaf_range(x: int) -> tuple[int, int]:
    """First and last leaf index under node ``x``."""
    half = (1 << tm.level(x)) - 1
    return (x - half) >> 1, (x + half) >> 1


class RatchetTree:
    """A full binary tree of optional nodes; every mutation keeps the hash cache and key indexes exact."""

    __slots__ = ("suite", "_nodes", "_hashes", "_enc", "_sig")

    def __init__(self, suite: CipherSuite, nodes: Sequence[TreeNode | None]) -> None:
        """Build from array-ordered node values; pads with blanks to a full tree.

        Raises :class:`MlsError` if a leaf value sits at a parent index or vice versa.
        """
        if not nodes:
            raise MlsError("a ratchet tree has at least one leaf")
        n_leaves = 1
        while tm.node_width(n_leaves) < len(nodes):
            n_leaves *= 2
        self.suite = suite
        self._nodes: list[TreeNode | None] = list(nodes)
        self._nodes.extend([None] * (tm.node_width(n_leaves) - len(nodes)))
        self._hashes: list[bytes | None] = [None] * len(self._nodes)
        self._enc: dict[bytes, int] = {}
        self._sig: dict[bytes, int] = {}
        for x, node in enumerate(self._nodes):
            if node is None:
                continue
            if isinstance(node, LeafNode) != (x % 2 == 0):
                kind = "leaf" if x % 2 == 0 else "parent"
                raise MlsError(f"node {x} must be a {kind} node")
            self._index_add(x, node)

    # --- construction and wire form ---------------------------------------------------------------
    @classmethod
    def one_member(cls, suite: CipherSuite, leaf: LeafNode) -> RatchetTree:
        return cls(suite, [leaf])

    @classmethod
    def from_wire_nodes(cls, suite: CipherSuite, nodes: Sequence[Node | None]) -> RatchetTree:
        """From a decoded ``ratchet_tree`` vector: the last entry must be non-blank (§12.4.3.3)."""
        if not nodes or nodes[-1] is None:
            raise MlsError("ratchet tree must end with a non-blank node")
        return cls(suite, [None if n is None else n.value for n in nodes])

    @classmethod
    def decode(cls, suite: CipherSuite, data: bytes) -> RatchetTree:
        """Decode ``optional<Node> ratchet_tree<V>`` (e.g. the ratchet_tree extension's data)."""
        return cls.from_wire_nodes(suite, decode_ratchet_tree(data))

    def wire_nodes(self) -> list[Node | None]:
        """The ``ratchet_tree`` vector: array order, trailing blanks dropped."""
        end = len(self._nodes)
        while end > 0 and self._nodes[end - 1] is None:
            end -= 1
        return [None if n is None else Node(n) for n in self._nodes[:end]]

    def write(self, w: Writer) -> None:
        end = len(self._nodes)
        while end > 0 and self._nodes[end - 1] is None:
            end -= 1
        inner = Writer()
        for x in range(end):
            node = self._nodes[x]
            if node is None:
                inner.u8(0)
            else:
                inner.u8(1)
                inner.u8(1 if x % 2 == 0 else 2)
                node._write(inner)
        w.opaque(bytes(inner.buf))

    def encode(self) -> bytes:
        w = Writer()
        self.write(w)
        return w.getvalue()

    def copy(self) -> RatchetTree:
        """An independent tree sharing the (immutable) node values and the cached hashes."""
        t = RatchetTree.__new__(RatchetTree)
        t.suite = self.suite
        t._nodes = list(self._nodes)
        t._hashes = list(self._hashes)
        t._enc = dict(self._enc)
        t._sig = dict(self._sig)
        return t

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RatchetTree) and self._nodes == other._nodes

    __hash__ = None  # type: ignore[assignment]

    # --- reading ----------------------------------------------------------------------------------
    @property
    def n_leaves(self) -> int:
        return (len(self._nodes) + 1) // 2

    @property
    def width(self) -> int:
        return len(self._nodes)

    @property
    def root(self) -> int:
        return tm.root(self.n_leaves)

    def node(self, x: int) -> TreeNode | None:
        return self._nodes[x]

    def leaf(self, leaf_index: int) -> LeafNode | None:
        if not 0 <= leaf_index < self.n_leaves:
            return None
        node = self._nodes[2 * leaf_index]
        assert node is None or isinstance(node, LeafNode)
        return node

    def parent_node(self, x: int) -> ParentNode | None:
        node = self._nodes[x]
        assert node is None or isinstance(node, ParentNode)
        return node

    def require_leaf(self, leaf_index: int) -> LeafNode:
        leaf = self.leaf(leaf_index)
        if leaf is None:
            raise MlsError(f"leaf {leaf_index} is blank or outside the tree")
        return leaf

    def is_blank(self, x: int) -> bool:
        return self._nodes[x] is None

    def leaves(self) -> Iterator[tuple[int, LeafNode]]:
        """Non-blank leaves as (leaf index, LeafNode), left to right."""
        nodes = self._nodes
        for x in range(0, len(nodes), 2):
            node = nodes[x]
            if node is not None:
                assert isinstance(node, LeafNode)
                yield x >> 1, node

    def parents(self) -> Iterator[tuple[int, ParentNode]]:
        """Non-blank parent nodes as (node index, ParentNode)."""
        nodes = self._nodes
        for x in range(1, len(nodes), 2):
            node = nodes[x]
            if node is not None:
                assert isinstance(node, ParentNode)
                yield x, node

    def member_count(self) -> int:
        return len(self._sig)

    def encryption_key_owner(self, key: bytes) -> int | None:
        """Node index holding this HPKE public key, if any."""
        return self._enc.get(key)

    def signature_key_owner(self, key: bytes) -> int | None:
        """Leaf index holding this signature key, if any."""
        return self._sig.get(key)

    def direct_path(self, leaf_index: int) -> list[int]:
        return tm.direct_path(2 * leaf_index, self.n_leaves)

    def copath(self, leaf_index: int) -> list[int]:
        return tm.copath(2 * leaf_index, self.n_leaves)

    def resolution(self, x: int, exclude: Collection[int] = ()) -> list[int]:
        """Node indices of the resolution of ``x`` (§4.1.1), leaving out leaves listed in ``exclude``."""
        out: list[int] = []
        self._resolve(x, exclude, out)
        return out

    def _resolve(self, x: int, exclude: Collection[int], out: list[int]) -> None:
        node = self._nodes[x]
        if x & 1 == 0:
            if node is not None and (x >> 1) not in exclude:
                out.append(x)
            return
        if node is not None:
            assert isinstance(node, ParentNode)
            out.append(x)
            out.extend(2 * u for u in node.unmerged_leaves if u not in exclude)
            return
        self._resolve(tm.left(x), exclude, out)
        self._resolve(tm.right(x), exclude, out)

    def has_nonblank(self, x: int) -> bool:
        """Whether the resolution of ``x`` is non-empty (stops at the first non-blank node)."""
        if self._nodes[x] is not None:
            return True
        if x & 1 == 0:
            return False
        return self.has_nonblank(tm.left(x)) or self.has_nonblank(tm.right(x))

    def filtered_direct_path(self, leaf_index: int) -> list[int]:
        """Direct path minus nodes whose copath child has an empty resolution (§4.1.2)."""
        x = 2 * leaf_index
        path = tm.direct_path(x, self.n_leaves)
        out: list[int] = []
        child = x
        for p in path:
            sib = tm.right(p) if child < p else tm.left(p)
            if self.has_nonblank(sib):
                out.append(p)
            child = p
        return out

    def filtered_path_with_copath(self, leaf_index: int) -> list[tuple[int, int]]:
        """(filtered direct path node, its copath child) pairs from the leaf up."""
        x = 2 * leaf_index
        out: list[tuple[int, int]] = []
        child = x
        for p in tm.direct_path(x, self.n_leaves):
            sib = tm.right(p) if child < p else tm.left(p)
            if self.has_nonblank(sib):
                out.append((p, sib))
            child = p
        return out

    # --- writing ----------------------------------------------------------------------------------
    def _index_add(self, x: int, node: TreeNode) -> None:
        self._enc.setdefault(node.encryption_key, x)
        if isinstance(node, LeafNode):
            self._sig.setdefault(node.signature_key, x >> 1)

    def _index_drop(self, x: int, node: TreeNode) -> None:
        if self._enc.get(node.encryption_key) == x:
            del self._enc[node.encryption_key]
        if isinstance(node, LeafNode) and self._sig.get(node.signature_key) == x >> 1:
            del self._sig[node.signature_key]

    def _invalidate(self, x: int) -> None:
        hashes = self._hashes
        hashes[x] = None
        r = len(self._nodes) >> 1
        n = self.n_leaves
        while x != r:
            x = tm.parent(x, n)
            if hashes[x] is None:
                # Everything above an invalid node is already invalid.
                break
            hashes[x] = None

    def set_node(self, x: int, node: TreeNode | None) -> None:
        """Raw write of one node (leaf values at even, parent values at odd indices)."""
        if node is not None and isinstance(node, LeafNode) != (x % 2 == 0):
            raise MlsError(f"node {x}: wrong node type")
        old = self._nodes[x]
        if old is node:
            return
        if old is not None:
            self._index_drop(x, old)
        self._nodes[x] = node
        if node is not None:
            self._index_add(x, node)
        self._invalidate(x)

    def set_leaf(self, leaf_index: int, leaf: LeafNode | None) -> None:
        self.set_node(2 * leaf_index, leaf)

    def blank_direct_path(self, leaf_index: int) -> None:
        for p in self.direct_path(leaf_index):
            if self._nodes[p] is not None:
                self.set_node(p, None)

    def _extend(self) -> None:
        """Double the number of leaves: the old tree becomes the left subtree of a new blank root."""
        old = len(self._nodes)
        self._nodes.extend([None] * (old + 1))
        self._hashes.extend([None] * (old + 1))

    def truncate(self) -> None:
        """Halve the tree while its right half holds no non-blank leaf (§12.1.3); keeps one leaf."""
        nodes = self._nodes
        last = len(nodes) - 1
        while last > 0 and nodes[last] is None:
            last -= 2
        n = self.n_leaves
        while n > 1 and (last >> 1) < n // 2:
            n //= 2
        width = tm.node_width(n)
        if width == len(nodes):
            return
        for x in range(width, len(nodes)):
            node = nodes[x]
            if node is not None:
                self._index_drop(x, node)
        del nodes[width:]
        del self._hashes[width:]

    def free_leaf(self) -> int:
        """Index of the leftmost blank leaf, doubling the tree first if there is none.

        Also where an external joiner's UpdatePath goes (§12.4.3.2) before its leaf is set.
        """
        nodes = self._nodes
        index = next((x >> 1 for x in range(0, len(nodes), 2) if nodes[x] is None), None)
        if index is None:
            index = self.n_leaves
            self._extend()
        return index

    def add_leaf(self, leaf: LeafNode) -> int:
        """Add a member at the leftmost blank leaf (extending if none) and record it as unmerged above."""
        nodes = self._nodes
        index = self.free_leaf()
        for p in self.direct_path(index):
            parent = nodes[p]
            if parent is not None:
                assert isinstance(parent, ParentNode)
                unmerged = tuple(sorted({*parent.unmerged_leaves, index}))
                self.set_node(p, replace(parent, unmerged_leaves=unmerged))
        self.set_leaf(index, leaf)
        return index

    def update_leaf(self, leaf_index: int, leaf: LeafNode) -> None:
        """Apply an Update proposal: replace the leaf and blank its direct path (§12.1.2)."""
        self.require_leaf(leaf_index)
        self.set_leaf(leaf_index, leaf)
        self.blank_direct_path(leaf_index)

    def remove_leaf(self, leaf_index: int) -> None:
        """Apply a Remove proposal: blank the leaf and its direct path, then truncate (§12.1.3)."""
        self.require_leaf(leaf_index)
        self.set_leaf(leaf_index, None)
        self.blank_direct_path(leaf_index)
        self.truncate()

    # --- tree hash (§7.8) -------------------------------------------------------------------------
    def tree_hash(self) -> bytes:
        return self.node_tree_hash(self.root)

    def node_tree_hash(self, x: int) -> bytes:
        h = self._hashes[x]
        if h is None:
            h = self._compute_hash(x, self.node_tree_hash)
            self._hashes[x] = h
        return h

    def _compute_hash(self, x: int, child_hash: Callable[[int], bytes], skip: Collection[int] = ()) -> bytes:
        node = self._nodes[x]
        if x & 1 == 0:
            leaf_index = x >> 1
            head = b"\x01" + leaf_index.to_bytes(4, "big")
            if node is None or leaf_index in skip:
                return self.suite.hash(head + b"\x00")
            return self.suite.hash(head + b"\x01" + node.encode())
        left = child_hash(tm.left(x))
        right = child_hash(tm.right(x))
        if node is None:
            body = b"\x02\x00"
        else:
            assert isinstance(node, ParentNode)
            if skip and any(u in skip for u in node.unmerged_leaves):
                node = replace(node, unmerged_leaves=tuple(u for u in node.unmerged_leaves if u not in skip))
            body = b"\x02\x01" + node.encode()
        return self.suite.hash(body + _opaque(left) + _opaque(right))

    def original_tree_hash(self, x: int, removed_leaves: Collection[int]) -> bytes:
        """Tree hash of ``x`` with ``removed_leaves`` blanked and dropped from unmerged lists (§7.9)."""
        lo, hi = _leaf_range(x)
        if not any(lo <= u <= hi for u in removed_leaves):
            return self.node_tree_hash(x)
        return self._compute_hash(x, lambda c: self.original_tree_hash(c, removed_leaves), removed_leaves)

    # --- parent hash (§7.9) -----------------------------------------------------------------------
    def parent_hash(self, p: int, sibling: int) -> bytes:
        """Parent hash of non-blank parent ``p`` with copath child ``sibling``."""
        node = self._nodes[p]
        if not isinstance(node, ParentNode):
            raise MlsError(f"parent hash of blank node {p}")
        sibling_hash = self.original_tree_hash(sibling, node.unmerged_leaves)
        return self.suite.hash(
            _opaque(node.encryption_key) + _opaque(node.parent_hash) + _opaque(sibling_hash)
        )

    def set_path_parent_hashes(self, leaf_index: int) -> bytes:
        """After a path was written: fill the ``parent_hash`` fields of the filtered direct path, root down.

        Returns the parent hash the sender's leaf must carry (empty if the filtered path is empty).
        Assumes the path's copath children are unchanged since the path was generated, so the original
        sibling tree hash is the current one (the path nodes have no unmerged leaves).
        """
        pairs = self.filtered_path_with_copath(leaf_index)
        above = b""
        for p, sib in reversed(pairs):
            node = self._nodes[p]
            if not isinstance(node, ParentNode):
                raise MlsError(f"node {p} on the filtered direct path is blank")
            if node.parent_hash != above:
                self.set_node(p, replace(node, parent_hash=above))
            above = self.parent_hash(p, sib)
        return above

    def leaf_parent_hash_field(self, x: int) -> bytes | None:
        """The ``parent_hash`` a node carries (None for leaves not created by a commit)."""
        node = self._nodes[x]
        if node is None:
            return None
        if isinstance(node, ParentNode):
            return node.parent_hash
        return node.parent_hash if node.leaf_node_source == LeafNodeSource.COMMIT else None

    def __repr__(self) -> str:
        return f"RatchetTree({self.n_leaves} leaves, {self.member_count()} members)"
