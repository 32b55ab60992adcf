"""tree-validation.json: resolutions, per-node tree hashes, parent hashes and leaf signatures."""

from __future__ import annotations

from typing import Any

from phx.crypto import suite
from phx.mls.tree import RatchetTree
from phx.mls.tree_validation import validate_tree, verify_leaf_signature, verify_parent_hashes


def _h(s: str) -> bytes:
    return bytes.fromhex(s)


def run(entry: dict[str, Any]) -> None:
    cs = suite(entry["cipher_suite"])
    data = _h(entry["tree"])
    tree = RatchetTree.decode(cs, data)
    assert tree.encode() == data, "tree re-encoding"
    resolutions, hashes = entry["resolutions"], entry["tree_hashes"]
    assert len(resolutions) == tree.width, "resolutions: wrong node count"
    assert len(hashes) == tree.width, "tree_hashes: wrong node count"
    for x in range(tree.width):
        assert tree.resolution(x) == resolutions[x], f"resolution of node {x}"
        assert tree.node_tree_hash(x) == _h(hashes[x]), f"tree hash of node {x}"
    verify_parent_hashes(tree)
    group_id = _h(entry["group_id"])
    for i, leaf in tree.leaves():
        verify_leaf_signature(cs, leaf, group_id, i)
    # The whole join-time check (§12.4.3.1) must accept every vector tree as well.
    validate_tree(tree, group_id, tree_hash=_h(hashes[tree.root]))
