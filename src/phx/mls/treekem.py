"""TreeKEM (RFC 9420 §7.4-7.6): creating, merging and decrypting UpdatePaths.

The public half (:func:`merge_update_path`) changes only the :class:`~phx.mls.tree.RatchetTree` and is
what the DS runs. The private half keeps the HPKE private keys a member holds in a separate
:class:`PrivateTree` so the public tree never carries secrets:

* the committer calls :func:`generate_update_path` (writes its new path into the tree and returns a
  :class:`PendingPath`), builds the provisional GroupContext from the new tree hash, then
  :meth:`PendingPath.encrypt` gives the UpdatePath;
* a receiver calls :func:`merge_update_path`, builds the same provisional GroupContext, then
  :func:`decrypt_update_path` to learn the path secrets and the commit secret;
* a joiner calls :meth:`PrivateTree.implant` with the Welcome's path secret.

Path secrets chain up the filtered direct path: ``path_secret[n] = DeriveSecret(path_secret[n-1],
"path")``; node keys are ``DeriveKeyPair(DeriveSecret(path_secret, "node"))``; the commit secret is one
more "path" derivation above the root's secret.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, replace

from phx.crypto import CipherSuite, HpkeError
from phx.errors import MlsError
from phx.mls import tree_math as tm
from phx.mls.messages import (
    HPKECiphertext,
    LeafNode,
    LeafNodeSource,
    ParentNode,
    UpdatePath,
    UpdatePathNode,
)
from phx.mls.tree import RatchetTree, TreeNode

__all__ = [
    "PendingPath",
    "PrivateTree",
    "commit_leaf_node",
    "decrypt_update_path",
    "derive_node_key_pair",
    "derive_path_secret",
    "generate_update_path",
    "merge_update_path",
]

UPDATE_PATH_NODE = b"UpdatePathNode"


def derive_path_secret(suite: CipherSuite, path_secret: bytes) -> bytes:
    """The next path secret up the filtered direct path (also yields the commit secret)."""
    return suite.derive_secret(path_secret, b"path")


def derive_node_key_pair(suite: CipherSuite, path_secret: bytes) -> tuple[bytes, bytes]:
    """(private, public) HPKE key pair of a node from its path secret."""
    return suite.derive_hpke_key_pair(suite.derive_secret(path_secret, b"node"))


class PrivateTree:
    """HPKE private keys one member knows: its leaf and (some of) its ancestors, by node index."""

    __slots__ = ("suite", "leaf_index", "_keys")

    def __init__(self, suite: CipherSuite, leaf_index: int, leaf_private_key: bytes) -> None:
        self.suite = suite
        self.leaf_index = leaf_index
        self._keys: dict[int, tuple[bytes, bytes]] = {
            2 * leaf_index: (leaf_private_key, suite.hpke_public_key(leaf_private_key))
        }

    def copy(self) -> PrivateTree:
        t = PrivateTree.__new__(PrivateTree)
        t.suite = self.suite
        t.leaf_index = self.leaf_index
        t._keys = dict(self._keys)
        return t

    @property
    def leaf_private_key(self) -> bytes:
        return self._keys[2 * self.leaf_index][0]

    def nodes(self) -> list[int]:
        return sorted(self._keys)

    def private_key(self, x: int) -> bytes | None:
        entry = self._keys.get(x)
        return None if entry is None else entry[0]

    def public_key(self, x: int) -> bytes | None:
        entry = self._keys.get(x)
        return None if entry is None else entry[1]

    def set_key(self, x: int, private_key: bytes) -> None:
        self._keys[x] = (private_key, self.suite.hpke_public_key(private_key))

    def set_leaf_key(self, private_key: bytes) -> None:
        self.set_key(2 * self.leaf_index, private_key)

    def set_path_secret(self, x: int, path_secret: bytes) -> bytes:
        """Store the key pair derived from ``path_secret`` at node ``x``; return its public key."""
        priv, pub = derive_node_key_pair(self.suite, path_secret)
        self._keys[x] = (priv, pub)
        return pub

    def forget(self, nodes: Iterable[int]) -> None:
        for x in nodes:
            if x != 2 * self.leaf_index:
                self._keys.pop(x, None)

    def prune(self, tree: RatchetTree) -> None:
        """Drop keys of parent nodes that were blanked, replaced or truncated away."""
        for x in list(self._keys):
            if x == 2 * self.leaf_index:
                continue
            node = tree.node(x) if x < tree.width else None
            if node is None or node.encryption_key != self._keys[x][1]:
                del self._keys[x]

    def check_consistent(self, tree: RatchetTree) -> None:
        """Every key held matches a non-blank node of ``tree`` on this member's path."""
        mine = {2 * self.leaf_index, *tree.direct_path(self.leaf_index)}
        for x, (_, pub) in self._keys.items():
            if x not in mine:
                raise MlsError(f"private key for node {x}, which is not on leaf {self.leaf_index}'s path")
            node = tree.node(x) if x < tree.width else None
            if node is None:
                raise MlsError(f"private key for blank node {x}")
            if node.encryption_key != pub:
                raise MlsError(f"private key for node {x} does not match its public key")

    def implant(self, tree: RatchetTree, x: int, path_secret: bytes) -> None:
        """Welcome (§12.4.3.1): set ``x`` from ``path_secret`` and derive every non-blank ancestor.

        Raises :class:`MlsError` (and changes nothing) if a derived key differs from the tree's.
        """
        derived: list[tuple[int, bytes, bytes]] = []
        n = tree.n_leaves
        secret = path_secret
        for y in [x, *tm.direct_path(x, n)]:
            node = tree.node(y)
            if node is None:
                if y == x:
                    raise MlsError(f"path secret for blank node {x}")
                continue
            if y != x:
                secret = derive_path_secret(self.suite, secret)
            priv, pub = derive_node_key_pair(self.suite, secret)
            if pub != node.encryption_key:
                raise MlsError(f"path secret does not match the public key of node {y}")
            derived.append((y, priv, pub))
        for y, priv, pub in derived:
            self._keys[y] = (priv, pub)


def commit_leaf_node(
    suite: CipherSuite,
    base: LeafNode,
    encryption_key: bytes,
    parent_hash: bytes,
    group_id: bytes,
    leaf_index: int,
    signature_private_key: bytes,
) -> LeafNode:
    """``base`` turned into a signed commit-source leaf with a new key and parent hash (§7.5 step 4)."""
    unsigned = replace(
        base,
        encryption_key=encryption_key,
        leaf_node_source=LeafNodeSource.COMMIT,
        lifetime=None,
        parent_hash=parent_hash,
        signature=b"",
    )
    tbs = unsigned.tbs(group_id, leaf_index)
    return unsigned.with_signature(suite.sign_with_label(signature_private_key, b"LeafNodeTBS", tbs))


@dataclass
class PendingPath:
    """A committer's new path, written into the tree but not yet encrypted to the group."""

    suite: CipherSuite
    leaf_index: int
    leaf_node: LeafNode
    #: (filtered direct path node, public key, path secret, recipients' public keys), leaf to root.
    steps: list[tuple[int, bytes, bytes, list[bytes]]]
    commit_secret: bytes
    private: PrivateTree

    def path_secret_at(self, x: int) -> bytes | None:
        for node, _, secret, _ in self.steps:
            if node == x:
                return secret
        return None

    def path_secret_for(self, joiner_leaf: int) -> bytes | None:
        """The path secret a new member gets in its Welcome: that of the lowest common ancestor."""
        return self.path_secret_at(tm.common_ancestor(2 * self.leaf_index, 2 * joiner_leaf))

    def encrypt(self, group_context: bytes) -> UpdatePath:
        """Encrypt each path secret to the copath resolution, under the provisional GroupContext."""
        nodes = []
        for _, pub, secret, recipients in self.steps:
            cts = []
            for rpub in recipients:
                kem_output, ct = self.suite.encrypt_with_label(rpub, UPDATE_PATH_NODE, group_context, secret)
                cts.append(HPKECiphertext(kem_output, ct))
            nodes.append(UpdatePathNode(pub, tuple(cts)))
        return UpdatePath(self.leaf_node, tuple(nodes))


def _restore(tree: RatchetTree, saved: list[tuple[int, TreeNode | None]]) -> None:
    for x, node in saved:
        tree.set_node(x, node)


def _write_path(
    tree: RatchetTree,
    leaf_index: int,
    pairs: list[tuple[int, int]],
    keys: list[bytes],
    leaf_for: Callable[[bytes], LeafNode],
) -> LeafNode:
    """Blank the direct path, set the new parent keys and parent hashes, then the leaf; all or nothing."""
    path = tree.direct_path(leaf_index)
    saved = [(x, tree.node(x)) for x in (2 * leaf_index, *path)]
    try:
        tree.blank_direct_path(leaf_index)
        for (p, _), pub in zip(pairs, keys, strict=True):
            tree.set_node(p, ParentNode(pub, b"", ()))
        leaf = leaf_for(tree.set_path_parent_hashes(leaf_index))
        tree.set_leaf(leaf_index, leaf)
    except BaseException:
        _restore(tree, saved)
        raise
    return leaf


def generate_update_path(
    tree: RatchetTree,
    leaf_index: int,
    make_leaf: Callable[[bytes, bytes], LeafNode],
    *,
    exclude: Collection[int] = (),
    leaf_private_key: bytes | None = None,
    first_path_secret: bytes | None = None,
) -> PendingPath:
    """Refresh ``leaf_index``'s path in ``tree`` (§7.4-7.5) and return what is needed to send it.

    ``make_leaf(encryption_key, parent_hash)`` builds the signed commit-source LeafNode (see
    :func:`commit_leaf_node`). ``exclude`` lists the leaves added by this commit, which get no
    ciphertexts. ``leaf_private_key`` / ``first_path_secret`` default to fresh randomness. The leaf may
    be blank (an external joiner at :meth:`RatchetTree.free_leaf`).
    """
    suite = tree.suite
    if not 0 <= leaf_index < tree.n_leaves:
        raise MlsError(f"leaf {leaf_index} is outside the tree")
    pairs = tree.filtered_path_with_copath(leaf_index)
    recipients: list[list[bytes]] = []
    for _, c in pairs:
        keys = []
        for x in tree.resolution(c, exclude):
            node = tree.node(x)
            assert node is not None
            keys.append(node.encryption_key)
        recipients.append(keys)
    if leaf_private_key is None:
        leaf_private_key, leaf_public_key = suite.generate_hpke_key_pair()
    else:
        leaf_public_key = suite.hpke_public_key(leaf_private_key)
    secret = suite.random() if first_path_secret is None else first_path_secret
    private = PrivateTree(suite, leaf_index, leaf_private_key)
    steps: list[tuple[int, bytes, bytes, list[bytes]]] = []
    for i, (p, _) in enumerate(pairs):
        if i:
            secret = derive_path_secret(suite, secret)
        pub = private.set_path_secret(p, secret)
        steps.append((p, pub, secret, recipients[i]))
    commit_secret = derive_path_secret(suite, secret)

    def leaf_for(parent_hash: bytes) -> LeafNode:
        leaf = make_leaf(leaf_public_key, parent_hash)
        if leaf.encryption_key != leaf_public_key or leaf.parent_hash != parent_hash:
            raise MlsError("make_leaf must use the given encryption key and parent hash")
        if leaf.leaf_node_source != LeafNodeSource.COMMIT:
            raise MlsError("a commit's leaf node must have leaf_node_source commit")
        return leaf

    leaf = _write_path(tree, leaf_index, pairs, [s[1] for s in steps], leaf_for)
    return PendingPath(suite, leaf_index, leaf, steps, commit_secret, private)


def merge_update_path(
    tree: RatchetTree, sender: int, path: UpdatePath, exclude: Collection[int] = ()
) -> None:
    """Check an UpdatePath's shape, keys and parent hash, and merge it into ``tree`` (§7.5, §12.4.2).

    ``exclude`` lists leaves added by the same commit. On failure the tree is unchanged. The leaf
    node's own validation (signature, capabilities, §7.3) is the caller's, with source ``commit``.
    For an external commit the sender's leaf is still blank (see :meth:`RatchetTree.free_leaf`).
    """
    if not 0 <= sender < tree.n_leaves:
        raise MlsError(f"UpdatePath sender {sender} is outside the tree")
    old_leaf = tree.leaf(sender)
    pairs = tree.filtered_path_with_copath(sender)
    if len(path.nodes) != len(pairs):
        raise MlsError(f"UpdatePath has {len(path.nodes)} nodes, filtered direct path has {len(pairs)}")
    seen: set[bytes] = set()
    for (p, c), upn in zip(pairs, path.nodes, strict=True):
        expected = len(tree.resolution(c, exclude))
        if len(upn.encrypted_path_secret) != expected:
            raise MlsError(
                f"UpdatePath node {p}: {len(upn.encrypted_path_secret)} ciphertexts for {expected} recipients"
            )
    leaf = path.leaf_node
    if leaf.leaf_node_source != LeafNodeSource.COMMIT:
        raise MlsError("UpdatePath leaf node must have leaf_node_source commit")
    if old_leaf is not None and leaf.encryption_key == old_leaf.encryption_key:
        raise MlsError("UpdatePath leaf node must change the encryption key")
    for key in (leaf.encryption_key, *(n.encryption_key for n in path.nodes)):
        # "None of the public keys in the UpdatePath appear in any node of the new ratchet tree" (§12.4.2),
        # the sender's own old path included.
        if key in seen or tree.encryption_key_owner(key) is not None:
            raise MlsError("UpdatePath reuses an encryption key already in the tree")
        seen.add(key)

    def leaf_for(parent_hash: bytes) -> LeafNode:
        if leaf.parent_hash != parent_hash:
            raise MlsError("UpdatePath leaf node parent_hash does not match the computed parent hash")
        return leaf

    _write_path(tree, sender, pairs, [n.encryption_key for n in path.nodes], leaf_for)


def decrypt_update_path(
    tree: RatchetTree,
    private: PrivateTree,
    sender: int,
    path: UpdatePath,
    group_context: bytes,
    exclude: Collection[int] = (),
) -> tuple[bytes, bytes]:
    """Decrypt a merged UpdatePath and update ``private``; returns (path secret, commit secret).

    ``tree`` must already contain the path (:func:`merge_update_path`); ``group_context`` is the
    encoded provisional GroupContext. The returned path secret is the one decrypted, at the lowest
    common ancestor of sender and receiver. ``private`` changes only on success.
    """
    suite = tree.suite
    me = private.leaf_index
    if me == sender:
        raise MlsError("cannot decrypt one's own UpdatePath")
    pairs = tree.filtered_path_with_copath(sender)
    if len(path.nodes) != len(pairs):
        raise MlsError("UpdatePath does not match the sender's filtered direct path")
    ancestor = tm.common_ancestor(2 * me, 2 * sender)
    k = next((i for i, (p, _) in enumerate(pairs) if p == ancestor), None)
    if k is None:
        raise MlsError("common ancestor with the sender is not on its filtered direct path")
    resolution = tree.resolution(pairs[k][1], exclude)
    pos = None
    for i, x in enumerate(resolution):
        node = tree.node(x)
        pub = private.public_key(x)
        if pub is not None and node is not None and node.encryption_key == pub:
            pos = i
            break
    if pos is None:
        raise MlsError("no private key for any node in the copath resolution")
    cts = path.nodes[k].encrypted_path_secret
    if len(cts) != len(resolution):
        raise MlsError("UpdatePath ciphertext count does not match the copath resolution")
    priv = private.private_key(resolution[pos])
    assert priv is not None
    try:
        secret = suite.decrypt_with_label(
            priv, UPDATE_PATH_NODE, group_context, cts[pos].kem_output, cts[pos].ciphertext
        )
    except HpkeError as e:
        raise MlsError(f"cannot decrypt path secret: {e}") from e
    first = secret
    derived: list[tuple[int, bytes, bytes]] = []
    for i in range(k, len(pairs)):
        if i > k:
            secret = derive_path_secret(suite, secret)
        node_priv, node_pub = derive_node_key_pair(suite, secret)
        if node_pub != path.nodes[i].encryption_key:
            raise MlsError(f"derived public key of node {pairs[i][0]} does not match the UpdatePath")
        derived.append((pairs[i][0], node_priv, node_pub))
    commit_secret = derive_path_secret(suite, secret)
    private.forget(tree.direct_path(sender))
    for x, node_priv, node_pub in derived:
        private._keys[x] = (node_priv, node_pub)
    return first, commit_secret
