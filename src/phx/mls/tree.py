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

Every node also carries two subtree counters, kept exact by each write in O(log n): the number of
non-blank nodes and the number of non-blank leaves below it (itself included). With them resolution
never enters a blank subtree (a 10,000-member tree has 16,384 leaf slots, a quarter of them blank), the
filtered direct path is O(log n), and the leftmost blank leaf, the rightmost non-blank node and the
truncation point are found by one descent instead of a scan.

Join-time validation (§12.4.3.1) lives in :mod:`phx.mls.tree_validation`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import replace
from itertools import islice
from operator import add
from typing import cast

from phx.codec import Writer
from phx.crypto import CipherSuite
from phx.errors import DecodeError, MlsError
from phx.mls import tree_math as tm
from phx.mls.messages import LeafNode, LeafNodeSource, Node, ParentNode, decode_ratchet_tree

__all__ = ["HASH_CACHE_FLOOR", "RatchetTree", "TreeNode"]

TreeNode = LeafNode | ParentNode

#: Lowest level whose hashes :meth:`RatchetTree.export_hash_cache` writes by default. Levels 0 and 1 are
#: three quarters of the nodes; a missing one costs one hash (a leaf) or three (a level-1 subtree) when a
#: write next to it needs it, so dropping them makes the export 4x smaller for O(1) extra work per path.
HASH_CACHE_FLOOR = 2


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


def _subtree_counts(nodes: Sequence[TreeNode | None]) -> tuple[list[int], list[int]]:
    """(non-blank nodes, non-blank leaves) in the subtree of every node of a full tree, level by level."""
    fill = [0 if n is None else 1 for n in nodes]
    members = [0] * len(nodes)
    members[0::2] = fill[0::2]
    width = len(nodes)
    k = 1
    while (1 << k) - 1 < width:
        # Level k: nodes 2**k - 1 + j * 2**(k+1); children 2**(k-1) to either side.
        start, step, half = (1 << k) - 1, 1 << (k + 1), 1 << (k - 1)
        lo, hi = start - half, start + half
        fill[start::step] = list(map(add, map(add, fill[start::step], fill[lo::step]), fill[hi::step]))
        members[start::step] = list(map(add, members[lo::step], members[hi::step]))
        k += 1
    return fill, members


class RatchetTree:
    """A full binary tree of optional nodes; every mutation keeps the hash cache and key indexes exact."""

    __slots__ = ("suite", "_nodes", "_hashes", "_enc", "_sig", "_fill", "_members", "_hash_floor")

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
        # At levels >= _hash_floor a node without a cached hash has no cached ancestor (see _touch).
        self._hash_floor = 0
        for x, node in enumerate(self._nodes):
            if node is None:
                continue
            if isinstance(node, LeafNode) != (x % 2 == 0):
                kind = "leaf" if x % 2 == 0 else "parent"
                raise MlsError(f"node {x} must be a {kind} node")
            self._index_add(x, node)
        self._fill, self._members = _subtree_counts(self._nodes)

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
        return [None if n is None else Node(n) for n in self._nodes[: self._end()]]

    def _end(self) -> int:
        """One past the last non-blank node in array order (0 if every node is blank); O(log n)."""
        nodes, fill = self._nodes, self._fill
        x = len(nodes) >> 1
        if not fill[x]:
            return 0
        step = (x + 1) >> 1
        while True:
            # The subtree of x holds a non-blank node: the rightmost is in its right subtree, x itself,
            # or (failing both) its left subtree.
            if step and fill[x + step]:
                x += step
            elif nodes[x] is not None:
                return x + 1
            else:
                x -= step
            step >>= 1

    def write(self, w: Writer) -> None:
        inner = Writer()
        buf = inner.buf
        for node in islice(self._nodes, self._end()):
            # optional<Node>: presence octet, then node_type (1 leaf, 2 parent) and the node.
            if node is None:
                buf.append(0)
            elif isinstance(node, LeafNode):
                buf += b"\x01\x01"
                buf += node.encoded()
            else:
                buf += b"\x01\x02"
                key, ph = node.encryption_key, node.parent_hash
                if len(key) < 0x40 and len(ph) < 0x40 and not node.unmerged_leaves:
                    # The common parent, spelled out (1-byte varint lengths, empty unmerged_leaves):
                    # ParentNode._write costs three Writer calls per node.
                    buf.append(len(key))
                    buf += key
                    buf.append(len(ph))
                    buf += ph
                    buf.append(0)
                else:
                    node._write(inner)
        w.opaque(bytes(buf))

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
        t._fill = list(self._fill)
        t._members = list(self._members)
        t._hash_floor = self._hash_floor
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
        """Node indices of the resolution of ``x`` (§4.1.1), leaving out leaves listed in ``exclude``.

        Blank subtrees are never entered (their counters are zero): the cost is the number of nodes on
        the paths from ``x`` down to the resolution's nodes, at most O(r log n) for a result of size r
        and O(r) when the non-blank nodes are dense, whatever the number of blank nodes.
        """
        nodes, fill = self._nodes, self._fill
        out: list[int] = []
        if not fill[x]:
            return out
        stack = [x]
        pop, push = stack.pop, stack.append
        while stack:
            y = pop()
            node = nodes[y]
            if node is None:
                # Blank parent with a non-blank descendant; right pushed first so left comes out first.
                half = (~y & (y + 1)) >> 1
                if fill[y + half]:
                    push(y + half)
                if fill[y - half]:
                    push(y - half)
            elif isinstance(node, ParentNode):
                out.append(y)
                if node.unmerged_leaves:
                    out.extend(2 * u for u in node.unmerged_leaves if u not in exclude)
            elif (y >> 1) not in exclude:
                out.append(y)
        return out

    def has_nonblank(self, x: int) -> bool:
        """Whether the subtree of ``x`` holds a non-blank node (its resolution is non-empty); O(1)."""
        return self._fill[x] > 0

    def filtered_direct_path(self, leaf_index: int) -> list[int]:
        """Direct path minus nodes whose copath child has an empty resolution (§4.1.2); O(log n)."""
        return [p for p, _ in self.filtered_path_with_copath(leaf_index)]

    def filtered_path_with_copath(self, leaf_index: int) -> list[tuple[int, int]]:
        """(filtered direct path node, its copath child) pairs from the leaf up; O(log n)."""
        fill = self._fill
        child = 2 * leaf_index
        out: list[tuple[int, int]] = []
        for p in tm.direct_path(child, self.n_leaves):
            sib = 2 * p - child
            if fill[sib]:
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

    def _touch(self, x: int, delta: int) -> None:
        """After a write at ``x``: drop the cached hashes of ``x`` and its ancestors and add ``delta``
        (+1 blank to non-blank, -1 back, 0 same) to their subtree counters. O(log n)."""
        hashes, fill = self._hashes, self._fill
        hashes[x] = None
        r = len(hashes) >> 1
        k = (~x & (x + 1)).bit_length() - 1
        if delta:
            fill[x] += delta
            members = self._members if k == 0 else None
            if members is not None:
                members[x] += delta
            while x != r:
                # The parent of x sets bit k and clears bit k+1 if it was set.
                x = (x | (1 << k)) ^ (((x >> (k + 1)) & 1) << (k + 1))
                k += 1
                hashes[x] = None
                fill[x] += delta
                if members is not None:
                    members[x] += delta
            return
        floor = self._hash_floor
        while x != r:
            x = (x | (1 << k)) ^ (((x >> (k + 1)) & 1) << (k + 1))
            k += 1
            if hashes[x] is None and k >= floor:
                # At levels >= floor every ancestor of a node without a hash has none either.
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
        self._touch(x, (node is not None) - (old is not None))

    def set_leaf(self, leaf_index: int, leaf: LeafNode | None) -> None:
        self.set_node(2 * leaf_index, leaf)

    def blank_direct_path(self, leaf_index: int) -> None:
        for p in self.direct_path(leaf_index):
            if self._nodes[p] is not None:
                self.set_node(p, None)

    def _extend(self) -> None:
        """Double the number of leaves: the old tree becomes the left subtree of a new blank root."""
        old = len(self._nodes)
        root = old >> 1
        pad: list[None] = [None] * (old + 1)
        self._nodes.extend(pad)
        self._hashes.extend(pad)
        # The new root (index ``old``) has the old tree below it and a blank right subtree.
        for counts in (self._fill, self._members):
            grow = [0] * (old + 1)
            grow[0] = counts[root]
            counts.extend(grow)

    def truncate(self) -> None:
        """Halve the tree while its right half holds no non-blank leaf (§12.1.3); keeps one leaf."""
        nodes, members = self._nodes, self._members
        old_root = len(nodes) >> 1
        n = self.n_leaves
        while n > 1 and not members[n - 1 + (n >> 1)]:
            n >>= 1
        width = tm.node_width(n)
        if width == len(nodes):
            return
        if self._fill[old_root] != self._fill[n - 1]:
            # Non-blank parents are dropped with the blank leaves under them (only their keys matter).
            for x in range(width, len(nodes)):
                node = nodes[x]
                if node is not None:
                    self._index_drop(x, node)
        for array in (nodes, self._hashes, self._fill, members):
            del array[width:]

    def leftmost_blank_leaf(self) -> int:
        """Index of the leftmost blank leaf, ``n_leaves`` if there is none; O(log n)."""
        members = self._members
        n = self.n_leaves
        x = n - 1
        if members[x] == n:
            return n
        # A child subtree of a level-k node is 2**(k-1) away and has 2**(k-1) leaf slots.
        step = n >> 1
        while step:
            if members[x - step] < step:
                x -= step
            else:
                x += step
            step >>= 1
        return x >> 1

    def free_leaf(self) -> int:
        """Index of the leftmost blank leaf, doubling the tree first if there is none; O(log n).

        Also where an external joiner's UpdatePath goes (§12.4.3.2) before its leaf is set.
        """
        index = self.leftmost_blank_leaf()
        if index == self.n_leaves:
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
        half = (~x & (x + 1)) >> 1
        left = child_hash(x - half)
        right = child_hash(x + half)
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

    # --- hash cache persistence ------------------------------------------------------------------
    def export_hash_cache(self, floor: int = HASH_CACHE_FLOOR) -> bytes:
        """The tree hashes of every node at level >= ``floor`` (computing missing ones), to restore this
        tree later without rehashing it (:meth:`import_hash_cache`).

        Format: ``u8 floor``, then the hashes level by level from ``floor`` to the root, each level in
        array order (``floor`` is lowered to the root's level for trees smaller than that).
        """
        hashes = self._hashes
        width = len(hashes)
        top = tm.level(width >> 1)
        floor = min(floor, top)
        self.tree_hash()
        out = bytearray((floor,))
        for k in range(floor, top + 1):
            start, step = (1 << k) - 1, 1 << (k + 1)
            level = hashes[start::step]
            if None in level:
                # Below self._hash_floor hashes may be missing even with the root's computed.
                level = [self.node_tree_hash(x) for x in range(start, width, step)]
            out += b"".join(cast(list[bytes], level))
        return bytes(out)

    def import_hash_cache(self, data: bytes, expected_root: bytes | None = None) -> bool:
        """Install hashes written by :meth:`export_hash_cache` for this same tree, replacing the cache.

        **Trusted input only.** The hashes are not recomputed (that is the cost the cache saves), so a
        wrong cache means wrong tree hashes, GroupContexts and parent hashes. Use it only for state this
        party wrote itself and got back with integrity: the DS's group state (stored encrypted under a
        key the DS does not keep, so only ciphertexts the DS produced decrypt), a client's own group
        state. Never for hashes that come from a peer: a tree received in a Welcome or GroupInfo is
        always hashed from its nodes.

        Checked cheaply: the shape (floor and length fit this tree; :class:`DecodeError` otherwise) and,
        with ``expected_root`` (the GroupContext's tree_hash), the cached root. A root that differs
        leaves the cache as it was (hashes are then computed from the nodes, as without a cache) and
        returns False; True once installed.
        """
        nh = self.suite.nh
        width = len(self._nodes)
        top = tm.level(width >> 1)
        if not data or data[0] > top:
            raise DecodeError("tree hash cache: bad floor level")
        floor = data[0]
        sizes = [(width + 1) >> (k + 1) for k in range(floor, top + 1)]
        if len(data) != 1 + sum(sizes) * nh:
            raise DecodeError("tree hash cache does not fit the tree")
        if expected_root is not None and data[-nh:] != expected_root:
            return False
        hashes: list[bytes | None] = [None] * width
        pos = 1
        for k, m in zip(range(floor, top + 1), sizes, strict=True):
            hashes[(1 << k) - 1 :: 1 << (k + 1)] = [data[i : i + nh] for i in range(pos, pos + m * nh, nh)]
            pos += m * nh
        self._hashes = hashes
        # Every node at level >= floor now has its hash, so the invalidation rule of _touch holds there.
        self._hash_floor = floor
        return True

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
