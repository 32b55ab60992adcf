"""Joining a group: from a Welcome (RFC 9420 §12.4.3.1), and verifying a GroupInfo for an external join.

Both start from a GroupInfo whose ratchet tree (in its ratchet_tree extension or supplied out of band)
must be validated in full before anything in it is trusted: :func:`verified_tree`.
"""

from __future__ import annotations

from dataclasses import dataclass

from phx.crypto import CipherSuite
from phx.errors import DecodeError, MlsError
from phx.mls import tree_math as tm
from phx.mls.framing import sign_content
from phx.mls.group_state import EpochState
from phx.mls.key_package import KeyPackageBundle
from phx.mls.key_schedule import derive_epoch_secrets, epoch_secrets_from_joiner
from phx.mls.leaf_validation import (
    CredentialCheck,
    InvalidLeafNode,
    MemberSupport,
    check_group_context_extensions,
    check_leaf_supports_group,
)
from phx.mls.messages import (
    Add,
    Extension,
    ExtensionType,
    FramedContent,
    FramedContentAuthData,
    GroupContext,
    GroupInfo,
    LeafNode,
    MLSMessage,
    PreSharedKeyID,
    Proposal,
    ProtocolVersion,
    PSKType,
    PublicMessage,
    ReInit,
    ResumptionPSKUsage,
    Sender,
    Welcome,
    WireFormat,
    find_extension,
    parse_external_pub,
)
from phx.mls.transcript import interim_transcript_hash
from phx.mls.tree import RatchetTree
from phx.mls.tree_validation import validate_tree
from phx.mls.treekem import PrivateTree
from phx.mls.welcome import (
    PskStore,
    ResumptionLookup,
    check_psk_ids,
    decrypt_group_info,
    open_welcome,
    resolve_psk_secret,
    verify_group_info_signature,
)

__all__ = [
    "WelcomeJoin",
    "check_resumed_group",
    "external_pub_of",
    "initial_state",
    "join_welcome",
    "new_member_add_proposal",
    "verified_tree",
]


def verified_tree(
    cs: CipherSuite,
    group_info: GroupInfo,
    ratchet_tree: bytes | RatchetTree | None,
    check_credential: CredentialCheck | None,
) -> RatchetTree:
    """The group's tree (out of band if given, else the ratchet_tree extension), fully validated
    (§12.4.3.1), and the GroupInfo's signature checked against its signer's leaf."""
    gc = group_info.group_context
    if gc.cipher_suite != cs.suite_id:
        raise MlsError("GroupInfo cipher suite mismatch")
    if ratchet_tree is None:
        ext = find_extension(group_info.extensions, ExtensionType.RATCHET_TREE)
        if ext is None:
            raise MlsError("no ratchet tree: not in the GroupInfo and none supplied")
        ratchet_tree = ext.extension_data
    if isinstance(ratchet_tree, bytes):
        try:
            tree = RatchetTree.decode(cs, ratchet_tree)
        except DecodeError as e:
            raise MlsError(f"malformed ratchet tree: {e}") from e
    else:
        tree = ratchet_tree.copy()
    required = check_group_context_extensions(gc.extensions)
    check = None
    if check_credential is not None:
        cc = check_credential

        def check(_: int, leaf: object) -> None:
            cc(leaf)  # type: ignore[arg-type]

    validate_tree(tree, gc.group_id, tree_hash=gc.tree_hash, required=required, check_credential=check)
    for i, leaf in tree.leaves():
        try:
            check_leaf_supports_group(leaf, gc.extensions, required, f"leaf {i}")
        except InvalidLeafNode as e:
            raise MlsError(f"ratchet tree: {e}") from e
    signer = tree.leaf(group_info.signer)
    if signer is None:
        raise MlsError(f"GroupInfo signer {group_info.signer} is a blank leaf")
    verify_group_info_signature(cs, group_info, signer.signature_key)
    return tree


@dataclass
class WelcomeJoin:
    state: EpochState
    group_info: GroupInfo
    #: The reinit/branch resumption PSK the Welcome used, if any (the caller checks its old group).
    resumption: PreSharedKeyID | None


def join_welcome(
    welcome: Welcome,
    bundle: KeyPackageBundle,
    *,
    ratchet_tree: bytes | RatchetTree | None,
    psk_store: PskStore | None,
    resumption: ResumptionLookup,
    check_credential: CredentialCheck | None,
) -> WelcomeJoin:
    """Everything of §12.4.3.1 but the checks against a re-initialised or branched old group."""
    cs = bundle.cipher_suite
    kp = bundle.key_package
    secrets = open_welcome(cs, welcome, bundle.ref(), bundle.init_private_key)
    check_psk_ids(cs, secrets.psks, allow_reinit_branch=True)
    psk_secret = resolve_psk_secret(cs, secrets.psks, psk_store, resumption)
    gi = decrypt_group_info(cs, welcome, secrets.joiner_secret, psk_secret)
    gc = gi.group_context
    if gc.version != kp.version:
        raise MlsError("the group's protocol version does not match the KeyPackage's")
    tree = verified_tree(cs, gi, ratchet_tree, check_credential)
    me = tree.signature_key_owner(kp.leaf_node.signature_key)
    if me is None or tree.leaf(me) != kp.leaf_node:
        raise MlsError("our KeyPackage's leaf is not in the group's tree")
    private = PrivateTree(cs, me, bundle.encryption_private_key)
    if secrets.path_secret is not None:
        if gi.signer == me:
            raise MlsError("the GroupInfo claims to be signed by the new member itself")
        ancestor = tm.common_ancestor(2 * me, 2 * gi.signer)
        private.implant(tree, ancestor, secrets.path_secret.path_secret)
    epoch = epoch_secrets_from_joiner(cs, secrets.joiner_secret, gc.encode(), psk_secret)
    epoch.verify_confirmation_tag(gc.confirmed_transcript_hash, gi.confirmation_tag)
    interim = interim_transcript_hash(cs, gc.confirmed_transcript_hash, gi.confirmation_tag)
    special = [
        p
        for p in secrets.psks
        if p.psktype == PSKType.RESUMPTION
        and p.usage in (ResumptionPSKUsage.REINIT, ResumptionPSKUsage.BRANCH)
    ]
    if special and gc.epoch != 1:
        raise MlsError("a Welcome with a reinit/branch PSK must be for epoch 1")
    state = EpochState(gc, tree, private, epoch, interim, gi.confirmation_tag, MemberSupport.of_tree(tree))
    return WelcomeJoin(state, gi, special[0] if special else None)


def initial_state(
    cs: CipherSuite,
    leaf: LeafNode,
    encryption_private_key: bytes,
    group_id: bytes,
    extensions: tuple[Extension, ...],
) -> EpochState:
    """Epoch 0 of a new one-member group (§11)."""
    required = check_group_context_extensions(extensions)
    check_leaf_supports_group(leaf, extensions, required, "creator's leaf")
    tree = RatchetTree.one_member(cs, leaf)
    ctx = GroupContext(ProtocolVersion.MLS10, cs.suite_id, group_id, 0, tree.tree_hash(), b"", extensions)
    # §11 asks for a random epoch secret; deriving it from a random init secret is the same distribution.
    secrets = derive_epoch_secrets(cs, cs.random(), None, ctx.encode())
    tag = secrets.confirmation_tag(b"")
    private = PrivateTree(cs, 0, encryption_private_key)
    interim = interim_transcript_hash(cs, b"", tag)
    return EpochState(ctx, tree, private, secrets, interim, tag, MemberSupport.of_tree(tree))


def check_resumed_group(joined: WelcomeJoin, old: GroupContext, committed_reinit: ReInit | None) -> None:
    """§12.4.3.1: a Welcome resuming ``old`` (reinit or branch) fits it. ``committed_reinit`` is the ReInit
    the old group's last commit carried, if any."""
    r = joined.resumption
    gc = joined.group_info.group_context
    if r is None or r.psk_group_id != old.group_id:
        raise MlsError("the Welcome does not resume the given old group")
    if r.usage == ResumptionPSKUsage.REINIT:
        ri = committed_reinit
        if ri is None or r.psk_epoch != old.epoch:
            raise MlsError("the old group's last commit is not a ReInit for this epoch")
        if (ri.group_id, ri.version, ri.cipher_suite, ri.extensions) != (
            gc.group_id, gc.version, gc.cipher_suite, gc.extensions,
        ):  # fmt: skip
            raise MlsError("the new group does not match the committed ReInit")
    elif (gc.version, gc.cipher_suite) != (old.version, old.cipher_suite):
        raise MlsError("a branched group must keep the old group's version and cipher suite")


def external_pub_of(group_info: GroupInfo) -> bytes:
    ext = find_extension(group_info.extensions, ExtensionType.EXTERNAL_PUB)
    if ext is None:
        raise MlsError("the GroupInfo has no external_pub extension")
    try:
        return parse_external_pub(ext)
    except DecodeError as e:
        raise MlsError(f"malformed external_pub extension: {e}") from e


def new_member_add_proposal(
    group_info: GroupInfo, bundle: KeyPackageBundle, *, authenticated_data: bytes = b""
) -> MLSMessage:
    """A non-member asks to be added (§12.1.8, sender new_member_proposal): an Add of its own KeyPackage,
    signed with the KeyPackage's key, for the epoch of ``group_info``. A member commits it and the
    Welcome follows as usual."""
    cs = bundle.cipher_suite
    gc = group_info.group_context
    if gc.cipher_suite != cs.suite_id:
        raise MlsError("the KeyPackage's cipher suite does not match the group's")
    proposal = Proposal(Add(bundle.key_package))
    content = FramedContent(gc.group_id, gc.epoch, Sender.new_member_proposal(), authenticated_data, proposal)
    sig = sign_content(cs, bundle.signature_private_key, WireFormat.PUBLIC_MESSAGE, content, None)
    return MLSMessage(PublicMessage(content, FramedContentAuthData(sig)))
