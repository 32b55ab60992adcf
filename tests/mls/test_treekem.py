from __future__ import annotations

import random
from dataclasses import dataclass, replace

import pytest

from phx.crypto import SUITE_1
from phx.errors import MlsError
from phx.mls import tree_math as tm
from phx.mls.messages import (
    GroupContext,
    HPKECiphertext,
    LeafNode,
    LeafNodeSource,
    ProtocolVersion,
    UpdatePath,
    UpdatePathNode,
)
from phx.mls.tree import RatchetTree
from phx.mls.tree_validation import check_leaf_node, validate_tree
from phx.mls.treekem import (
    PendingPath,
    PrivateTree,
    commit_leaf_node,
    decrypt_update_path,
    derive_node_key_pair,
    derive_path_secret,
    generate_update_path,
    merge_update_path,
)
from tests.mls.test_tree import GROUP_ID, make_key_package_leaf

CS = SUITE_1


def context(tree: RatchetTree, epoch: int) -> bytes:
    return GroupContext(ProtocolVersion.MLS10, 1, GROUP_ID, epoch, tree.tree_hash(), b"cth", ()).encode()


@dataclass
class Member:
    tree: RatchetTree
    private: PrivateTree
    sig_priv: bytes


class Group:
    """Every member's own copy of the tree and keys; checks that all views agree after each step."""

    def __init__(self) -> None:
        leaf, enc, sig = make_key_package_leaf(CS, "m0")
        self.members = {0: Member(RatchetTree.one_member(CS, leaf), PrivateTree(CS, 0, enc), sig)}
        self.epoch = 0
        self.serial = 1

    def _new_leaves(self, n: int) -> list[tuple[LeafNode, bytes, bytes]]:
        out = []
        for _ in range(n):
            out.append(make_key_package_leaf(CS, f"m{self.serial}"))
            self.serial += 1
        return out

    def _apply(self, tree: RatchetTree, removes: list[int], leaves: list[LeafNode]) -> list[int]:
        for r in removes:
            tree.remove_leaf(r)
        return [tree.add_leaf(leaf) for leaf in leaves]

    def add_without_path(self, sender: int, n: int) -> None:
        new = self._new_leaves(n)
        added: list[int] = []
        for m in self.members.values():
            added = self._apply(m.tree, [], [leaf for leaf, _, _ in new])
        tree = self.members[sender].tree
        for idx, (_, enc, sig) in zip(added, new, strict=True):
            self.members[idx] = Member(tree.copy(), PrivateTree(CS, idx, enc), sig)
        self.epoch += 1
        self.check()

    def commit(self, sender: int, adds: int = 0, removes: tuple[int, ...] = ()) -> PendingPath:
        new = self._new_leaves(adds)
        committer = self.members[sender]
        tree = committer.tree.copy()
        added = self._apply(tree, list(removes), [leaf for leaf, _, _ in new])
        base = tree.require_leaf(sender)

        def make_leaf(enc: bytes, ph: bytes) -> LeafNode:
            return commit_leaf_node(CS, base, enc, ph, GROUP_ID, sender, committer.sig_priv)

        pending = generate_update_path(tree, sender, make_leaf, exclude=added)
        self.epoch += 1
        ctx = context(tree, self.epoch)
        path = UpdatePath.decode(pending.encrypt(ctx).encode())
        check_leaf_node(
            CS, path.leaf_node, group_id=GROUP_ID, leaf_index=sender, source=LeafNodeSource.COMMIT
        )
        for r in removes:
            del self.members[r]
        for j, m in self.members.items():
            if j == sender:
                continue
            t = m.tree
            self._apply(t, list(removes), [leaf for leaf, _, _ in new])
            merge_update_path(t, sender, path, exclude=added)
            assert t == tree and t.tree_hash() == tree.tree_hash()
            m.private.prune(t)
            secret, commit_secret = decrypt_update_path(t, m.private, sender, path, ctx, exclude=added)
            assert commit_secret == pending.commit_secret
            assert secret == pending.path_secret_for(j)
        committer.tree = tree
        committer.private = pending.private
        for idx, (_, enc, sig) in zip(added, new, strict=True):
            priv = PrivateTree(CS, idx, enc)
            welcome_secret = pending.path_secret_for(idx)
            assert welcome_secret is not None
            priv.implant(tree, tm.common_ancestor(2 * idx, 2 * sender), welcome_secret)
            self.members[idx] = Member(tree.copy(), priv, sig)
        self.check()
        return pending

    def check(self) -> None:
        trees = [m.tree for m in self.members.values()]
        first = trees[0]
        assert all(t == first for t in trees)
        validate_tree(first, GROUP_ID, tree_hash=first.tree_hash())
        assert sorted(self.members) == [i for i, _ in first.leaves()]
        for m in self.members.values():
            m.private.check_consistent(m.tree)


def test_grow_and_commit() -> None:
    g = Group()
    for i in range(6):
        g.commit(i, adds=1)
    g.commit(3)
    g.commit(0, adds=2, removes=(5,))
    assert g.members[0].tree.n_leaves == 8


def test_unmerged_leaves_receive_path_secrets() -> None:
    g = Group()
    g.commit(0, adds=6)
    g.add_without_path(1, 1)  # leaf 7 becomes unmerged at every non-blank node above it
    tree = g.members[0].tree
    root = tree.parent_node(7)
    assert root is not None and root.unmerged_leaves == (7,)
    assert 14 in tree.resolution(11)
    pending = g.commit(2)
    # The root step encrypts to the resolution of node 11, which includes the unmerged leaf 7.
    assert len(pending.steps[-1][3]) == len(tree.resolution(11))
    g.commit(7, removes=(1,))


def test_random_group_evolution() -> None:
    rng = random.Random(3)
    g = Group()
    g.commit(0, adds=2)
    for _ in range(25):
        members = sorted(g.members)
        sender = rng.choice(members)
        op = rng.random()
        if op < 0.3:
            g.add_without_path(sender, rng.randint(1, 2))
        elif op < 0.6 or len(members) < 3:
            g.commit(sender, adds=rng.randint(0, 2))
        else:
            victims = tuple(rng.sample([m for m in members if m != sender], rng.randint(1, 2)))
            g.commit(sender, adds=rng.randint(0, 1), removes=victims)


def test_single_member_commit() -> None:
    g = Group()
    pending = g.commit(0)
    assert pending.steps == [] and len(pending.commit_secret) == CS.nh


def test_path_secret_chain() -> None:
    g = Group()
    g.commit(0, adds=3)
    pending = g.commit(1)
    secrets = [s for _, _, s, _ in pending.steps]
    assert [p for p, _, _, _ in pending.steps] == [1, 3]
    assert secrets[1] == derive_path_secret(CS, secrets[0])
    assert pending.commit_secret == derive_path_secret(CS, secrets[1])
    assert pending.steps[0][1] == derive_node_key_pair(CS, secrets[0])[1]


def _two_member_setup() -> tuple[Group, RatchetTree, UpdatePath, bytes]:
    g = Group()
    g.commit(0, adds=3)
    sender = g.members[0]
    tree = sender.tree.copy()
    base = tree.require_leaf(0)
    pending = generate_update_path(
        tree, 0, lambda e, ph: commit_leaf_node(CS, base, e, ph, GROUP_ID, 0, sender.sig_priv)
    )
    ctx = context(tree, 9)
    return g, tree, pending.encrypt(ctx), ctx


def test_merge_rejects_bad_parent_hash_and_leaves_tree_unchanged() -> None:
    g, _, path, _ = _two_member_setup()
    t = g.members[2].tree
    before = t.encode()
    h = t.tree_hash()
    bad = replace(path, leaf_node=replace(path.leaf_node, parent_hash=bytes(32)))
    with pytest.raises(MlsError, match="parent_hash"):
        merge_update_path(t, 0, bad)
    assert t.encode() == before and t.tree_hash() == h


def test_merge_rejects_wrong_shapes() -> None:
    g, _, path, _ = _two_member_setup()
    t = g.members[2].tree
    with pytest.raises(MlsError, match="nodes"):
        merge_update_path(t, 0, replace(path, nodes=path.nodes[:1]))
    short = replace(path.nodes[1], encrypted_path_secret=())
    with pytest.raises(MlsError, match="ciphertexts"):
        merge_update_path(t, 0, replace(path, nodes=(path.nodes[0], short)))
    reused = UpdatePathNode(t.require_leaf(3).encryption_key, path.nodes[1].encrypted_path_secret)
    with pytest.raises(MlsError, match="reuses"):
        merge_update_path(t, 0, replace(path, nodes=(path.nodes[0], reused)))
    old = replace(path.leaf_node, encryption_key=t.require_leaf(0).encryption_key)
    with pytest.raises(MlsError, match="change the encryption key"):
        merge_update_path(t, 0, replace(path, leaf_node=old))
    kp = replace(path.leaf_node, leaf_node_source=LeafNodeSource.UPDATE, parent_hash=None)
    with pytest.raises(MlsError, match="source"):
        merge_update_path(t, 0, replace(path, leaf_node=kp))


def test_decrypt_failures_leave_private_state_unchanged() -> None:
    g, _, path, ctx = _two_member_setup()
    m = g.members[3]
    merge_update_path(m.tree, 0, path)
    keys = m.private.nodes()
    with pytest.raises(MlsError, match="decrypt"):
        decrypt_update_path(m.tree, m.private, 0, path, ctx + b"x")
    assert m.private.nodes() == keys
    # A ciphertext that decrypts to a secret not matching the advertised public key.
    node = path.nodes[1]
    kem, ct = CS.encrypt_with_label(m.tree.require_leaf(3).encryption_key, b"UpdatePathNode", ctx, bytes(32))
    forged = replace(node, encrypted_path_secret=(node.encrypted_path_secret[0], HPKECiphertext(kem, ct)))
    with pytest.raises(MlsError, match="does not match"):
        decrypt_update_path(m.tree, m.private, 0, replace(path, nodes=(path.nodes[0], forged)), ctx)
    with pytest.raises(MlsError, match="own"):
        decrypt_update_path(m.tree, m.private, 3, path, ctx)
    decrypt_update_path(m.tree, m.private, 0, path, ctx)
    m.private.check_consistent(m.tree)


def test_implant_rejects_wrong_secret() -> None:
    g = Group()
    g.commit(0, adds=1)
    m = g.members[1]
    priv = PrivateTree(CS, 1, m.private.leaf_private_key)
    with pytest.raises(MlsError, match="does not match"):
        priv.implant(m.tree, 1, bytes(32))
    assert priv.nodes() == [2]


def test_private_tree_consistency_checks() -> None:
    g = Group()
    g.commit(0, adds=3)
    m = g.members[0]
    bogus = m.private.copy()
    bogus.set_path_secret(5, bytes(32))  # not on leaf 0's path
    with pytest.raises(MlsError, match="not on"):
        bogus.check_consistent(m.tree)
    bogus = m.private.copy()
    bogus.set_path_secret(3, bytes(32))
    with pytest.raises(MlsError, match="does not match"):
        bogus.check_consistent(m.tree)
    bogus.prune(m.tree)
    assert 3 not in bogus.nodes()
    bogus.check_consistent(m.tree)


def test_make_leaf_must_use_given_values() -> None:
    g = Group()
    g.commit(0, adds=1)
    m = g.members[0]
    base = m.tree.require_leaf(0)
    before = m.tree.encode()
    with pytest.raises(MlsError, match="make_leaf"):
        generate_update_path(
            m.tree, 0, lambda e, ph: commit_leaf_node(CS, base, e, b"", GROUP_ID, 0, m.sig_priv)
        )
    assert m.tree.encode() == before


def test_external_commit_into_blank_leaf() -> None:
    g = Group()
    g.commit(0, adds=3)
    g.commit(1, removes=(2,))
    leaf, enc, sig = make_key_package_leaf(CS, "joiner")
    tree = g.members[0].tree.copy()
    idx = tree.free_leaf()
    assert idx == 2 and tree.leaf(idx) is None
    pending = generate_update_path(
        tree,
        idx,
        lambda e, ph: commit_leaf_node(CS, leaf, e, ph, GROUP_ID, idx, sig),
        leaf_private_key=None,
    )
    g.epoch += 1
    ctx = context(tree, g.epoch)
    path = pending.encrypt(ctx)
    for j, m in g.members.items():
        assert m.tree.free_leaf() == idx
        merge_update_path(m.tree, idx, path)
        _, commit_secret = decrypt_update_path(m.tree, m.private, idx, path, ctx)
        assert commit_secret == pending.commit_secret, j
    g.members[idx] = Member(tree, pending.private, sig)
    g.check()
    assert enc != pending.private.leaf_private_key  # the path brings a fresh leaf key


def test_merge_rejects_reuse_of_own_old_path_key() -> None:
    g, _, path, _ = _two_member_setup()
    t = g.members[2].tree
    old_root = t.parent_node(3)
    assert old_root is not None
    reused = replace(path.nodes[1], encryption_key=old_root.encryption_key)
    with pytest.raises(MlsError, match="reuses"):
        merge_update_path(t, 0, replace(path, nodes=(path.nodes[0], reused)))
