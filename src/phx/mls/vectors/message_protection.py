"""message-protection.json: PublicMessage/PrivateMessage unprotect of the given messages, and
protect-then-unprotect round trips, for a proposal, a commit and application data (RFC 9420 §6)."""

from __future__ import annotations

from typing import Any

from phx.crypto import CipherSuite, suite
from phx.errors import MlsError
from phx.mls.framing import (
    FramingContext,
    authenticate,
    protect_private,
    protect_public,
    unprotect_private,
    unprotect_public,
)
from phx.mls.messages import (
    Commit,
    FramedBody,
    FramedContent,
    GroupContext,
    MLSMessage,
    PrivateMessage,
    Proposal,
    ProtocolVersion,
    PublicMessage,
    Sender,
    WireFormat,
)
from phx.mls.secret_tree import SecretTree

SENDER = 1  # the vectors always use leaf 1 as the sender of a two-member group


def _h(s: str) -> bytes:
    return bytes.fromhex(s)


def _public(raw: bytes) -> PublicMessage:
    m = MLSMessage.decode(raw)
    assert m.encode() == raw, "MLSMessage re-encoding"
    assert m.public_message is not None, "expected a PublicMessage"
    return m.public_message


def _private(raw: bytes) -> PrivateMessage:
    m = MLSMessage.decode(raw)
    assert m.encode() == raw, "MLSMessage re-encoding"
    assert m.private_message is not None, "expected a PrivateMessage"
    return m.private_message


def _check_round_trips(
    entry: dict[str, Any], cs: CipherSuite, gc: GroupContext, name: str, body: FramedBody
) -> None:
    sig_priv, sig_pub = _h(entry["signature_priv"]), _h(entry["signature_pub"])
    enc, sd, mk = _h(entry["encryption_secret"]), _h(entry["sender_data_secret"]), _h(entry["membership_key"])

    def ctx() -> FramingContext:
        return FramingContext(cs, gc, sd, mk, SecretTree(cs, enc, 2))

    def lookup(content: FramedContent) -> bytes:
        assert content.sender == Sender.member(SENDER), f"{name}: unexpected sender {content.sender}"
        return sig_pub

    tag = cs.mac(mk, b"any confirmation tag") if isinstance(body, Commit) else None
    content = FramedContent(gc.group_id, gc.epoch, Sender.member(SENDER), b"", body)

    # The given PublicMessage verifies and yields the raw value.
    if name != "application":
        auth = unprotect_public(ctx(), _public(_h(entry[f"{name}_pub"])), lookup)
        assert auth.content.body == body, f"{name}_pub: content"
        # Protecting as a PublicMessage produces one that verifies.
        mine = authenticate(
            ctx(), content, sig_priv, wire_format=WireFormat.PUBLIC_MESSAGE, confirmation_tag=tag
        )
        raw = MLSMessage(protect_public(ctx(), mine)).encode()
        back = unprotect_public(ctx(), _public(raw), lookup)
        assert back == mine, f"{name}: PublicMessage round trip"
    else:
        # Application data cannot be protected as a PublicMessage.
        try:
            mine = authenticate(ctx(), content, sig_priv, wire_format=WireFormat.PUBLIC_MESSAGE)
            protect_public(ctx(), mine)
        except MlsError:
            pass
        else:
            raise AssertionError("application data was protected as a PublicMessage")

    # The given PrivateMessage decrypts with a fresh secret tree and yields the raw value.
    auth = unprotect_private(ctx(), _private(_h(entry[f"{name}_priv"])), lookup)
    assert auth.content.body == body, f"{name}_priv: content"
    # Protecting as a PrivateMessage produces one that a fresh tree unprotects.
    mine = authenticate(ctx(), content, sig_priv, confirmation_tag=tag)
    raw = MLSMessage(protect_private(ctx(), mine, padding=7)).encode()
    back = unprotect_private(ctx(), _private(raw), lookup)
    assert back == mine, f"{name}: PrivateMessage round trip"


def run(entry: dict[str, Any]) -> None:
    cs = suite(entry["cipher_suite"])
    gc = GroupContext(
        ProtocolVersion.MLS10,
        entry["cipher_suite"],
        _h(entry["group_id"]),
        entry["epoch"],
        _h(entry["tree_hash"]),
        _h(entry["confirmed_transcript_hash"]),
        (),
    )
    proposal = Proposal.decode(_h(entry["proposal"]))
    assert proposal.encode() == _h(entry["proposal"]), "proposal re-encoding"
    commit = Commit.decode(_h(entry["commit"]))
    assert commit.encode() == _h(entry["commit"]), "commit re-encoding"
    _check_round_trips(entry, cs, gc, "proposal", proposal)
    _check_round_trips(entry, cs, gc, "commit", commit)
    _check_round_trips(entry, cs, gc, "application", _h(entry["application"]))
