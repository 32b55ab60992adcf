from __future__ import annotations

import random
from dataclasses import replace
from typing import Any, cast

import pytest

from phx.crypto import SUITE_1, CipherSuite
from phx.errors import DecodeError, MlsError
from phx.mls import tree_math as tm
from phx.mls.messages import (
    Capabilities,
    Credential,
    LeafNode,
    LeafNodeSource,
    Lifetime,
    Node,
    ParentNode,
    encode_ratchet_tree,
)
from phx.mls.tree import HASH_CACHE_FLOOR, RatchetTree
from phx.mls.tree_validation import check_leaf_keys_unique, check_leaf_node, validate_tree

CS = SUITE_1
GROUP_ID = b"test group"


def make_key_package_leaf(cs: CipherSuite, name: str) -> tuple[LeafNode, bytes, bytes]:
    """A signed key_package-source leaf; returns (leaf, encryption private key, signature private key)."""
    enc_priv, enc_pub = cs.generate_hpke_key_pair()
    sig_priv, sig_pub = cs.generate_signature_key_pair()
    unsigned = LeafNode(
        enc_pub,
        sig_pub,
        Credential.basic(name.encode()),
        Capabilities(cipher_suites=(1,), credentials=(1,)),
        LeafNodeSource.KEY_PACKAGE,
        Lifetime(0, 2**63),
        None,
        (),
        b"",
    )
    sig = cs.sign_with_label(sig_priv, b"LeafNodeTBS", unsigned.tbs())
    return unsigned.with_signature(sig), enc_priv, sig_priv


def fake_leaf(i: int) -> LeafNode:
    """An unsigned leaf with distinct keys, for structure-only tests."""
    return LeafNode(
        b"enc%d" % i,
        b"sig%d" % i,
        Credential.basic(b"m%d" % i),
        Capabilities(credentials=(1,)),
        LeafNodeSource.KEY_PACKAGE,
        Lifetime(0, 1),
        None,
        (),
        b"",
    )


def fake_parent(x: int, unmerged: tuple[int, ...] = ()) -> ParentNode:
    return ParentNode(b"penc%d" % x, b"", unmerged)


def build(spec: list[Any]) -> RatchetTree:
    """Tree from array spec: int i at even index = fake_leaf(i); str at odd index = parent; None blank."""
    nodes: list[LeafNode | ParentNode | None] = []
    for x, s in enumerate(spec):
        if s is None:
            nodes.append(None)
        elif x % 2 == 0:
            nodes.append(fake_leaf(s))
        else:
            nodes.append(fake_parent(x, tuple(s) if isinstance(s, list) else ()))
    return RatchetTree(CS, nodes)


# --- structure -----------------------------------------------------------------------------------------


def test_pads_to_full_tree() -> None:
    t = build([0, "P", 1, None, 2])
    assert t.n_leaves == 4 and t.width == 7 and t.root == 3
    assert t.leaf(2) is not None and t.leaf(3) is None
    assert [i for i, _ in t.leaves()] == [0, 1, 2]
    assert t.member_count() == 3


def test_node_type_position_is_checked() -> None:
    with pytest.raises(MlsError):
        RatchetTree(CS, [fake_parent(0)])
    with pytest.raises(MlsError):
        RatchetTree(CS, [fake_leaf(0), fake_leaf(1), fake_leaf(2)])
    with pytest.raises(MlsError):
        RatchetTree(CS, [])


def test_resolution_example_from_rfc() -> None:
    # RFC 9420 §4.1.1 figure: leaves A B _ D E F _ H; X[B] at node 3, Y at node 9, other parents blank.
    t = build([0, None, 1, [1], None, None, 3, None, 4, "Y", 5, None, None, None, 7])
    assert t.resolution(3) == [3, 2]
    assert t.resolution(4) == [] and t.resolution(12) == []
    assert t.resolution(7) == [3, 2, 9, 14]
    assert t.resolution(7, exclude={1, 7}) == [3, 9]


def test_filtered_direct_path_example_from_rfc() -> None:
    # RFC 9420 §4.1.2: A B _ _ E F G _; T over A,B; X over E,F; Y; W root; U, V, Z blank.
    t = build([0, "T", 1, None, None, None, None, "W", 4, "X", 5, "Y", 6, None, None])
    assert t.filtered_direct_path(0) == [1, 7]
    assert t.filtered_direct_path(1) == [1, 7]
    assert t.filtered_direct_path(4) == [9, 11, 7]
    assert t.filtered_direct_path(5) == [9, 11, 7]
    assert t.filtered_direct_path(6) == [11, 7]
    assert [p for p, _ in t.filtered_path_with_copath(6)] == [11, 7]
    assert [c for _, c in t.filtered_path_with_copath(6)] == [9, 3]


def test_add_leftmost_blank_and_unmerged_bookkeeping() -> None:
    t = build([0, "P", 1, "R", None, "Q", 3])
    i = t.add_leaf(fake_leaf(9))
    assert i == 2
    assert cast(ParentNode, t.node(5)).unmerged_leaves == (2,)
    assert cast(ParentNode, t.node(3)).unmerged_leaves == (2,)
    assert cast(ParentNode, t.node(1)).unmerged_leaves == ()
    # Full now: the next add doubles the tree and goes to leaf 4.
    assert t.add_leaf(fake_leaf(10)) == 4
    assert t.n_leaves == 8 and t.root == 7
    assert cast(ParentNode, t.node(3)).unmerged_leaves == (2,)


def test_unmerged_leaves_stay_sorted() -> None:
    t = build([0, None, None, [3], 2, None, 3])
    assert t.add_leaf(fake_leaf(7)) == 1
    assert cast(ParentNode, t.node(3)).unmerged_leaves == (1, 3)


def test_remove_blanks_path_and_truncates() -> None:
    t = build([0, "A", 1, "B", 2, "C", 3, "D", 4, None, None, None, None, None, None])
    assert t.n_leaves == 8
    t.remove_leaf(4)
    assert t.n_leaves == 4
    assert t.node(3) is not None  # not on leaf 4's direct path
    t.remove_leaf(3)
    assert t.node(5) is None and t.node(3) is None
    assert t.n_leaves == 4  # leaf 2 is still in the right half
    t.remove_leaf(2)
    assert t.n_leaves == 2
    with pytest.raises(MlsError):
        t.remove_leaf(3)


def test_truncate_stops_at_rightmost_member() -> None:
    t = build([0, None, None, None, None, None, None, None, None, None, 5])
    assert t.n_leaves == 8
    t.remove_leaf(5)
    assert t.n_leaves == 1 and t.width == 1


def test_update_leaf_blanks_direct_path() -> None:
    t = build([0, "A", 1, "B", 2, "C", 3])
    t.update_leaf(1, fake_leaf(11))
    assert t.node(1) is None and t.node(3) is None and t.node(5) is not None
    assert t.leaf(1) == fake_leaf(11)
    with pytest.raises(MlsError):
        t.update_leaf(7, fake_leaf(12))


def test_key_indexes_follow_writes() -> None:
    t = build([0, "A", 1])
    assert t.encryption_key_owner(b"enc1") == 2
    assert t.signature_key_owner(b"sig1") == 1
    assert t.encryption_key_owner(b"penc1") == 1
    t.remove_leaf(1)
    assert t.encryption_key_owner(b"enc1") is None
    assert t.signature_key_owner(b"sig1") is None
    assert t.encryption_key_owner(b"penc1") is None
    with pytest.raises(MlsError):
        check_leaf_keys_unique(t, replace(fake_leaf(5), encryption_key=b"enc0"), None)
    with pytest.raises(MlsError):
        check_leaf_keys_unique(t, replace(fake_leaf(5), signature_key=b"sig0"), None)
    check_leaf_keys_unique(t, replace(fake_leaf(5), signature_key=b"sig0"), 0)
    check_leaf_keys_unique(t, fake_leaf(5), None)


# --- wire form -----------------------------------------------------------------------------------------


def test_encode_drops_trailing_blanks_and_round_trips() -> None:
    t = build([0, "A", 1, None, 2, None, None])
    data = t.encode()
    assert data == encode_ratchet_tree(t.wire_nodes())
    # Parents off the common shape (long keys, unmerged leaves) take the generic encoder.
    t.set_node(3, ParentNode(b"k" * 70, b"h" * 64, (2,)))
    t.set_node(1, ParentNode(b"k" * 63, b"", (0, 1)))
    assert t.encode() == encode_ratchet_tree(t.wire_nodes())
    assert RatchetTree.decode(CS, t.encode()) == t
    t = build([0, "A", 1, None, 2, None, None])
    back = RatchetTree.decode(CS, data)
    assert back == t
    assert len(back.wire_nodes()) == 5
    assert back.encode() == data
    assert back.tree_hash() == t.tree_hash()


def test_decode_rejects_trailing_blank_and_bad_types() -> None:
    nodes: list[Node | None] = [Node(fake_leaf(0)), None]
    with pytest.raises(MlsError):
        RatchetTree.decode(CS, encode_ratchet_tree(nodes))
    with pytest.raises(MlsError):
        RatchetTree.decode(CS, encode_ratchet_tree([Node(fake_parent(0))]))
    with pytest.raises(MlsError):
        RatchetTree.decode(CS, encode_ratchet_tree([]))
    with pytest.raises(DecodeError):
        RatchetTree.decode(CS, b"\x05\x01\x01")


# --- tree hash cache -----------------------------------------------------------------------------------


class CountingSuite:
    def __init__(self, inner: CipherSuite) -> None:
        self.inner = inner
        self.hashes = 0

    def hash(self, data: bytes) -> bytes:
        self.hashes += 1
        return self.inner.hash(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_cache_matches_fresh_computation_under_random_edits() -> None:
    rng = random.Random(7)
    t = build([0])
    serial = 1
    for _ in range(200):
        op = rng.random()
        members = [i for i, _ in t.leaves()]
        if op < 0.45 or len(members) < 2:
            t.add_leaf(fake_leaf(serial))
            serial += 1
        elif op < 0.7:
            t.remove_leaf(rng.choice(members[1:]))
        elif op < 0.85:
            t.update_leaf(rng.choice(members), fake_leaf(serial))
            serial += 1
        else:
            # Write a parent path as a commit would.
            i = rng.choice(members)
            t.blank_direct_path(i)
            for p in t.filtered_direct_path(i):
                t.set_node(p, fake_parent(serial))
                serial += 1
        if rng.random() < 0.5:
            assert t.tree_hash() == RatchetTree.decode(CS, t.encode()).tree_hash()
    assert t.tree_hash() == RatchetTree.decode(CS, t.encode()).tree_hash()


def test_path_write_rehashes_only_the_path() -> None:
    counter = CountingSuite(CS)
    nodes: list[LeafNode | ParentNode | None] = []
    for x in range(2 * 1024 - 1):
        nodes.append(fake_leaf(x // 2) if x % 2 == 0 else fake_parent(x))
    t = RatchetTree(cast(CipherSuite, counter), nodes)
    t.tree_hash()
    assert counter.hashes == len(nodes)
    counter.hashes = 0
    t.update_leaf(300, fake_leaf(5000))
    for p in t.filtered_direct_path(300):
        t.set_node(p, fake_parent(p + 10_000))
    t.set_path_parent_hashes(300)
    after = t.tree_hash()
    # 10 parent hashes + 11 tree hashes on the path; nothing proportional to the tree size.
    assert counter.hashes <= 3 * 11
    assert after == RatchetTree.decode(CS, t.encode()).tree_hash()


def test_copy_is_independent() -> None:
    t = build([0, "A", 1])
    h = t.tree_hash()
    c = t.copy()
    c.remove_leaf(1)
    assert t.tree_hash() == h and t.n_leaves == 2
    assert c.n_leaves == 1 and c.tree_hash() != h
    assert t.encryption_key_owner(b"enc1") == 2


def test_original_tree_hash_blanks_unmerged_leaves() -> None:
    # RFC 9420 §7.9 example: Y (node 11) lists F (leaf 5) as unmerged; W's sibling hash drops F.
    blank7: list[Any] = [0] + [None] * 7
    with_f = build([*blank7, 4, None, 5, [5], 6, None, None])
    without_f = build([*blank7, 4, None, None, [], 6, None, None])
    assert with_f.node_tree_hash(11) != without_f.node_tree_hash(11)
    assert with_f.original_tree_hash(11, {5}) == without_f.node_tree_hash(11)
    assert with_f.original_tree_hash(11, {1}) == with_f.node_tree_hash(11)


# --- hash cache export / import -----------------------------------------------------------------------


def full_tree(cs: CipherSuite, n: int) -> RatchetTree:
    return RatchetTree(cs, [fake_leaf(x // 2) if x % 2 == 0 else fake_parent(x) for x in range(2 * n - 1)])


def test_hash_cache_round_trip_spares_rehashing() -> None:
    counter = CountingSuite(CS)
    t = full_tree(CS, 1024)
    cache = t.export_hash_cache()
    assert cache[0] == HASH_CACHE_FLOOR and len(cache) == 1 + 32 * (2047 - 1024 - 512)
    back = RatchetTree.decode(cast(CipherSuite, counter), t.encode())
    assert back.import_hash_cache(cache, t.tree_hash())
    assert back.tree_hash() == t.tree_hash() and counter.hashes == 0
    # A path write then rehashes the path plus the few uncached hashes of levels 0 and 1 beside it.
    back.update_leaf(300, fake_leaf(5000))
    for p in back.filtered_direct_path(300):
        back.set_node(p, fake_parent(p + 10_000))
    back.set_path_parent_hashes(300)
    assert back.tree_hash() == RatchetTree.decode(CS, back.encode()).tree_hash()
    assert counter.hashes <= 3 * 11 + 4
    # Without the cache the same restore hashes all 2,047 nodes.
    counter.hashes = 0
    RatchetTree.decode(cast(CipherSuite, counter), t.encode()).tree_hash()
    assert counter.hashes == 2047


@pytest.mark.parametrize("floor", [0, 1, 2, 5])
def test_imported_cache_stays_exact_under_random_edits(floor: int) -> None:
    rng = random.Random(floor)
    t = full_tree(CS, 64)
    t.remove_leaf(60)
    serial = 1000
    back = RatchetTree.decode(CS, t.encode())
    assert back.import_hash_cache(t.export_hash_cache(floor), t.tree_hash())
    for _ in range(150):
        members = [i for i, _ in back.leaves()]
        op = rng.random()
        if op < 0.3:
            back.add_leaf(fake_leaf(serial))
        elif op < 0.5 and len(members) > 1:
            back.remove_leaf(rng.choice(members[1:]))
        elif op < 0.7:
            back.update_leaf(rng.choice(members), fake_leaf(serial))
        else:
            i = rng.choice(members)
            back.blank_direct_path(i)
            for p in back.filtered_direct_path(i):
                back.set_node(p, fake_parent(serial + p))
        serial += 100
        if rng.random() < 0.3:
            # Re-export and re-import mid-way, at another floor, as a DS does on every request.
            again = RatchetTree.decode(CS, back.encode())
            assert again.import_hash_cache(back.export_hash_cache(rng.randrange(4)), back.tree_hash())
            back = again
        fresh = RatchetTree.decode(CS, back.encode())
        assert back.tree_hash() == fresh.tree_hash()
        x = rng.randrange(back.width)
        assert back.node_tree_hash(x) == fresh.node_tree_hash(x)


def test_export_computes_missing_hashes_below_the_imported_floor() -> None:
    t = full_tree(CS, 16)
    back = RatchetTree.decode(CS, t.encode())
    back.import_hash_cache(t.export_hash_cache(3))
    assert back.export_hash_cache(0) == t.export_hash_cache(0)


def test_small_trees_export_down_to_their_root() -> None:
    for n in (1, 2):
        t = full_tree(CS, n)
        cache = t.export_hash_cache()
        assert cache[0] == n - 1 and cache[-32:] == t.tree_hash()
        back = RatchetTree.decode(CS, t.encode())
        assert back.import_hash_cache(cache, t.tree_hash()) and back.tree_hash() == t.tree_hash()


def test_hash_cache_shape_and_root_are_checked() -> None:
    counter = CountingSuite(CS)
    t = full_tree(CS, 8)
    cache = t.export_hash_cache()
    back = RatchetTree.decode(cast(CipherSuite, counter), t.encode())
    for bad in (b"", cache[:-1], cache + b"\x00", bytes([4]) + cache[1:], bytes([1]) + cache[1:]):
        with pytest.raises(DecodeError):
            back.import_hash_cache(bad)
    assert not back.import_hash_cache(cache, bytes(32))
    # A cache whose root is not the expected one is ignored: the hashes come from the nodes.
    wrong = cache[:-32] + bytes(32)
    assert not back.import_hash_cache(wrong, t.tree_hash())
    assert back.tree_hash() == t.tree_hash() and counter.hashes == 15
    # A cache of another tree of the same shape is not detectable without a root to compare.
    other = full_tree(CS, 8)
    other.update_leaf(3, fake_leaf(99))
    assert RatchetTree.decode(CS, t.encode()).import_hash_cache(other.export_hash_cache())


# --- subtree counters: resolution, filtered paths, free leaf, truncation ---------------------------------


def naive_resolution(t: RatchetTree, x: int, exclude: frozenset[int] = frozenset()) -> list[int]:
    """§4.1.1 verbatim, walking every node (the reference for the counter-based resolution)."""
    node = t.node(x)
    if x % 2 == 0:
        return [] if node is None or x // 2 in exclude else [x]
    if node is not None:
        assert isinstance(node, ParentNode)
        return [x] + [2 * u for u in node.unmerged_leaves if u not in exclude]
    return naive_resolution(t, tm.left(x), exclude) + naive_resolution(t, tm.right(x), exclude)


def check_against_naive(t: RatchetTree, rng: random.Random) -> None:
    members = [i for i, _ in t.leaves()]
    exclude = frozenset(rng.sample(members, min(2, len(members))))
    for x in range(t.width):
        assert t.resolution(x) == naive_resolution(t, x), x
        assert t.resolution(x, exclude) == naive_resolution(t, x, exclude), x
        assert t.has_nonblank(x) == any(t.node(y) is not None for y in range(t.width) if _under(y, x))
    for i in members:
        naive_path = [
            p
            for p in t.direct_path(i)
            if naive_resolution(t, tm.sibling(_child_on_path(t, i, p), t.n_leaves))
        ]
        assert t.filtered_direct_path(i) == naive_path
    blank = [i for i in range(t.n_leaves) if t.leaf(i) is None]
    assert t.leftmost_blank_leaf() == (blank[0] if blank else t.n_leaves)
    nodes = [t.node(x) for x in range(t.width)]
    while nodes and nodes[-1] is None:
        nodes.pop()
    assert len(t.wire_nodes()) == len(nodes)
    assert t.encode() == encode_ratchet_tree(t.wire_nodes())


def _under(y: int, x: int) -> bool:
    lo, hi = x - (1 << tm.level(x)) + 1, x + (1 << tm.level(x)) - 1
    return lo <= y <= hi


def _child_on_path(t: RatchetTree, leaf: int, p: int) -> int:
    """The node of ``leaf``'s path (the leaf itself included) whose parent is ``p``."""
    chain = [2 * leaf, *t.direct_path(leaf)]
    return chain[chain.index(p) - 1]


def test_counters_match_naive_walks_under_random_edits() -> None:
    rng = random.Random(11)
    t = build([0])
    serial = 1
    for step in range(300):
        op = rng.random()
        members = [i for i, _ in t.leaves()]
        if op < 0.4 or len(members) < 2:
            index = t.add_leaf(fake_leaf(serial))
            assert t.leaf(index) is not None
            serial += 1
        elif op < 0.6:
            t.remove_leaf(rng.choice(members[1:]))
        elif op < 0.7:
            t.update_leaf(rng.choice(members), fake_leaf(serial))
            serial += 1
        elif op < 0.85:
            i = rng.choice(members)
            t.blank_direct_path(i)
            for p in t.filtered_direct_path(i):
                t.set_node(p, fake_parent(serial))
                serial += 1
        else:
            # Raw writes, including parents over blank subtrees (states no valid tree has).
            p = rng.randrange(1, t.width, 2)
            t.set_node(p, None if rng.random() < 0.5 else fake_parent(serial))
            serial += 1
            t.truncate()
        if step % 3 == 0:
            check_against_naive(t, rng)
        if step % 50 == 0:
            c = t.copy()
            check_against_naive(c, rng)
            assert RatchetTree.decode(CS, t.encode()) == t
    check_against_naive(t, rng)


class CountingList(list[Any]):
    """A list that counts item reads, to bound how many nodes/counters an operation looks at."""

    reads = 0

    def __getitem__(self, i: Any) -> Any:
        CountingList.reads += 1
        return super().__getitem__(i)


def counted(t: RatchetTree) -> RatchetTree:
    """``t`` with its node array and subtree counters replaced by counting lists."""
    for name in ("_nodes", "_fill", "_members", "_hashes"):
        setattr(t, name, CountingList(getattr(t, name)))
    CountingList.reads = 0
    return t


def reads_of(fn: Any) -> int:
    CountingList.reads = 0
    fn()
    return CountingList.reads


def big_fake_tree(members: int) -> RatchetTree:
    return RatchetTree(CS, [fake_leaf(x // 2) if x % 2 == 0 else None for x in range(2 * members - 1)])


def test_resolution_skips_blank_subtrees() -> None:
    # Two members at the ends of a 16,384-leaf tree: every parent and 16,382 leaves blank.
    t = build([0])
    while t.n_leaves < 16384:
        t._extend()
    t.set_leaf(16383, fake_leaf(1))
    t = counted(t)
    assert t.resolution(t.root) == [0, 2 * 16383]
    # Walking the tree would read all 32,767 nodes; the counters confine it to the two root-to-leaf paths
    # (29 nodes, 3 reads each: the node and its children's counters).
    assert reads_of(lambda: t.resolution(t.root)) <= 3 * 29
    assert reads_of(lambda: t.has_nonblank(t.root - 1)) == 1
    assert reads_of(lambda: t.filtered_direct_path(0)) <= 2 * 15
    assert t.filtered_direct_path(0) == [t.root]


def test_filtered_path_of_last_member_is_logarithmic() -> None:
    # 10,000 members in 16,384 slots, all parents blank (as after a 9,999-add commit without path).
    t = counted(big_fake_tree(10_000))
    path = t.filtered_path_with_copath(9999)
    reads = reads_of(lambda: t.filtered_path_with_copath(9999))
    # The copath subtrees right of leaf 9,999 hold 6,384 blank leaves; none of them is visited.
    assert reads <= 2 * 14, reads
    assert [c for _, c in path] == [c for c in t.copath(9999) if naive_resolution(t, c)]


def test_free_leaf_is_logarithmic() -> None:
    t = counted(big_fake_tree(10_000))
    assert reads_of(lambda: t.leftmost_blank_leaf()) <= 2 * 15
    assert t.free_leaf() == 10_000
    t.remove_leaf(1234)
    assert reads_of(lambda: t.leftmost_blank_leaf()) <= 2 * 15
    assert t.free_leaf() == 1234


def test_adding_many_members_costs_n_log_n() -> None:
    t = counted(build([0]))
    reads = reads_of(lambda: [t.add_leaf(fake_leaf(i)) for i in range(1, 1000)])
    assert t.member_count() == 1000 and t.leftmost_blank_leaf() == 1000
    # A scan for the free leaf per add reads ~n^2/2 = 500,000 nodes; per-add O(log n) work stays far below.
    assert reads <= 1000 * 10 * 12, reads


def test_remove_and_truncate_are_logarithmic() -> None:
    t = counted(big_fake_tree(10_000))
    # Removing the last member truncates 16,384 -> 8,192 slots without walking the 6,384 blank leaves.
    reads = reads_of(lambda: t.remove_leaf(9999))
    assert t.n_leaves == 16384
    assert reads <= 10 * 15, reads
    for i in range(8192, 9999):
        t.remove_leaf(i)
    assert t.n_leaves == 8192
    assert reads_of(lambda: t.remove_leaf(8191)) <= 10 * 15
    assert t.n_leaves == 8192
    assert reads_of(lambda: t.encode()) <= 3 * 8192 + 2 * 14


# --- leaf validation -----------------------------------------------------------------------------------


def test_check_leaf_node() -> None:
    leaf, _, sig_priv = make_key_package_leaf(CS, "alice")
    check_leaf_node(CS, leaf, group_id=GROUP_ID, leaf_index=0, source=LeafNodeSource.KEY_PACKAGE, now=5)
    with pytest.raises(MlsError, match="source"):
        check_leaf_node(CS, leaf, group_id=GROUP_ID, leaf_index=0, source=LeafNodeSource.COMMIT)
    with pytest.raises(MlsError, match="lifetime"):
        check_leaf_node(CS, replace(leaf, lifetime=Lifetime(10, 20)), group_id=GROUP_ID, leaf_index=0, now=5)
    with pytest.raises(MlsError, match="signature"):
        check_leaf_node(CS, replace(leaf, signature=bytes(64)), group_id=GROUP_ID, leaf_index=0)
    with pytest.raises(MlsError, match="credential"):
        bad = replace(leaf, capabilities=Capabilities(credentials=(2,)))
        check_leaf_node(CS, bad, group_id=GROUP_ID, leaf_index=0)


def test_validate_tree_catches_duplicates_and_unmerged_errors() -> None:
    a, _, _ = make_key_package_leaf(CS, "a")
    b, _, _ = make_key_package_leaf(CS, "b")
    ok = RatchetTree(CS, [a, None, b])
    validate_tree(ok, GROUP_ID, tree_hash=ok.tree_hash())
    with pytest.raises(MlsError, match="tree hash"):
        validate_tree(ok, GROUP_ID, tree_hash=bytes(32))
    dup = RatchetTree(CS, [a, None, a])
    with pytest.raises(MlsError, match="duplicates"):
        validate_tree(dup, GROUP_ID)
    # Non-blank parent with no parent-hash chain: rejected.
    lone_parent = RatchetTree(CS, [a, ParentNode(b"k" * 32, b"", ()), b])
    with pytest.raises(MlsError, match="parent-hash valid"):
        validate_tree(lone_parent, GROUP_ID)
    # Unmerged leaf that is blank / not sorted.
    bad_unmerged = RatchetTree(CS, [a, ParentNode(b"k" * 32, b"", (1, 0)), b])
    with pytest.raises(MlsError, match="unmerged"):
        validate_tree(bad_unmerged, GROUP_ID)
    blank_unmerged = RatchetTree(CS, [a, ParentNode(b"k" * 32, b"", (1,)), None, None, b])
    with pytest.raises(MlsError, match="unmerged"):
        validate_tree(blank_unmerged, GROUP_ID)
