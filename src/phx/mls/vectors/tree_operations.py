"""tree-operations.json: applying Add / Update / Remove proposals to a ratchet tree (RFC 9420 §12.1)."""

from __future__ import annotations

from typing import Any

from phx.crypto import suite
from phx.mls.messages.proposals import Add, Proposal, Remove, Update
from phx.mls.tree import RatchetTree


def _h(s: str) -> bytes:
    return bytes.fromhex(s)


def run(entry: dict[str, Any]) -> None:
    cs = suite(entry["cipher_suite"])
    tree = RatchetTree.decode(cs, _h(entry["tree_before"]))
    assert tree.tree_hash() == _h(entry["tree_hash_before"]), "tree_hash_before"
    proposal = Proposal.decode(_h(entry["proposal"])).value
    if isinstance(proposal, Add):
        tree.add_leaf(proposal.key_package.leaf_node)
    elif isinstance(proposal, Update):
        tree.update_leaf(entry["proposal_sender"], proposal.leaf_node)
    elif isinstance(proposal, Remove):
        tree.remove_leaf(proposal.removed)
    else:
        raise AssertionError(f"unexpected proposal {type(proposal).__name__}")
    assert tree.encode() == _h(entry["tree_after"]), "tree_after"
    assert tree.tree_hash() == _h(entry["tree_hash_after"]), "tree_hash_after (cached)"
    fresh = RatchetTree.decode(cs, _h(entry["tree_after"]))
    assert fresh.tree_hash() == _h(entry["tree_hash_after"]), "tree_hash_after"
