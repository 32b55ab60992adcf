"""The persistent encoding of a :class:`~phx.mls.group.Group` (``Group.to_bytes`` / ``from_bytes``).

Format 2, all integers big-endian, vectors as in the MLS wire format::

    u8 format, u16 cipher suite, GroupConfig, u8 status, optional<ReInit>, opaque signature key,
    EpochState, opaque tree-hash cache, opaque secret tree, opaque proposal store, own Update keys,
    resumption PSKs, past epochs (GroupContext, sender data secret, tree, secret tree),
    optional pending commit (EpochState, opaque tree-hash cache, ...)

Format 1 (still read) is the same without the two tree-hash caches. A cache
(:meth:`RatchetTree.export_hash_cache`) spares rehashing the whole tree after a restore; it is trusted
(after a check of its root against the GroupContext) because this state is the client's own.

Everything secret is in there (signature key, epoch secrets, ratchets): the caller stores it encrypted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from phx.codec import Reader, Writer, decode_all
from phx.crypto import CipherSuite, suite
from phx.errors import DecodeError, PhxError
from phx.mls.framing import FramingContext
from phx.mls.group_state import (
    CommitApplied,
    CommitResult,
    EpochState,
    GroupConfig,
    GroupStatus,
    PastEpoch,
    PendingCommit,
    read_epoch_state,
    write_epoch_state,
)
from phx.mls.messages import GroupContext, MLSMessage, ReInit
from phx.mls.proposal_validation import ProposalStore
from phx.mls.secret_tree import SecretTree
from phx.mls.tree import RatchetTree

if TYPE_CHECKING:
    from phx.mls.group import Group

__all__ = ["decode_group", "encode_group"]

_FORMAT = 2


def _write_state(w: Writer, state: EpochState, version: int) -> None:
    write_epoch_state(w, state)
    if version >= 2:
        w.opaque(state.tree.export_hash_cache())


def _read_state(cs: CipherSuite, r: Reader, version: int) -> EpochState:
    state = read_epoch_state(cs, r)
    if version >= 2:
        state.tree.import_hash_cache(r.opaque(), state.context.tree_hash)
    return state


def encode_group(g: Group, *, version: int = _FORMAT) -> bytes:
    """``version`` 1 writes the old format (for tests of the reader)."""
    if version not in (1, _FORMAT):
        raise ValueError(f"unknown group state format {version}")
    w = Writer()
    w.u8(version)
    w.u16(g.cs.suite_id)
    g.config.write(w)
    w.u8(g._status)
    w.optional(g._reinit, Writer.struct)
    w.opaque(g._sig_priv)
    _write_state(w, g._state, version)
    w.opaque(g._framing._tree().to_bytes())
    w.opaque(g._store.encode())
    w.u32(len(g._own_updates))
    for ref, key in g._own_updates.items():
        w.opaque(ref)
        w.opaque(key)
    w.u32(len(g._resumption))
    for epoch, psk in sorted(g._resumption.items()):
        w.u64(epoch)
        w.opaque(psk)
    w.u32(len(g._past))
    for past in g._past:
        fr = past.framing
        assert fr.sender_data_secret is not None
        fr.group_context._write(w)
        w.opaque(fr.sender_data_secret)
        w.opaque(past.tree.encode())
        w.opaque(fr._tree().to_bytes())
    pending = g._pending
    w.u8(pending is not None)
    if pending is not None:
        _write_state(w, pending.state, version)
        r = pending.result
        w.opaque(r.commit.encode())
        w.optional(r.welcome, Writer.struct)
        w.optional(r.group_info, Writer.struct)
        pending.outcome.write(w)
    return w.getvalue()


def decode_group(cls: type[Group], data: bytes, **hooks: Any) -> Group:
    def read(r: Reader) -> Group:
        version = r.u8()
        if version not in (1, _FORMAT):
            raise DecodeError("unknown group state format")
        cs = suite(r.u16())
        config = GroupConfig.read(r)
        status = GroupStatus(r.u8())
        reinit = r.optional(ReInit.read)
        sig_priv = r.opaque()
        state = _read_state(cs, r, version)
        secret_tree = SecretTree.from_bytes(cs, r.opaque())
        g = cls(cs, state, sig_priv, config=config, secret_tree=secret_tree, status=status, **hooks)
        g._reinit = reinit
        g._store = ProposalStore.decode(cs, r.opaque())
        g._own_updates = {r.opaque(): r.opaque() for _ in range(r.u32())}
        g._resumption = {r.u64(): r.opaque() for _ in range(r.u32())}
        for _ in range(r.u32()):
            ctx = GroupContext.read(r)
            sender_data_secret = r.opaque()
            tree = RatchetTree.decode(cs, r.opaque())
            st = SecretTree.from_bytes(cs, r.opaque())
            g._past.append(PastEpoch(FramingContext(cs, ctx, sender_data_secret, None, st), tree))
        if r.boolean():
            pstate = _read_state(cs, r, version)
            commit = MLSMessage.decode(r.opaque())
            welcome = r.optional(MLSMessage.read)
            gi = r.optional(MLSMessage.read)
            g._pending = PendingCommit(pstate, CommitResult(commit, welcome, gi), CommitApplied.read(r))
        return g

    try:
        return decode_all(read, data)
    except DecodeError:
        raise
    except (PhxError, ValueError) as e:
        raise DecodeError(f"invalid group state: {e}") from e
