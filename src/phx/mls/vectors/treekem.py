"""treekem.json: UpdatePath merge and decryption against the vector, then a fresh encap/decap round."""

from __future__ import annotations

from typing import Any

from phx.crypto import CipherSuite, suite
from phx.mls.messages import GroupContext, LeafNodeSource, ProtocolVersion, UpdatePath
from phx.mls.tree import RatchetTree
from phx.mls.tree_validation import check_leaf_node
from phx.mls.treekem import (
    PrivateTree,
    commit_leaf_node,
    decrypt_update_path,
    generate_update_path,
    merge_update_path,
)


def _h(s: str) -> bytes:
    return bytes.fromhex(s)


def _context(cs: CipherSuite, entry: dict[str, Any], tree_hash: bytes) -> bytes:
    return GroupContext(
        ProtocolVersion.MLS10,
        cs.suite_id,
        _h(entry["group_id"]),
        entry["epoch"],
        tree_hash,
        _h(entry["confirmed_transcript_hash"]),
        (),
    ).encode()


def run(entry: dict[str, Any]) -> None:
    cs = suite(entry["cipher_suite"])
    group_id = _h(entry["group_id"])
    tree = RatchetTree.decode(cs, _h(entry["ratchet_tree"]))
    assert tree.encode() == _h(entry["ratchet_tree"]), "ratchet_tree re-encoding"

    privates: dict[int, PrivateTree] = {}
    signature_keys: dict[int, bytes] = {}
    for lp in entry["leaves_private"]:
        i = lp["index"]
        priv = PrivateTree(cs, i, _h(lp["encryption_priv"]))
        for ps in lp["path_secrets"]:
            priv.set_path_secret(ps["node"], _h(ps["path_secret"]))
        priv.check_consistent(tree)
        privates[i] = priv
        signature_keys[i] = _h(lp["signature_priv"])
        leaf = tree.require_leaf(i)
        assert cs.signature_public_key(signature_keys[i]) == leaf.signature_key, f"signature_priv {i}"
    members = [i for i, _ in tree.leaves()]
    assert sorted(privates) == members, "leaves_private must cover every member"

    for up in entry["update_paths"]:
        sender = up["sender"]
        path = UpdatePath.decode(_h(up["update_path"]))
        assert path.encode() == _h(up["update_path"]), "update_path re-encoding"
        check_leaf_node(
            cs, path.leaf_node, group_id=group_id, leaf_index=sender, source=LeafNodeSource.COMMIT
        )

        merged = tree.copy()
        merge_update_path(merged, sender, path)  # includes the parent-hash check
        tree_hash_after = merged.tree_hash()
        assert tree_hash_after == _h(up["tree_hash_after"]), "tree_hash_after"
        assert RatchetTree.decode(cs, merged.encode()).tree_hash() == tree_hash_after, "cached tree hash"
        context = _context(cs, entry, tree_hash_after)
        expected = up["path_secrets"]
        assert len(expected) == tree.n_leaves, "path_secrets length"
        for j in members:
            if j == sender:
                assert expected[j] is None, f"path_secrets[{j}] for the sender"
                continue
            priv = privates[j].copy()
            secret, commit_secret = decrypt_update_path(merged, priv, sender, path, context)
            assert secret == _h(expected[j]), f"path_secrets[{j}]"
            assert commit_secret == _h(up["commit_secret"]), f"commit_secret at leaf {j}"
            priv.check_consistent(merged)

        # A fresh UpdatePath from the same sender must round-trip to every other member.
        mine = tree.copy()
        base = mine.require_leaf(sender)

        def make_leaf(enc: bytes, parent_hash: bytes, base: Any = base, sender: int = sender) -> Any:
            return commit_leaf_node(cs, base, enc, parent_hash, group_id, sender, signature_keys[sender])

        pending = generate_update_path(mine, sender, make_leaf)
        new_context = _context(cs, entry, mine.tree_hash())
        new_path = UpdatePath.decode(pending.encrypt(new_context).encode())
        pending.private.check_consistent(mine)
        for j in members:
            if j == sender:
                continue
            theirs = tree.copy()
            merge_update_path(theirs, sender, new_path)
            assert theirs.tree_hash() == mine.tree_hash(), f"new path merge at leaf {j}"
            priv = privates[j].copy()
            secret, commit_secret = decrypt_update_path(theirs, priv, sender, new_path, new_context)
            assert commit_secret == pending.commit_secret, f"new commit secret at leaf {j}"
            assert secret == pending.path_secret_for(j), f"new path secret at leaf {j}"
