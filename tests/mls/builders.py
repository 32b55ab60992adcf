"""Test helpers that build MLS groups, proposals and commits from the building blocks directly.

Deliberately independent of the commit core under test: proposals are applied to the tree with raw
RatchetTree operations and nothing is validated, so tests can also build *invalid* commits (what an
attacker would send). Everything is public-state only, plus the private keys a member would hold.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from phx.crypto import SUITE_1, CipherSuite
from phx.mls.framing import sign_content
from phx.mls.messages import (
    Add,
    AuthenticatedContent,
    Capabilities,
    Commit,
    Credential,
    Extension,
    ExternalInit,
    FramedContent,
    FramedContentAuthData,
    GroupContext,
    GroupContextExtensions,
    GroupInfo,
    KeyPackage,
    LeafNode,
    LeafNodeSource,
    Lifetime,
    Proposal,
    ProposalOrRef,
    ProtocolVersion,
    PublicMessage,
    Remove,
    Sender,
    SenderType,
    Update,
    UpdatePath,
    WireFormat,
)
from phx.mls.messages.refs import make_proposal_ref
from phx.mls.transcript import confirmed_transcript_hash, interim_transcript_hash
from phx.mls.tree import RatchetTree
from phx.mls.treekem import PendingPath, commit_leaf_node, generate_update_path

CS = SUITE_1
GROUP_ID = b"builders test group"
FAR_FUTURE = 2**63


@dataclass
class Client:
    """A client's keys and its KeyPackage."""

    name: str
    sig_priv: bytes
    sig_pub: bytes
    enc_priv: bytes
    enc_pub: bytes
    init_priv: bytes
    key_package: KeyPackage

    @property
    def leaf(self) -> LeafNode:
        return self.key_package.leaf_node


def default_capabilities(**kw: Any) -> Capabilities:
    args: dict[str, Any] = {"cipher_suites": (1,), "credentials": (1,)}
    args.update(kw)
    return Capabilities(**args)


def make_client(
    name: str,
    cs: CipherSuite = CS,
    *,
    capabilities: Capabilities | None = None,
    lifetime: Lifetime | None = None,
    extensions: tuple[Extension, ...] = (),
    credential: Credential | None = None,
    sig_keys: tuple[bytes, bytes] | None = None,
    enc_keys: tuple[bytes, bytes] | None = None,
) -> Client:
    sig_priv, sig_pub = sig_keys or cs.generate_signature_key_pair()
    enc_priv, enc_pub = enc_keys or cs.generate_hpke_key_pair()
    init_priv, init_pub = cs.generate_hpke_key_pair()
    leaf = sign_leaf(
        cs,
        LeafNode(
            enc_pub,
            sig_pub,
            credential or Credential.basic(name.encode()),
            capabilities or default_capabilities(),
            LeafNodeSource.KEY_PACKAGE,
            lifetime or Lifetime(0, FAR_FUTURE),
            None,
            extensions,
            b"",
        ),
        sig_priv,
    )
    kp = sign_key_package(
        cs, KeyPackage(ProtocolVersion.MLS10, cs.suite_id, init_pub, leaf, (), b""), sig_priv
    )
    return Client(name, sig_priv, sig_pub, enc_priv, enc_pub, init_priv, kp)


def sign_leaf(
    cs: CipherSuite, leaf: LeafNode, sig_priv: bytes, group_id: bytes | None = None, index: int | None = None
) -> LeafNode:
    unsigned = replace(leaf, signature=b"")
    tbs = unsigned.tbs(group_id, index)
    return unsigned.with_signature(cs.sign_with_label(sig_priv, b"LeafNodeTBS", tbs))


def sign_key_package(cs: CipherSuite, kp: KeyPackage, sig_priv: bytes) -> KeyPackage:
    return kp.with_signature(cs.sign_with_label(sig_priv, b"KeyPackageTBS", kp.tbs()))


def update_leaf(
    cs: CipherSuite, client: Client, group_id: bytes, index: int, *, enc_pub: bytes | None = None
) -> LeafNode:
    """A signed update-source leaf for ``client`` at ``index`` with a fresh encryption key."""
    if enc_pub is None:
        _, enc_pub = cs.generate_hpke_key_pair()
    base = replace(
        client.leaf,
        encryption_key=enc_pub,
        leaf_node_source=LeafNodeSource.UPDATE,
        lifetime=None,
        signature=b"",
    )
    return sign_leaf(cs, base, client.sig_priv, group_id, index)


@dataclass
class Group:
    """The public state of a group (tree, context, interim transcript hash) plus every member's keys."""

    cs: CipherSuite
    tree: RatchetTree
    context: GroupContext
    interim: bytes
    clients: dict[int, Client]
    confirmation_tag: bytes = field(default_factory=lambda: os.urandom(32))

    @classmethod
    def create(
        cls,
        n: int,
        cs: CipherSuite = CS,
        *,
        group_id: bytes = GROUP_ID,
        extensions: tuple[Extension, ...] = (),
        epoch: int = 0,
        clients: list[Client] | None = None,
    ) -> Group:
        """A group of ``n`` members whose tree is built directly (leaves only, all parents blank)."""
        clients = clients if clients is not None else [make_client(f"member {i}", cs) for i in range(n)]
        nodes: list[LeafNode | None] = []
        for c in clients:
            nodes += [c.leaf, None]
        tree = RatchetTree(cs, nodes[:-1])
        ctx = GroupContext(
            ProtocolVersion.MLS10, cs.suite_id, group_id, epoch, tree.tree_hash(), b"", extensions
        )
        tag = os.urandom(32)
        # §11: the creator's interim transcript hash already covers the first confirmation tag.
        return cls(cs, tree, ctx, interim_transcript_hash(cs, b"", tag), dict(enumerate(clients)), tag)

    def group_info(self, signer: int = 0, extensions: tuple[Extension, ...] = ()) -> GroupInfo:
        gi = GroupInfo(self.context, extensions, self.confirmation_tag, signer, b"")
        sig = self.cs.sign_with_label(self.clients[signer].sig_priv, b"GroupInfoTBS", gi.tbs())
        return gi.with_signature(sig)

    # --- proposals --------------------------------------------------------------------------------
    def proposal_message(
        self,
        sender: int,
        proposal: Proposal,
        *,
        sender_obj: Sender | None = None,
        sig_priv: bytes | None = None,
    ) -> PublicMessage:
        snd = sender_obj or Sender.member(sender)
        content = FramedContent(self.context.group_id, self.context.epoch, snd, b"", proposal)
        priv = sig_priv if sig_priv is not None else self.clients[sender].sig_priv
        sig = sign_content(self.cs, priv, WireFormat.PUBLIC_MESSAGE, content, self.context)
        tag = os.urandom(32) if snd.sender_type == SenderType.MEMBER else None
        return PublicMessage(content, FramedContentAuthData(sig), tag)

    def ref_of(self, msg: PublicMessage) -> bytes:
        auth = AuthenticatedContent(WireFormat.PUBLIC_MESSAGE, msg.content, msg.auth)
        return make_proposal_ref(self.cs, auth.encode())

    # --- commits ----------------------------------------------------------------------------------
    def commit(
        self,
        sender: int,
        proposals: Sequence[Proposal | bytes] = (),
        *,
        path: bool = True,
        referenced: dict[bytes, tuple[Proposal, int]] | None = None,
        new_extensions: tuple[Extension, ...] | None = None,
        tamper_path: Any = None,
    ) -> tuple[PublicMessage, RatchetTree]:
        """A signed commit from member ``sender`` (proposals inline, or refs with their (proposal, sender)
        in ``referenced``) and the tree it leads to. Nothing is validated."""
        tree = self.tree.copy()
        items = []
        for p in proposals:
            if isinstance(p, bytes):
                assert referenced is not None
                items.append((referenced[p][0], referenced[p][1]))
            else:
                items.append((p, sender))
        added = self._apply(tree, items)
        exts = new_extensions if new_extensions is not None else self._new_extensions(items)
        upath = None
        if path:
            upath = self._path(tree, sender, added, exts, self.clients[sender])
            if tamper_path is not None:
                upath = tamper_path(upath)
        commit = Commit(tuple(ProposalOrRef(p) for p in proposals), upath)
        content = FramedContent(self.context.group_id, self.context.epoch, Sender.member(sender), b"", commit)
        sig = sign_content(
            self.cs, self.clients[sender].sig_priv, WireFormat.PUBLIC_MESSAGE, content, self.context
        )
        tag = os.urandom(32)
        return PublicMessage(content, FramedContentAuthData(sig, tag), os.urandom(32)), tree

    def external_commit(
        self,
        joiner: Client,
        *,
        remove: int | None = None,
        path: bool = True,
        extra: Sequence[Proposal] = (),
        external_init: bool = True,
    ) -> tuple[PublicMessage, RatchetTree]:
        tree = self.tree.copy()
        proposals: list[Proposal] = []
        if external_init:
            proposals.append(Proposal(ExternalInit(os.urandom(32))))
        if remove is not None:
            proposals.append(Proposal(Remove(remove)))
        proposals.extend(extra)
        self._apply(tree, [(p, -1) for p in proposals])
        upath = None
        if path:
            index = tree.free_leaf()
            upath = self._path(tree, index, [], self.context.extensions, joiner)
        commit = Commit(tuple(ProposalOrRef(p) for p in proposals), upath)
        content = FramedContent(
            self.context.group_id, self.context.epoch, Sender.new_member_commit(), b"", commit
        )
        sig = sign_content(self.cs, joiner.sig_priv, WireFormat.PUBLIC_MESSAGE, content, self.context)
        return PublicMessage(content, FramedContentAuthData(sig, os.urandom(32))), tree

    def _new_extensions(self, items: list[tuple[Proposal, int]]) -> tuple[Extension, ...]:
        for p, _ in items:
            if isinstance(p.value, GroupContextExtensions):
                return p.value.extensions
        return self.context.extensions

    @staticmethod
    def _apply(tree: RatchetTree, items: list[tuple[Proposal, int]]) -> list[int]:
        for p, s in items:
            if isinstance(p.value, Update):
                tree.update_leaf(s, p.value.leaf_node)
        for p, _ in items:
            if isinstance(p.value, Remove) and tree.leaf(p.value.removed) is not None:
                tree.remove_leaf(p.value.removed)
        added = []
        for p, _ in items:
            if isinstance(p.value, Add):
                added.append(tree.add_leaf(p.value.key_package.leaf_node))
        return added

    def _path(
        self, tree: RatchetTree, index: int, added: list[int], exts: tuple[Extension, ...], client: Client
    ) -> UpdatePath:
        cs, gid = self.cs, self.context.group_id
        base = tree.leaf(index) or client.leaf

        def make_leaf(enc: bytes, ph: bytes) -> LeafNode:
            return commit_leaf_node(cs, base, enc, ph, gid, index, client.sig_priv)

        pending: PendingPath = generate_update_path(tree, index, make_leaf, exclude=added)
        provisional = replace(
            self.context, epoch=self.context.epoch + 1, tree_hash=tree.tree_hash(), extensions=exts
        )
        return pending.encrypt(provisional.encode())

    def advance(self, msg: PublicMessage, tree: RatchetTree) -> None:
        """Move this view to the epoch ``msg`` (built by :meth:`commit`) starts."""
        ctx, interim = self.expected_context(msg, tree)
        assert msg.auth.confirmation_tag is not None
        self.tree, self.context, self.interim = tree, ctx, interim
        self.confirmation_tag = msg.auth.confirmation_tag

    # --- advancing our own view (what a correct DS would compute) ---------------------------------
    def expected_context(self, msg: PublicMessage, tree: RatchetTree) -> tuple[GroupContext, bytes]:
        commit = msg.content.commit
        assert commit is not None and msg.auth.confirmation_tag is not None
        confirmed = confirmed_transcript_hash(
            self.cs, self.interim, WireFormat.PUBLIC_MESSAGE, msg.content, msg.auth.signature
        )
        exts = self.context.extensions
        for por in commit.proposals:
            if por.proposal is not None and isinstance(por.proposal.value, GroupContextExtensions):
                exts = por.proposal.value.extensions
        ctx = replace(
            self.context,
            epoch=self.context.epoch + 1,
            tree_hash=tree.tree_hash(),
            confirmed_transcript_hash=confirmed,
            extensions=exts,
        )
        return ctx, interim_transcript_hash(self.cs, confirmed, msg.auth.confirmation_tag)
