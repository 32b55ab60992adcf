"""The data a client keeps per group (RFC 9420 §8, §12), its configuration, the outcomes of processing
messages, and the persistent encoding of all of it.

An :class:`EpochState` is everything one epoch consists of for a member: GroupContext, public ratchet
tree, the member's private tree keys, the epoch secrets, the interim transcript hash and the confirmation
tag of the commit that started it. A commit (made or received) produces the next :class:`EpochState`;
the group object in :mod:`phx.mls.group` swaps it in.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from phx.codec import Reader, Writer
from phx.crypto import CipherSuite
from phx.errors import DecodeError
from phx.mls.framing import FramingContext
from phx.mls.key_schedule import EpochSecrets
from phx.mls.leaf_validation import MemberSupport
from phx.mls.messages import (
    Credential,
    GroupContext,
    LeafNode,
    MLSMessage,
    Proposal,
    ReInit,
    Sender,
    WireFormat,
)
from phx.mls.secret_tree import DEFAULT_MAX_FORWARD, DEFAULT_MAX_SKIPPED
from phx.mls.tree import RatchetTree
from phx.mls.treekem import PrivateTree

__all__ = [
    "ApplicationMessage",
    "CommitApplied",
    "CommitResult",
    "EpochState",
    "GroupConfig",
    "GroupStatus",
    "Member",
    "Outcome",
    "PastEpoch",
    "PendingCommit",
    "ProposalMessage",
    "ProposalReceived",
    "read_epoch_state",
    "write_epoch_state",
]


class GroupStatus(enum.IntEnum):
    ACTIVE = 1
    #: This client was removed by a commit; the group can only be inspected.
    REMOVED = 2
    #: A ReInit was committed: the group is frozen until it is re-created (§11.2).
    REINIT = 3
    #: An external join was sent but not confirmed yet (merge_pending_commit activates it).
    EXTERNAL_JOIN_PENDING = 4


@dataclass(frozen=True, slots=True)
class GroupConfig:
    """Per-group tuning, persisted with the group.

    * ``max_forward`` / ``max_skipped``: the out-of-order window of each sender ratchet (how far ahead a
      generation may be, how many skipped keys are kept).
    * ``resumption_psk_epochs``: how many past epochs' resumption PSKs are kept.
    * ``handshake_wire_format``: default framing of our proposals and commits (PublicMessage lets the
      DS track the group).
    * ``ratchet_tree_in_welcome`` / ``external_pub_in_group_info``: what Welcome and GroupInfo messages
      carry by default.
    * ``padding_block``: application messages are padded to a multiple of this many bytes (0: none).
    * ``max_past_epochs``: how many earlier epochs' message keys are kept to decrypt application
      messages that arrive after the next commit (0: none; each costs forward secrecy and a copy of the
      tree in the persisted state).
    """

    max_forward: int = DEFAULT_MAX_FORWARD
    max_skipped: int = DEFAULT_MAX_SKIPPED
    resumption_psk_epochs: int = 8
    handshake_wire_format: WireFormat = WireFormat.PUBLIC_MESSAGE
    ratchet_tree_in_welcome: bool = True
    external_pub_in_group_info: bool = True
    padding_block: int = 0
    max_past_epochs: int = 0

    def __post_init__(self) -> None:
        if self.handshake_wire_format not in (WireFormat.PUBLIC_MESSAGE, WireFormat.PRIVATE_MESSAGE):
            raise ValueError("handshake_wire_format must be PUBLIC_MESSAGE or PRIVATE_MESSAGE")
        values = (self.max_forward, self.max_skipped, self.resumption_psk_epochs, self.padding_block)
        if min(*values, self.max_past_epochs) < 0:
            raise ValueError("GroupConfig values must be non-negative")

    def write(self, w: Writer) -> None:
        w.u32(self.max_forward)
        w.u32(self.max_skipped)
        w.u32(self.resumption_psk_epochs)
        w.u16(self.handshake_wire_format)
        w.u8(int(self.ratchet_tree_in_welcome))
        w.u8(int(self.external_pub_in_group_info))
        w.u32(self.padding_block)
        w.u32(self.max_past_epochs)

    @classmethod
    def read(cls, r: Reader) -> GroupConfig:
        return cls(r.u32(), r.u32(), r.u32(), WireFormat.read(r), r.boolean(), r.boolean(), r.u32(), r.u32())


# --- what the application sees -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Member:
    leaf_index: int
    credential: Credential
    signature_key: bytes
    encryption_key: bytes

    @classmethod
    def of(cls, leaf_index: int, leaf: LeafNode) -> Member:
        return cls(leaf_index, leaf.credential, leaf.signature_key, leaf.encryption_key)


@dataclass(frozen=True, slots=True)
class ApplicationMessage:
    sender: int
    data: bytes
    authenticated_data: bytes
    epoch: int


@dataclass(frozen=True, slots=True)
class ProposalReceived:
    """A proposal was verified and stored; a later commit may include it by ``ref``."""

    ref: bytes
    proposal: Proposal
    sender: Sender
    authenticated_data: bytes


@dataclass(frozen=True, slots=True)
class CommitApplied:
    """A commit took effect. ``committer`` is the committer's leaf in the new tree (an external joiner's
    new leaf). ``removed`` lists members as they were before the commit."""

    epoch: int
    sender: Sender
    committer: int | None
    added: tuple[Member, ...]
    removed: tuple[Member, ...]
    updated: tuple[int, ...]
    proposals: tuple[Proposal, ...]
    external: bool
    extensions_changed: bool
    reinit: ReInit | None
    removed_self: bool
    authenticated_data: bytes

    def write(self, w: Writer) -> None:
        w.u64(self.epoch)
        self.sender._write(w)
        w.optional(self.committer, Writer.u32)
        for members in (self.added, self.removed):
            w.u32(len(members))
            for m in members:
                w.u32(m.leaf_index)
                m.credential._write(w)
                w.opaque(m.signature_key)
                w.opaque(m.encryption_key)
        w.vector(self.updated, Writer.u32)
        w.vector(self.proposals, Writer.struct)
        w.u8(int(self.external))
        w.u8(int(self.extensions_changed))
        w.optional(self.reinit, Writer.struct)
        w.u8(int(self.removed_self))
        w.opaque(self.authenticated_data)

    @classmethod
    def read(cls, r: Reader) -> CommitApplied:
        epoch = r.u64()
        sender = Sender.read(r)
        committer = r.optional(Reader.u32)
        lists: list[tuple[Member, ...]] = []
        for _ in range(2):
            lists.append(
                tuple(Member(r.u32(), Credential.read(r), r.opaque(), r.opaque()) for _ in range(r.u32()))
            )
        return cls(
            epoch,
            sender,
            committer,
            lists[0],
            lists[1],
            r.vector(Reader.u32),
            r.vector(Proposal.read),
            r.boolean(),
            r.boolean(),
            r.optional(ReInit.read),
            r.boolean(),
            r.opaque(),
        )


Outcome = ApplicationMessage | ProposalReceived | CommitApplied


@dataclass(frozen=True, slots=True)
class ProposalMessage:
    """A proposal we sent: the message for the DS and the reference a commit will use."""

    message: MLSMessage
    ref: bytes


@dataclass(frozen=True, slots=True)
class CommitResult:
    """What a commit of ours produced: send ``commit`` to the group (via the DS), ``welcome`` to the new
    members, and publish ``group_info`` for external joiners / the DS. Nothing changes locally until
    ``merge_pending_commit()``."""

    commit: MLSMessage
    welcome: MLSMessage | None
    group_info: MLSMessage | None


# --- epoch state ----------------------------------------------------------------------------------------


@dataclass
class EpochState:
    context: GroupContext
    tree: RatchetTree
    private: PrivateTree
    secrets: EpochSecrets
    interim_transcript_hash: bytes
    confirmation_tag: bytes
    support: MemberSupport = field(repr=False)

    @property
    def leaf_index(self) -> int:
        return self.private.leaf_index

    @property
    def epoch(self) -> int:
        return self.context.epoch


@dataclass
class PastEpoch:
    """What is kept of an earlier epoch to decrypt late application messages: its message keys and the
    tree (for the senders' signature keys)."""

    framing: FramingContext
    tree: RatchetTree


@dataclass
class PendingCommit:
    """A commit we created, waiting for the DS: the next epoch and what to report when it is merged."""

    state: EpochState
    result: CommitResult
    outcome: CommitApplied


_SECRET_FIELDS = (
    "joiner_secret",
    "welcome_secret",
    "epoch_secret",
    "sender_data_secret",
    "encryption_secret",
    "exporter_secret",
    "external_secret",
    "confirmation_key",
    "membership_key",
    "resumption_psk",
    "epoch_authenticator",
    "init_secret",
)


def write_epoch_state(w: Writer, state: EpochState) -> None:
    state.context._write(w)
    w.opaque(state.tree.encode())
    w.u32(state.private.leaf_index)
    nodes = state.private.nodes()
    w.u32(len(nodes))
    for x in nodes:
        priv = state.private.private_key(x)
        assert priv is not None
        w.u32(x)
        w.opaque(priv)
    for name in _SECRET_FIELDS:
        w.opaque(getattr(state.secrets, name))
    w.opaque(state.interim_transcript_hash)
    w.opaque(state.confirmation_tag)


def read_epoch_state(cs: CipherSuite, r: Reader) -> EpochState:
    context = GroupContext.read(r)
    if context.cipher_suite != cs.suite_id:
        raise DecodeError("stored GroupContext has another cipher suite")
    tree = RatchetTree.decode(cs, r.opaque())
    leaf_index = r.u32()
    keys: dict[int, bytes] = {}
    for _ in range(r.u32()):
        x = r.u32()
        keys[x] = r.opaque()
    leaf_key = keys.pop(2 * leaf_index, None)
    if leaf_key is None:
        raise DecodeError("stored private tree lacks the leaf key")
    private = PrivateTree(cs, leaf_index, leaf_key)
    for x, priv in keys.items():
        private.set_key(x, priv)
    secrets = EpochSecrets(cs, **{name: r.opaque() for name in _SECRET_FIELDS})
    interim = r.opaque()
    tag = r.opaque()
    return EpochState(context, tree, private, secrets, interim, tag, MemberSupport.of_tree(tree))
