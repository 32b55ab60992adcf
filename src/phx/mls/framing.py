"""Message protection (RFC 9420 §6): signing FramedContent, PublicMessage and PrivateMessage.

Everything an epoch contributes is bundled in a :class:`FramingContext` (cipher suite, GroupContext and
its encoding, ``sender_data_secret``, ``membership_key`` and the epoch's :class:`SecretTree`); no group
object is involved. Who may sign for a sender is the caller's knowledge, passed as a
:data:`SignatureKeyLookup` (content -> signature public key) that raises for an unknown sender.

Sending::

    auth = authenticate(ctx, content, signature_priv)          # commits: pass confirmation_tag
    msg = protect_private(ctx, auth)   or   protect_public(ctx, auth)

Receiving::

    auth = unprotect_private(ctx, msg, lookup)   or   unprotect_public(ctx, msg, lookup)

A PrivateMessage's ratchet key is consumed only once its AEAD opened, so a forged message cannot burn
the key of the genuine one (see :mod:`phx.mls.secret_tree`).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from phx.codec import encode_varint
from phx.crypto import CipherSuite, HpkeError
from phx.errors import DecodeError, MlsError, WrongEpoch
from phx.mls.key_schedule import EpochSecrets, verify_membership_tag
from phx.mls.messages import (
    AuthenticatedContent,
    ContentType,
    FramedContent,
    FramedContentAuthData,
    GroupContext,
    PrivateMessage,
    PrivateMessageContent,
    PublicMessage,
    Sender,
    SenderData,
    SenderType,
    WireFormat,
    authenticated_content_tbm,
    framed_content_tbs,
)
from phx.mls.secret_tree import InvalidSenderLeaf, SecretTree, sender_data_key_nonce

__all__ = [
    "FramingContext",
    "SignatureKeyLookup",
    "authenticate",
    "decrypt_private",
    "protect_application",
    "protect_private",
    "protect_public",
    "sign_content",
    "unprotect_private",
    "unprotect_public",
    "verify_content",
]

#: Maps the content of a message to the signature public key of its sender; raises for a sender that
#: cannot sign in this epoch (blank leaf, unknown external sender index...).
SignatureKeyLookup = Callable[[FramedContent], bytes]

_LABEL_TBS = b"FramedContentTBS"
_U64 = struct.Struct(">Q")
_SENDER_DATA = struct.Struct(">II4s")


class MessageDecryptionError(MlsError):
    code = "mls_decrypt_failed"


@dataclass(slots=True)
class FramingContext:
    """Per-epoch inputs of message protection. ``secret_tree`` is ``None`` where only PublicMessages
    are handled; ``membership_key`` is ``None`` where membership tags cannot be checked."""

    cs: CipherSuite
    group_context: GroupContext
    sender_data_secret: bytes | None = None
    membership_key: bytes | None = None
    secret_tree: SecretTree | None = None
    group_context_bytes: bytes = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # FramedContentTBS of every member message embeds the GroupContext: encode it once per epoch.
        self.group_context_bytes = self.group_context.encode()

    @classmethod
    def for_epoch(
        cls,
        cs: CipherSuite,
        group_context: GroupContext,
        secrets: EpochSecrets,
        n_leaves: int,
        **tree_opts: int,
    ) -> FramingContext:
        tree = SecretTree(cs, secrets.encryption_secret, n_leaves, **tree_opts)
        return cls(cs, group_context, secrets.sender_data_secret, secrets.membership_key, tree)

    @property
    def group_id(self) -> bytes:
        return self.group_context.group_id

    @property
    def epoch(self) -> int:
        return self.group_context.epoch

    def _check_group_epoch(self, group_id: bytes, epoch: int) -> None:
        if group_id != self.group_context.group_id:
            raise MlsError("message is for another group")
        if epoch != self.group_context.epoch:
            raise WrongEpoch(
                f"message is for epoch {epoch}, this context is epoch {self.group_context.epoch}"
            )

    def _tree(self) -> SecretTree:
        if self.secret_tree is None or self.sender_data_secret is None:
            raise MlsError("no secret tree for this epoch: PrivateMessages cannot be handled")
        return self.secret_tree


def _binds_context(sender: Sender) -> bool:
    return sender.sender_type in (SenderType.MEMBER, SenderType.NEW_MEMBER_COMMIT)


def _check_sender_content(content: FramedContent) -> None:
    """§6.1 rules tying sender types to content types (proposal types are the group layer's)."""
    st, ct = content.sender.sender_type, content.content_type
    if st in (SenderType.EXTERNAL, SenderType.NEW_MEMBER_PROPOSAL) and ct != ContentType.PROPOSAL:
        raise MlsError(f"a {st.name.lower()} sender can only send proposals")
    if st == SenderType.NEW_MEMBER_COMMIT and ct != ContentType.COMMIT:
        raise MlsError("a new_member_commit sender can only send a commit")


# --- content authentication (§6.1) -------------------------------------------------------------------


def sign_content(
    cs: CipherSuite,
    signature_priv: bytes,
    wire_format: WireFormat,
    content: FramedContent,
    group_context: GroupContext | bytes | None,
) -> bytes:
    """``SignWithLabel(., "FramedContentTBS", FramedContentTBS)``."""
    tbs = framed_content_tbs(wire_format, content, group_context if _binds_context(content.sender) else None)
    return cs.sign_with_label(signature_priv, _LABEL_TBS, tbs)


def verify_content(
    cs: CipherSuite,
    auth: AuthenticatedContent,
    signature_pub: bytes,
    group_context: GroupContext | bytes | None,
) -> None:
    """Check the signature of ``auth``; raises :class:`~phx.errors.SignatureError`."""
    content = auth.content
    tbs = framed_content_tbs(
        auth.wire_format, content, group_context if _binds_context(content.sender) else None
    )
    cs.check_signature(signature_pub, _LABEL_TBS, tbs, auth.auth.signature)


def authenticate(
    ctx: FramingContext,
    content: FramedContent,
    signature_priv: bytes,
    *,
    wire_format: WireFormat = WireFormat.PRIVATE_MESSAGE,
    confirmation_tag: bytes | None = None,
) -> AuthenticatedContent:
    """Sign ``content`` for this epoch. Commits need ``confirmation_tag`` (which itself depends on the
    signature through the confirmed transcript hash: sign with :func:`sign_content` first in that case)."""
    ctx._check_group_epoch(content.group_id, content.epoch)
    is_commit = content.content_type == ContentType.COMMIT
    if is_commit != (confirmation_tag is not None):
        raise MlsError("a confirmation tag is required for commits and only for commits")
    sig = sign_content(ctx.cs, signature_priv, wire_format, content, ctx.group_context_bytes)
    return AuthenticatedContent(wire_format, content, FramedContentAuthData(sig, confirmation_tag))


# --- PublicMessage (§6.2) ----------------------------------------------------------------------------


def protect_public(ctx: FramingContext, auth: AuthenticatedContent) -> PublicMessage:
    """Wrap signed content in a PublicMessage, adding the membership tag for member senders."""
    content = auth.content
    if auth.wire_format != WireFormat.PUBLIC_MESSAGE:
        raise MlsError("content was signed for another wire format than PublicMessage")
    if content.content_type == ContentType.APPLICATION:
        raise MlsError("application data must not be sent as a PublicMessage")
    ctx._check_group_epoch(content.group_id, content.epoch)
    _check_sender_content(content)
    tag = None
    if content.sender.sender_type == SenderType.MEMBER:
        if ctx.membership_key is None:
            raise MlsError("no membership key: cannot tag a member's PublicMessage")
        tbs = framed_content_tbs(auth.wire_format, content, ctx.group_context_bytes)
        tag = ctx.cs.mac(ctx.membership_key, authenticated_content_tbm(tbs, auth.auth))
    return PublicMessage(content, auth.auth, tag)


def unprotect_public(
    ctx: FramingContext, msg: PublicMessage, signature_key: SignatureKeyLookup
) -> AuthenticatedContent:
    """Verify a PublicMessage (epoch, membership tag, signature) and return its AuthenticatedContent.

    The confirmation tag of a commit is *not* checked here: it needs the next epoch's key schedule.
    """
    content = msg.content
    ctx._check_group_epoch(content.group_id, content.epoch)
    if content.content_type == ContentType.APPLICATION:
        raise MlsError("application data must not be sent as a PublicMessage")
    _check_sender_content(content)
    binds = _binds_context(content.sender)
    tbs = framed_content_tbs(WireFormat.PUBLIC_MESSAGE, content, ctx.group_context_bytes if binds else None)
    if content.sender.sender_type == SenderType.MEMBER:
        if ctx.membership_key is None:
            raise MlsError("no membership key: cannot check a member's PublicMessage")
        assert msg.membership_tag is not None  # PublicMessage enforces presence for members
        verify_membership_tag(
            ctx.cs, ctx.membership_key, authenticated_content_tbm(tbs, msg.auth), msg.membership_tag
        )
    ctx.cs.check_signature(signature_key(content), _LABEL_TBS, tbs, msg.auth.signature)
    return AuthenticatedContent(WireFormat.PUBLIC_MESSAGE, content, msg.auth)


# --- PrivateMessage (§6.3) ---------------------------------------------------------------------------


def _sender_data_aad(group_id: bytes, epoch: int, content_type: int) -> bytes:
    return encode_varint(len(group_id)) + group_id + _U64.pack(epoch) + bytes((content_type,))


def _content_aad(group_id: bytes, epoch: int, content_type: int, authenticated_data: bytes) -> bytes:
    return (
        _sender_data_aad(group_id, epoch, content_type)
        + encode_varint(len(authenticated_data))
        + authenticated_data
    )


def _xor_guard(nonce: bytes, guard: bytes) -> bytes:
    head = (int.from_bytes(nonce[:4], "big") ^ int.from_bytes(guard, "big")).to_bytes(4, "big")
    return head + nonce[4:]


def protect_private(
    ctx: FramingContext, auth: AuthenticatedContent, *, padding: int = 0, reuse_guard: bytes | None = None
) -> PrivateMessage:
    """Encrypt signed content from a member with the next key of its ratchet."""
    content = auth.content
    if auth.wire_format != WireFormat.PRIVATE_MESSAGE:
        raise MlsError("content was signed for another wire format than PrivateMessage")
    leaf = content.sender.leaf_index
    if leaf is None:
        raise MlsError("only members can send PrivateMessages")
    ctx._check_group_epoch(content.group_id, content.epoch)
    tree = ctx._tree()
    assert ctx.sender_data_secret is not None
    guard = os.urandom(4) if reuse_guard is None else reuse_guard
    if len(guard) != 4:
        raise ValueError("reuse_guard must be 4 bytes")
    ct_type = content.content_type
    plaintext = PrivateMessageContent(content.body, auth.auth, padding).encode()
    generation, key, nonce = tree.next_key(leaf, ct_type != ContentType.APPLICATION)
    cs = ctx.cs
    aad = _content_aad(content.group_id, content.epoch, ct_type, content.authenticated_data)
    ciphertext = cs.seal(key, _xor_guard(nonce, guard), aad, plaintext)
    sd_key, sd_nonce = sender_data_key_nonce(cs, ctx.sender_data_secret, ciphertext)
    sender_data = _SENDER_DATA.pack(leaf, generation, guard)
    encrypted_sender_data = cs.seal(
        sd_key, sd_nonce, _sender_data_aad(content.group_id, content.epoch, ct_type), sender_data
    )
    return PrivateMessage(
        content.group_id,
        content.epoch,
        ct_type,
        content.authenticated_data,
        encrypted_sender_data,
        ciphertext,
    )


def decrypt_private(
    ctx: FramingContext, msg: PrivateMessage, *, leaf_in_use: Callable[[int], bool] | None = None
) -> AuthenticatedContent:
    """Decrypt a PrivateMessage *without* checking its signature (see :func:`unprotect_private`).

    ``leaf_in_use`` reports whether a leaf index is a non-blank leaf of the ratchet tree (§6.3.2); leaves
    outside the tree are always rejected.
    """
    ctx._check_group_epoch(msg.group_id, msg.epoch)
    tree = ctx._tree()
    assert ctx.sender_data_secret is not None
    cs = ctx.cs
    sd_key, sd_nonce = sender_data_key_nonce(cs, ctx.sender_data_secret, msg.ciphertext)
    try:
        raw_sender_data = cs.open(
            sd_key,
            sd_nonce,
            _sender_data_aad(msg.group_id, msg.epoch, msg.content_type),
            msg.encrypted_sender_data,
        )
    except HpkeError:
        raise MessageDecryptionError("sender data does not decrypt") from None
    sender_data = SenderData.decode(raw_sender_data)
    leaf, generation = sender_data.leaf_index, sender_data.generation
    if leaf_in_use is not None and leaf < tree.n_leaves and not leaf_in_use(leaf):
        raise InvalidSenderLeaf(f"sender leaf {leaf} is blank")
    handshake = msg.content_type != ContentType.APPLICATION
    key, nonce = tree.key_for(leaf, handshake, generation)
    aad = _content_aad(msg.group_id, msg.epoch, msg.content_type, msg.authenticated_data)
    try:
        plaintext = cs.open(key, _xor_guard(nonce, sender_data.reuse_guard), aad, msg.ciphertext)
    except HpkeError:
        raise MessageDecryptionError(
            f"content from leaf {leaf} generation {generation} does not decrypt"
        ) from None
    tree.consume(leaf, handshake, generation)
    try:
        pmc = PrivateMessageContent.decode_for(plaintext, msg.content_type)
    except DecodeError as e:
        raise MlsError(f"malformed PrivateMessageContent: {e}") from e
    content = FramedContent(msg.group_id, msg.epoch, Sender.member(leaf), msg.authenticated_data, pmc.body)
    return AuthenticatedContent(WireFormat.PRIVATE_MESSAGE, content, pmc.auth)


def unprotect_private(
    ctx: FramingContext,
    msg: PrivateMessage,
    signature_key: SignatureKeyLookup,
    *,
    leaf_in_use: Callable[[int], bool] | None = None,
) -> AuthenticatedContent:
    """Decrypt a PrivateMessage and verify its signature; the confirmation tag is left to the caller."""
    auth = decrypt_private(ctx, msg, leaf_in_use=leaf_in_use)
    verify_content(ctx.cs, auth, signature_key(auth.content), ctx.group_context_bytes)
    return auth


def protect_application(
    ctx: FramingContext,
    leaf_index: int,
    signature_priv: bytes,
    data: bytes,
    *,
    authenticated_data: bytes = b"",
    padding: int = 0,
) -> PrivateMessage:
    """Sign and encrypt application data from our own leaf (the hot path)."""
    gc = ctx.group_context
    content = FramedContent(gc.group_id, gc.epoch, Sender.member(leaf_index), authenticated_data, data)
    sig = sign_content(ctx.cs, signature_priv, WireFormat.PRIVATE_MESSAGE, content, ctx.group_context_bytes)
    auth = AuthenticatedContent(WireFormat.PRIVATE_MESSAGE, content, FramedContentAuthData(sig))
    return protect_private(ctx, auth, padding=padding)
