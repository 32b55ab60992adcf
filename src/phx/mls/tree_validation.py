"""Validating ratchet trees and leaf nodes (RFC 9420 §7.3, §7.9.2, §12.4.3.1).

:func:`validate_tree` is the whole check a joiner runs on a tree it did not build; the smaller functions
are the pieces the group layer and the DS reuse when a single leaf arrives (Add, Update, Commit path).
Every failure is an :class:`~phx.errors.MlsError` naming the node and the rule.
"""

from __future__ import annotations

from collections.abc import Callable

from phx.crypto import CipherSuite
from phx.errors import MlsError
from phx.mls import tree_math as tm
from phx.mls.messages import LeafNode, LeafNodeSource, ParentNode
from phx.mls.messages.extensions import RequiredCapabilities
from phx.mls.tree import RatchetTree

__all__ = [
    "DEFAULT_EXTENSION_TYPES",
    "DEFAULT_PROPOSAL_TYPES",
    "check_leaf_keys_unique",
    "check_leaf_node",
    "credential_support",
    "validate_tree",
    "verify_leaf_signature",
    "verify_parent_hashes",
    "verify_unmerged_leaves",
]

#: Extension and proposal types every client supports, which capabilities must not list (§7.2).
DEFAULT_EXTENSION_TYPES = frozenset(range(1, 6))
DEFAULT_PROPOSAL_TYPES = frozenset(range(1, 8))

LEAF_NODE_TBS = b"LeafNodeTBS"


def verify_leaf_signature(suite: CipherSuite, leaf: LeafNode, group_id: bytes, leaf_index: int) -> None:
    """Check the LeafNodeTBS signature (group_id / leaf_index bind update and commit leaves)."""
    if leaf.leaf_node_source == LeafNodeSource.KEY_PACKAGE:
        tbs = leaf.tbs()
    else:
        tbs = leaf.tbs(group_id, leaf_index)
    if not suite.verify_with_label(leaf.signature_key, LEAF_NODE_TBS, tbs, leaf.signature):
        raise MlsError(f"leaf {leaf_index}: invalid LeafNode signature")


def check_leaf_node(
    suite: CipherSuite,
    leaf: LeafNode,
    *,
    group_id: bytes,
    leaf_index: int,
    source: LeafNodeSource | None = None,
    now: int | None = None,
    required: RequiredCapabilities | None = None,
) -> None:
    """The checks of §7.3 that concern the leaf alone (not other members).

    ``source`` is the expected ``leaf_node_source`` (None: any); ``now`` (Unix seconds) enables the
    lifetime check for key_package leaves; ``required`` is the group's required_capabilities.
    """
    where = f"leaf {leaf_index}"
    if source is not None and leaf.leaf_node_source != source:
        raise MlsError(f"{where}: leaf_node_source is {leaf.leaf_node_source.name}, expected {source.name}")
    caps = leaf.capabilities
    if leaf.credential.credential_type not in caps.credentials:
        raise MlsError(f"{where}: credential type {leaf.credential.credential_type} not in its capabilities")
    for ext in leaf.extensions:
        t = ext.extension_type
        if t not in DEFAULT_EXTENSION_TYPES and t not in caps.extensions:
            raise MlsError(f"{where}: extension {t} not in its capabilities")
    if required is not None:
        for t in required.extension_types:
            if t not in DEFAULT_EXTENSION_TYPES and t not in caps.extensions:
                raise MlsError(f"{where}: lacks required extension {t}")
        for t in required.proposal_types:
            if t not in DEFAULT_PROPOSAL_TYPES and t not in caps.proposals:
                raise MlsError(f"{where}: lacks required proposal type {t}")
        for t in required.credential_types:
            if t not in caps.credentials:
                raise MlsError(f"{where}: lacks required credential type {t}")
    if now is not None and leaf.lifetime is not None:
        if not leaf.lifetime.not_before <= now <= leaf.lifetime.not_after:
            raise MlsError(f"{where}: outside its lifetime")
    verify_leaf_signature(suite, leaf, group_id, leaf_index)


def check_leaf_keys_unique(tree: RatchetTree, leaf: LeafNode, leaf_index: int | None) -> None:
    """The new ``leaf`` (going to ``leaf_index``, None if not placed yet) reuses no other node's keys.

    The leaf being replaced (at ``leaf_index``) does not count: a member may keep its signature key.
    Whether an Update must change the encryption key is the caller's rule (§7.3).
    """
    own = None if leaf_index is None else 2 * leaf_index
    owner = tree.encryption_key_owner(leaf.encryption_key)
    if owner is not None and owner != own:
        raise MlsError(f"encryption key already used by node {owner}")
    sig_owner = tree.signature_key_owner(leaf.signature_key)
    if sig_owner is not None and sig_owner != leaf_index:
        raise MlsError(f"signature key already used by leaf {sig_owner}")


def credential_support(tree: RatchetTree) -> tuple[frozenset[int], frozenset[int]]:
    """(credential types in use, credential types every member supports). O(members)."""
    used: set[int] = set()
    supported: set[int] | None = None
    for _, leaf in tree.leaves():
        used.add(leaf.credential.credential_type)
        caps = set(leaf.capabilities.credentials)
        supported = caps if supported is None else supported & caps
    return frozenset(used), frozenset(supported or ())


def verify_unmerged_leaves(tree: RatchetTree) -> None:
    """§12.4.3.1: each unmerged leaf is a non-blank descendant, listed on every non-blank node between."""
    n = tree.n_leaves
    for x, node in tree.parents():
        prev = -1
        for u in node.unmerged_leaves:
            if u <= prev:
                raise MlsError(f"node {x}: unmerged_leaves not strictly increasing")
            prev = u
            if u >= n or tree.leaf(u) is None:
                raise MlsError(f"node {x}: unmerged leaf {u} is blank or outside the tree")
            path = tm.direct_path(2 * u, n)
            if x not in path:
                raise MlsError(f"node {x}: unmerged leaf {u} is not a descendant")
            for y in path[: path.index(x)]:
                between = tree.parent_node(y)
                if between is not None and u not in between.unmerged_leaves:
                    raise MlsError(f"node {y}: missing unmerged leaf {u} listed at ancestor {x}")


def _parent_hash_valid_children(tree: RatchetTree, x: int, node: ParentNode) -> int:
    """How many descendants D of ``x`` have a parent hash valid with respect to ``x`` (§7.9.2)."""
    count = 0
    left, right = tm.left(x), tm.right(x)
    for c, s in ((left, right), (right, left)):
        lo, hi = c - (1 << tm.level(c)) + 1, c + (1 << tm.level(c)) - 1
        unmerged_in_c = sorted(2 * u for u in node.unmerged_leaves if lo <= 2 * u <= hi)
        res = tree.resolution(c)
        unmerged_set = set(unmerged_in_c)
        rest = [d for d in res if d not in unmerged_set]
        if len(rest) != 1:
            continue
        d = rest[0]
        if sorted(e for e in res if e != d) != unmerged_in_c:
            continue
        field = tree.leaf_parent_hash_field(d)
        if field is not None and field == tree.parent_hash(x, s):
            count += 1
    return count


def verify_parent_hashes(tree: RatchetTree) -> None:
    """Every non-blank parent node is parent-hash valid (the "top down" check of §7.9.2)."""
    for x, node in tree.parents():
        if _parent_hash_valid_children(tree, x, node) != 1:
            raise MlsError(f"node {x} is not parent-hash valid")


def validate_tree(
    tree: RatchetTree,
    group_id: bytes,
    *,
    tree_hash: bytes | None = None,
    now: int | None = None,
    required: RequiredCapabilities | None = None,
    check_credential: Callable[[int, LeafNode], None] | None = None,
) -> None:
    """The ratchet-tree integrity checks a joiner runs (§12.4.3.1).

    ``tree_hash`` is the expected root tree hash (from the GroupInfo); ``check_credential`` is the
    application's credential validation (§5.3.1), called per member and expected to raise.
    """
    if tree_hash is not None and tree.tree_hash() != tree_hash:
        raise MlsError("ratchet tree hash does not match the group's tree_hash")
    used, supported = credential_support(tree)
    enc_seen: dict[bytes, int] = {}
    sig_seen: dict[bytes, int] = {}
    for i, leaf in tree.leaves():
        check_leaf_node(tree.suite, leaf, group_id=group_id, leaf_index=i, now=now, required=required)
        if check_credential is not None:
            check_credential(i, leaf)
        if leaf.credential.credential_type not in supported:
            raise MlsError(f"leaf {i}: credential type not supported by every member")
        if not used <= set(leaf.capabilities.credentials):
            raise MlsError(f"leaf {i}: does not support every credential type in use")
        if enc_seen.setdefault(leaf.encryption_key, 2 * i) != 2 * i:
            raise MlsError(f"leaf {i}: encryption key duplicates node {enc_seen[leaf.encryption_key]}")
        if sig_seen.setdefault(leaf.signature_key, i) != i:
            raise MlsError(f"leaf {i}: signature key duplicates leaf {sig_seen[leaf.signature_key]}")
    for x, parent in tree.parents():
        if enc_seen.setdefault(parent.encryption_key, x) != x:
            raise MlsError(f"node {x}: encryption key duplicates node {enc_seen[parent.encryption_key]}")
    verify_unmerged_leaves(tree)
    verify_parent_hashes(tree)
