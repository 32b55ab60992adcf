"""Message protection (RFC 9420 §6): PublicMessage/PrivateMessage protect and unprotect, and the checks
that must reject altered, replayed, misaddressed or mis-signed messages."""

from __future__ import annotations

import pytest

from phx.crypto import SUITE_1
from phx.errors import DecodeError, MlsError, SignatureError, WrongEpoch
from phx.mls.framing import (
    FramingContext,
    MessageDecryptionError,
    authenticate,
    decrypt_private,
    protect_application,
    protect_private,
    protect_public,
    sign_content,
    unprotect_private,
    unprotect_public,
)
from phx.mls.key_schedule import MembershipTagMismatch, derive_epoch_secrets
from phx.mls.messages import (
    AuthenticatedContent,
    Commit,
    FramedContent,
    FramedContentAuthData,
    GroupContext,
    MLSMessage,
    PrivateMessage,
    PrivateMessageContent,
    Proposal,
    ProtocolVersion,
    PublicMessage,
    Remove,
    Sender,
    WireFormat,
)
from phx.mls.secret_tree import GenerationReused, InvalidSenderLeaf, SecretTree, sender_data_key_nonce

CS = SUITE_1
GC = GroupContext(ProtocolVersion.MLS10, 1, b"group-1", 5, b"\x01" * 32, b"\x02" * 32, ())
SECRETS = derive_epoch_secrets(CS, b"\x03" * 32, b"\x04" * 32, GC.encode())
ALICE_PRIV, ALICE_PUB = CS.generate_signature_key_pair()
BOB_PRIV, BOB_PUB = CS.generate_signature_key_pair()
KEYS = {0: ALICE_PUB, 1: BOB_PUB}
PROPOSAL = Proposal(Remove(1))
COMMIT = Commit((), None)


def ctx(gc: GroupContext = GC) -> FramingContext:
    return FramingContext.for_epoch(CS, gc, SECRETS, 2)


def lookup(content: FramedContent) -> bytes:
    leaf = content.sender.leaf_index
    if leaf is None or leaf not in KEYS:
        raise MlsError("unknown sender")
    return KEYS[leaf]


def content(body: bytes | Proposal | Commit, leaf: int = 0, aad: bytes = b"") -> FramedContent:
    return FramedContent(GC.group_id, GC.epoch, Sender.member(leaf), aad, body)


def wire(msg: PublicMessage | PrivateMessage) -> bytes:
    return MLSMessage(msg).encode()


# --- PrivateMessage ----------------------------------------------------------------------------------


@pytest.mark.parametrize("body", [b"hello", PROPOSAL, COMMIT], ids=["application", "proposal", "commit"])
def test_private_round_trip(body: bytes | Proposal | Commit) -> None:
    tag = b"\x09" * 32 if isinstance(body, Commit) else None
    auth = authenticate(ctx(), content(body, aad=b"meta"), ALICE_PRIV, confirmation_tag=tag)
    msg = protect_private(ctx(), auth, padding=13)
    decoded = MLSMessage.decode(wire(msg)).private_message
    assert decoded is not None and decoded.authenticated_data == b"meta"
    assert unprotect_private(ctx(), decoded, lookup) == auth


def test_application_hot_path_sequence() -> None:
    sender, receiver = ctx(), ctx()
    msgs = [protect_application(sender, 1, BOB_PRIV, f"m{i}".encode()) for i in range(3)]
    for i in (2, 0, 1):  # out of order
        auth = unprotect_private(receiver, msgs[i], lookup)
        assert auth.content.body == f"m{i}".encode()
        assert auth.content.sender == Sender.member(1)


def test_replay_rejected() -> None:
    receiver = ctx()
    msg = protect_application(ctx(), 0, ALICE_PRIV, b"once")
    unprotect_private(receiver, msg, lookup)
    with pytest.raises(GenerationReused):
        unprotect_private(receiver, msg, lookup)


def test_forgery_does_not_burn_the_key() -> None:
    receiver = ctx()
    msg = protect_application(ctx(), 0, ALICE_PRIV, b"genuine")
    ct = bytearray(msg.ciphertext)
    ct[-1] ^= 1
    # Keep the sender-data sample intact so the sender data still opens.
    forged = PrivateMessage(
        msg.group_id,
        msg.epoch,
        msg.content_type,
        msg.authenticated_data,
        msg.encrypted_sender_data,
        bytes(ct),
    )
    with pytest.raises(MessageDecryptionError):
        unprotect_private(receiver, forged, lookup)
    assert unprotect_private(receiver, msg, lookup).content.body == b"genuine"


def test_altered_aad_and_sender_data_rejected() -> None:
    msg = protect_application(ctx(), 0, ALICE_PRIV, b"x", authenticated_data=b"a")
    fields = (msg.group_id, msg.epoch, msg.content_type)
    with pytest.raises(MessageDecryptionError):
        unprotect_private(
            ctx(), PrivateMessage(*fields, b"b", msg.encrypted_sender_data, msg.ciphertext), lookup
        )
    esd = bytearray(msg.encrypted_sender_data)
    esd[0] ^= 1
    with pytest.raises(MessageDecryptionError):
        unprotect_private(ctx(), PrivateMessage(*fields, b"a", bytes(esd), msg.ciphertext), lookup)


def test_content_type_is_bound() -> None:
    # An application message relabelled as a proposal must not open (AAD and ratchet differ).
    msg = protect_application(ctx(), 0, ALICE_PRIV, b"x")
    relabelled = PrivateMessage(
        msg.group_id,
        msg.epoch,
        PROPOSAL_CT,
        msg.authenticated_data,
        msg.encrypted_sender_data,
        msg.ciphertext,
    )
    with pytest.raises(MessageDecryptionError):
        unprotect_private(ctx(), relabelled, lookup)


PROPOSAL_CT = content(PROPOSAL).content_type


def test_wrong_epoch_and_group() -> None:
    msg = protect_application(ctx(), 0, ALICE_PRIV, b"x")
    other_epoch = GroupContext(
        ProtocolVersion.MLS10, 1, GC.group_id, 6, GC.tree_hash, GC.confirmed_transcript_hash, ()
    )
    with pytest.raises(WrongEpoch):
        unprotect_private(ctx(other_epoch), msg, lookup)
    other_group = GroupContext(
        ProtocolVersion.MLS10, 1, b"g2", 5, GC.tree_hash, GC.confirmed_transcript_hash, ()
    )
    with pytest.raises(MlsError, match="another group"):
        unprotect_private(ctx(other_group), msg, lookup)
    with pytest.raises(WrongEpoch):
        authenticate(ctx(other_epoch), content(b"x"), ALICE_PRIV)


def test_signature_checked_against_sender_key() -> None:
    # Alice's leaf but Bob's signing key.
    msg = protect_private(ctx(), authenticate(ctx(), content(b"x", leaf=0), BOB_PRIV))
    with pytest.raises(SignatureError):
        unprotect_private(ctx(), msg, lookup)
    # decrypt_private alone does not verify.
    assert decrypt_private(ctx(), msg).content.body == b"x"


def test_signature_binds_group_context() -> None:
    other = GroupContext(
        ProtocolVersion.MLS10, 1, GC.group_id, 5, b"\x07" * 32, GC.confirmed_transcript_hash, ()
    )
    c = content(b"x")
    sig = sign_content(CS, ALICE_PRIV, WireFormat.PRIVATE_MESSAGE, c, other)
    msg = protect_private(
        ctx(), AuthenticatedContent(WireFormat.PRIVATE_MESSAGE, c, FramedContentAuthData(sig))
    )
    with pytest.raises(SignatureError):
        unprotect_private(ctx(), msg, lookup)


def test_blank_leaf_rejected_before_decryption() -> None:
    msg = protect_application(ctx(), 1, BOB_PRIV, b"x")
    with pytest.raises(InvalidSenderLeaf):
        unprotect_private(ctx(), msg, lookup, leaf_in_use=lambda leaf: leaf == 0)


def test_nonzero_padding_rejected() -> None:
    c = ctx()
    auth = authenticate(c, content(b"x"), ALICE_PRIV)
    plaintext = PrivateMessageContent(b"x", auth.auth).encode() + b"\x00\x01"
    tree = SecretTree(CS, SECRETS.encryption_secret, 2)
    gen, key, nonce = tree.next_key(0, False)
    aad = b"\x07group-1" + (5).to_bytes(8, "big") + b"\x01" + b"\x00"
    ciphertext = CS.seal(key, nonce, aad, plaintext)
    sd_key, sd_nonce = sender_data_key_nonce(CS, SECRETS.sender_data_secret, ciphertext)
    sd = (0).to_bytes(4, "big") + gen.to_bytes(4, "big") + bytes(4)
    esd = CS.seal(sd_key, sd_nonce, b"\x07group-1" + (5).to_bytes(8, "big") + b"\x01", sd)
    msg = PrivateMessage(GC.group_id, 5, auth.content.content_type, b"", esd, ciphertext)
    with pytest.raises(MlsError, match="padding"):
        unprotect_private(ctx(), msg, lookup)
    # The same construction with zero padding is accepted (the test's framing is right).
    ciphertext = CS.seal(key, nonce, aad, plaintext[:-1])
    sd_key, sd_nonce = sender_data_key_nonce(CS, SECRETS.sender_data_secret, ciphertext)
    esd = CS.seal(sd_key, sd_nonce, b"\x07group-1" + (5).to_bytes(8, "big") + b"\x01", sd)
    msg = PrivateMessage(GC.group_id, 5, auth.content.content_type, b"", esd, ciphertext)
    assert unprotect_private(ctx(), msg, lookup).content.body == b"x"


def test_reuse_guard_changes_nonce() -> None:
    auth = authenticate(ctx(), content(b"x"), ALICE_PRIV)
    a = protect_private(ctx(), auth, reuse_guard=b"\x00\x00\x00\x00")
    b = protect_private(ctx(), auth, reuse_guard=b"\x00\x00\x00\x01")
    assert a.ciphertext != b.ciphertext  # same key, generation and plaintext: only the guard differs
    assert unprotect_private(ctx(), b, lookup) == auth
    with pytest.raises(ValueError):
        protect_private(ctx(), auth, reuse_guard=b"\x00")


def test_private_requires_member_and_wire_format() -> None:
    auth = authenticate(ctx(), content(b"x"), ALICE_PRIV, wire_format=WireFormat.PUBLIC_MESSAGE)
    with pytest.raises(MlsError, match="wire format"):
        protect_private(ctx(), auth)
    ext = FramedContent(GC.group_id, GC.epoch, Sender.external(0), b"", PROPOSAL)
    auth = authenticate(ctx(), ext, ALICE_PRIV)
    with pytest.raises(MlsError, match="members"):
        protect_private(ctx(), auth)


def test_handshake_and_application_ratchets_are_separate() -> None:
    sender = ctx()
    protect_application(sender, 0, ALICE_PRIV, b"a")
    protect_application(sender, 0, ALICE_PRIV, b"b")
    assert sender.secret_tree is not None
    assert sender.secret_tree.application_ratchet(0).next_generation == 2
    assert sender.secret_tree.handshake_ratchet(0).next_generation == 0
    protect_private(sender, authenticate(sender, content(PROPOSAL), ALICE_PRIV))
    assert sender.secret_tree.handshake_ratchet(0).next_generation == 1


def test_no_secret_tree() -> None:
    public_only = FramingContext(CS, GC, membership_key=SECRETS.membership_key)
    with pytest.raises(MlsError, match="secret tree"):
        protect_application(public_only, 0, ALICE_PRIV, b"x")


# --- PublicMessage -----------------------------------------------------------------------------------


def test_public_round_trip_member() -> None:
    auth = authenticate(ctx(), content(PROPOSAL), ALICE_PRIV, wire_format=WireFormat.PUBLIC_MESSAGE)
    msg = protect_public(ctx(), auth)
    assert msg.membership_tag is not None
    decoded = MLSMessage.decode(wire(msg)).public_message
    assert decoded is not None
    assert unprotect_public(ctx(), decoded, lookup) == auth


def test_public_membership_tag_checked() -> None:
    auth = authenticate(ctx(), content(PROPOSAL), ALICE_PRIV, wire_format=WireFormat.PUBLIC_MESSAGE)
    msg = protect_public(ctx(), auth)
    assert msg.membership_tag is not None
    bad = PublicMessage(msg.content, msg.auth, bytes(len(msg.membership_tag)))
    with pytest.raises(MembershipTagMismatch):
        unprotect_public(ctx(), bad, lookup)
    with pytest.raises(MlsError, match="membership key"):
        unprotect_public(FramingContext(CS, GC), msg, lookup)


def test_public_signature_checked() -> None:
    auth = authenticate(ctx(), content(PROPOSAL, leaf=1), ALICE_PRIV, wire_format=WireFormat.PUBLIC_MESSAGE)
    with pytest.raises(SignatureError):
        unprotect_public(ctx(), protect_public(ctx(), auth), lookup)


def test_public_rejects_application_data() -> None:
    auth = authenticate(ctx(), content(b"x"), ALICE_PRIV, wire_format=WireFormat.PUBLIC_MESSAGE)
    with pytest.raises(MlsError, match="application"):
        protect_public(ctx(), auth)
    msg = PublicMessage(auth.content, auth.auth, b"\x00" * 32)
    with pytest.raises(MlsError, match="application"):
        unprotect_public(ctx(), msg, lookup)


def test_public_wrong_wire_format() -> None:
    auth = authenticate(ctx(), content(PROPOSAL), ALICE_PRIV)
    with pytest.raises(MlsError, match="wire format"):
        protect_public(ctx(), auth)


def test_public_external_sender() -> None:
    ext_priv, ext_pub = CS.generate_signature_key_pair()
    c = FramedContent(GC.group_id, GC.epoch, Sender.external(0), b"", PROPOSAL)
    auth = authenticate(ctx(), c, ext_priv, wire_format=WireFormat.PUBLIC_MESSAGE)
    msg = protect_public(FramingContext(CS, GC), auth)  # no membership key needed
    assert msg.membership_tag is None
    # The signature of an external sender does not cover the group context.
    other = GroupContext(
        ProtocolVersion.MLS10, 1, GC.group_id, 5, b"\x07" * 32, GC.confirmed_transcript_hash, ()
    )
    got = unprotect_public(FramingContext(CS, other), msg, lambda _: ext_pub)
    assert got == auth
    with pytest.raises(SignatureError):
        unprotect_public(ctx(), msg, lambda _: ALICE_PUB)


def test_public_sender_content_rules() -> None:
    priv, _ = CS.generate_signature_key_pair()
    ext_commit = FramedContent(GC.group_id, GC.epoch, Sender.external(0), b"", COMMIT)
    auth = authenticate(ctx(), ext_commit, priv, wire_format=WireFormat.PUBLIC_MESSAGE, confirmation_tag=b"t")
    with pytest.raises(MlsError, match="only send proposals"):
        protect_public(ctx(), auth)
    nmc = FramedContent(GC.group_id, GC.epoch, Sender.new_member_commit(), b"", PROPOSAL)
    auth = authenticate(ctx(), nmc, priv, wire_format=WireFormat.PUBLIC_MESSAGE)
    with pytest.raises(MlsError, match="only send a commit"):
        unprotect_public(ctx(), PublicMessage(nmc, auth.auth), lambda _: b"")


def test_new_member_commit_binds_group_context() -> None:
    priv, pub = CS.generate_signature_key_pair()
    c = FramedContent(GC.group_id, GC.epoch, Sender.new_member_commit(), b"", COMMIT)
    auth = authenticate(ctx(), c, priv, wire_format=WireFormat.PUBLIC_MESSAGE, confirmation_tag=b"t" * 32)
    msg = protect_public(ctx(), auth)
    assert unprotect_public(ctx(), msg, lambda _: pub) == auth
    other = GroupContext(
        ProtocolVersion.MLS10, 1, GC.group_id, 5, b"\x07" * 32, GC.confirmed_transcript_hash, ()
    )
    with pytest.raises(SignatureError):
        unprotect_public(FramingContext(CS, other), msg, lambda _: pub)


def test_confirmation_tag_exactly_for_commits() -> None:
    with pytest.raises(MlsError, match="confirmation tag"):
        authenticate(ctx(), content(COMMIT), ALICE_PRIV)
    with pytest.raises(MlsError, match="confirmation tag"):
        authenticate(ctx(), content(PROPOSAL), ALICE_PRIV, confirmation_tag=b"t")


def test_garbage_bytes_are_decode_errors() -> None:
    with pytest.raises(DecodeError):
        MLSMessage.decode(b"\x00\x01\x00\x02garbage")
