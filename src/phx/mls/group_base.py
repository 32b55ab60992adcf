"""State holder and read-only API of :class:`~phx.mls.group.Group` (split off to keep modules small).

:class:`GroupBase` owns the fields (current epoch, framing context, proposal store, pending commit, kept
resumption PSKs and past epochs, status), the accessors the application reads, and the epoch switch
(:meth:`GroupBase._install`); :class:`~phx.mls.group.Group` adds the operations.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from phx.crypto import CipherSuite
from phx.errors import MlsError
from phx.mls.commit_core import ClientIdentity, ProposalStore, StoredProposal
from phx.mls.framing import FramingContext
from phx.mls.group_commit import build_group_info
from phx.mls.group_state import (
    CommitApplied,
    CommitResult,
    EpochState,
    GroupConfig,
    GroupStatus,
    Member,
    PastEpoch,
    PendingCommit,
)
from phx.mls.key_package import CredentialValidator
from phx.mls.messages import Extension, GroupContext, GroupInfo, LeafNode, MLSMessage, PreSharedKeyID, ReInit
from phx.mls.secret_tree import SecretTree
from phx.mls.tree import RatchetTree
from phx.mls.welcome import PskStore, ResumptionLookup, resolve_psk_secret

__all__ = ["GroupBase"]


class GroupBase:
    """Fields and accessors of a member's group state; see :class:`phx.mls.group.Group`."""

    def __init__(
        self,
        cs: CipherSuite,
        state: EpochState,
        signature_private_key: bytes,
        *,
        config: GroupConfig | None = None,
        psk_store: PskStore | None = None,
        credential_validator: CredentialValidator | None = None,
        client_identity: ClientIdentity | None = None,
        resumption_source: ResumptionLookup | None = None,
        secret_tree: SecretTree | None = None,
        status: GroupStatus = GroupStatus.ACTIVE,
    ) -> None:
        """Low-level constructor; use :meth:`create`, :meth:`join_from_welcome`, :meth:`join_external`
        or :meth:`from_bytes`."""
        self.cs = cs
        self.config = config or GroupConfig()
        self.psk_store = psk_store
        self.credential_validator = credential_validator
        self.client_identity = client_identity
        self.resumption_source = resumption_source
        self._sig_priv = signature_private_key
        self._state = state
        self._framing = self._framing_for(state, secret_tree)
        self._store = ProposalStore(cs)
        self._own_updates: dict[bytes, bytes] = {}
        self._pending: PendingCommit | None = None
        self._resumption: dict[int, bytes] = {state.epoch: state.secrets.resumption_psk}
        self._status = status
        self._reinit: ReInit | None = None
        self._past: list[PastEpoch] = []

    def __repr__(self) -> str:
        gc = self._state.context
        return (
            f"Group(id={gc.group_id.hex()[:16]}, epoch={gc.epoch}, leaf={self.leaf_index}, "
            f"members={self._state.tree.member_count()}, {self._status.name.lower()})"
        )

    # --- reading ---------------------------------------------------------------------------------------
    @property
    def group_id(self) -> bytes:
        return self._state.context.group_id

    @property
    def epoch(self) -> int:
        return self._state.context.epoch

    @property
    def context(self) -> GroupContext:
        return self._state.context

    @property
    def extensions(self) -> tuple[Extension, ...]:
        return self._state.context.extensions

    @property
    def leaf_index(self) -> int:
        return self._state.leaf_index

    @property
    def status(self) -> GroupStatus:
        return self._status

    @property
    def is_active(self) -> bool:
        return self._status == GroupStatus.ACTIVE

    @property
    def reinit_proposal(self) -> ReInit | None:
        """The committed ReInit when :attr:`status` is REINIT."""
        return self._reinit

    @property
    def tree(self) -> RatchetTree:
        """The public ratchet tree (do not mutate)."""
        return self._state.tree

    @property
    def epoch_authenticator(self) -> bytes:
        return self._state.secrets.epoch_authenticator

    @property
    def member_count(self) -> int:
        return self._state.tree.member_count()

    @property
    def own_leaf(self) -> LeafNode:
        return self._state.tree.require_leaf(self.leaf_index)

    @property
    def pending_commit(self) -> CommitResult | None:
        return None if self._pending is None else self._pending.result

    def member(self, leaf_index: int) -> Member | None:
        leaf = self._state.tree.leaf(leaf_index)
        return None if leaf is None else Member.of(leaf_index, leaf)

    def members(self) -> Iterator[Member]:
        for i, leaf in self._state.tree.leaves():
            yield Member.of(i, leaf)

    def pending_proposals(self) -> list[StoredProposal]:
        return list(self._store)

    def export_secret(self, label: bytes, context: bytes, length: int) -> bytes:
        """MLS-Exporter (§8.5) of the current epoch."""
        return self._state.secrets.export(label, context, length)

    def resumption_psk(self, epoch: int) -> bytes | None:
        """This group's resumption PSK of ``epoch`` if still kept (the last ``resumption_psk_epochs``)."""
        return self._resumption.get(epoch)

    def group_info(
        self,
        *,
        ratchet_tree: bool = True,
        external_pub: bool | None = None,
        extensions: Sequence[Extension] = (),
    ) -> MLSMessage:
        """A signed GroupInfo for the current epoch (for external joins or the DS)."""
        ep = self.config.external_pub_in_group_info if external_pub is None else external_pub
        gi = build_group_info(
            self.cs, self._state, self._sig_priv, ratchet_tree=ratchet_tree, external_pub=ep, extra=extensions
        )
        return MLSMessage(gi)

    def pending_group_info(self, *, ratchet_tree: bool = False, external_pub: bool = True) -> GroupInfo:
        """The signed GroupInfo of the epoch our pending commit (or external join) moves to; the DS
        rebuilds it from the signature (Phoenix "GroupInfo updates"). Raises MlsError without one."""
        if self._pending is None:
            raise MlsError("no pending commit")
        return build_group_info(
            self.cs, self._pending.state, self._sig_priv, ratchet_tree=ratchet_tree, external_pub=external_pub
        )

    @property
    def pending_context(self) -> GroupContext:
        """The GroupContext of the epoch our pending commit moves to. Raises MlsError without one."""
        if self._pending is None:
            raise MlsError("no pending commit")
        return self._pending.state.context

    # --- epoch changes ---------------------------------------------------------------------------------
    def _framing_for(self, state: EpochState, secret_tree: SecretTree | None = None) -> FramingContext:
        cfg = self.config
        if secret_tree is None:
            secret_tree = SecretTree(
                self.cs, state.secrets.encryption_secret, state.tree.n_leaves,
                max_forward=cfg.max_forward, max_skipped=cfg.max_skipped,
            )  # fmt: skip
        return FramingContext(
            self.cs,
            state.context,
            state.secrets.sender_data_secret,
            state.secrets.membership_key,
            secret_tree,
        )

    def _install(self, state: EpochState, outcome: CommitApplied) -> None:
        keep_past = self.config.max_past_epochs
        if keep_past:
            self._past.append(PastEpoch(self._framing, self._state.tree))
            del self._past[:-keep_past]
        self._state = state
        self._framing = self._framing_for(state)
        self._store.clear()
        self._own_updates.clear()
        self._pending = None
        self._resumption[state.epoch] = state.secrets.resumption_psk
        keep = max(self.config.resumption_psk_epochs, 1)
        for e in sorted(self._resumption)[:-keep]:
            del self._resumption[e]
        if outcome.reinit is not None:
            self._status = GroupStatus.REINIT
            self._reinit = outcome.reinit

    # --- PSKs ------------------------------------------------------------------------------------------
    def _psk_id(self, psk: PreSharedKeyID | bytes) -> PreSharedKeyID:
        return psk if isinstance(psk, PreSharedKeyID) else PreSharedKeyID.external(psk, self.cs.random())

    def _lookup_resumption(self, group_id: bytes, epoch: int) -> bytes | None:
        if group_id == self.group_id:
            return self._resumption.get(epoch)
        return None

    def _resolve_psks(self, ids: Sequence[PreSharedKeyID]) -> bytes | None:
        outer = self.resumption_source

        def lookup(group_id: bytes, epoch: int) -> bytes | None:
            v = self._lookup_resumption(group_id, epoch)
            if v is None and outer is not None:
                v = outer(group_id, epoch)
            return v

        return resolve_psk_secret(self.cs, ids, self.psk_store, lookup)

    def _require(self, status: GroupStatus) -> None:
        if self._status != status:
            raise MlsError(f"the group is {self._status.name.lower()}, not {status.name.lower()}")
