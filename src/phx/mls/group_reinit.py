"""Re-initialising a group (RFC 9420 §11.2) and branching a subgroup (§11.3).

Both create a new group whose first commit (epoch 0 -> 1) adds the other members and injects a
resumption PSK of the old group (usage ``reinit`` or ``branch``) into the key schedule and the Welcome,
without a PreSharedKey proposal (such proposals are invalid, §11.2). Joiners check the link with
``Group.join_from_welcome(..., reinit_from=old_group)``.
"""

from __future__ import annotations

from collections.abc import Sequence

from phx.crypto import suite
from phx.errors import MlsError
from phx.mls.group import Group
from phx.mls.group_state import CommitResult, GroupStatus
from phx.mls.messages import Credential, KeyPackage, PreSharedKeyID, ResumptionPSKUsage
from phx.mls.welcome import resolve_psk_secret

__all__ = ["recreate_group"]


def recreate_group(
    old: Group,
    key_packages: Sequence[KeyPackage],
    *,
    now: int,
    credential: Credential | None = None,
    signature_private_key: bytes | None = None,
    branch: bool = False,
    group_id: bytes | None = None,
    group_info: bool = False,
) -> tuple[Group, CommitResult]:
    """See :meth:`Group.recreate`."""
    if branch:
        if old.status != GroupStatus.ACTIVE:
            raise MlsError("only an active group can be branched")
        usage = ResumptionPSKUsage.BRANCH
        cs, new_gid, exts = old.cs, group_id, old.extensions
    else:
        ri = old.reinit_proposal
        if old.status != GroupStatus.REINIT or ri is None:
            raise MlsError("the group has no committed ReInit")
        usage = ResumptionPSKUsage.REINIT
        cs, new_gid, exts = suite(ri.cipher_suite), ri.group_id, ri.extensions
    leaf = old.own_leaf
    sig = old._sig_priv if signature_private_key is None else signature_private_key
    new = Group.create(
        cs, leaf.credential if credential is None else credential, sig, now=now, group_id=new_gid,
        extensions=exts, capabilities=leaf.capabilities, leaf_extensions=leaf.extensions,
        config=old.config, psk_store=old.psk_store, credential_validator=old.credential_validator,
        client_identity=old.client_identity, resumption_source=old.resumption_source,
    )  # fmt: skip
    old_id, old_epoch = old.group_id, old.epoch
    value = old.resumption_psk(old_epoch)
    assert value is not None  # the current epoch's resumption PSK is always kept
    psk = PreSharedKeyID.resumption(usage, old_id, old_epoch, cs.random())

    def resolve(ids: Sequence[PreSharedKeyID]) -> bytes | None:
        # The old group's resumption PSK is known here, not to the new group.
        return resolve_psk_secret(
            cs, ids, None, lambda g, e: value if (g, e) == (old_id, old_epoch) else None
        )

    result = new._commit(
        now=now, add=key_packages, remove=(), psks=(), gce=None, reinit=None, by_reference=False,
        path=None, wire_format=None, authenticated_data=b"", ratchet_tree_in_welcome=None,
        group_info=group_info, leaf_extensions=None, extra_psks=[psk], resolve_psks=resolve,
    )  # fmt: skip
    return new, result
