"""Decoding arbitrary bytes either succeeds (and then re-encodes to the same bytes) or raises DecodeError."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phx.codec import Struct
from phx.errors import DecodeError
from phx.mls.messages import (
    Add,
    AuthenticatedContent,
    Capabilities,
    Commit,
    ConfirmedTranscriptHashInput,
    ContentType,
    Credential,
    ExternalInit,
    ExternalSender,
    FramedContent,
    FramedContentAuthData,
    GroupContext,
    GroupContextExtensions,
    GroupInfo,
    GroupSecrets,
    KeyPackage,
    LeafNode,
    MLSMessage,
    Node,
    ParentNode,
    PreSharedKey,
    PreSharedKeyID,
    PrivateContentAAD,
    PrivateMessage,
    PrivateMessageContent,
    Proposal,
    ProposalOrRef,
    PSKLabel,
    PublicMessage,
    ReInit,
    Remove,
    RequiredCapabilities,
    Sender,
    SenderData,
    SenderDataAAD,
    Update,
    UpdatePath,
    Welcome,
    decode_ratchet_tree,
    encode_ratchet_tree,
    make_external_senders_extension,
)
from phx.mls.messages.common import Extension
from phx.mls.messages.extensions import parse_external_senders
from tests.conftest import MLS_VECTORS
from tests.mls.messages import samples

STRUCTS: list[type[Struct]] = [
    Add, AuthenticatedContent, Capabilities, Commit, ConfirmedTranscriptHashInput, Credential, ExternalInit,
    ExternalSender, FramedContent, GroupContext, GroupContextExtensions, GroupInfo, GroupSecrets, KeyPackage,
    LeafNode, MLSMessage, Node, ParentNode, PreSharedKey, PreSharedKeyID, PrivateContentAAD, PrivateMessage,
    Proposal, ProposalOrRef, PSKLabel, PublicMessage, ReInit, Remove, RequiredCapabilities, Sender,
    SenderData, SenderDataAAD, Update, UpdatePath, Welcome,
]  # fmt: skip


def _encode(v: Any) -> bytes:
    return v.encode()  # type: ignore[no-any-return]


def _pmc_decoder(ct: ContentType) -> Callable[[bytes], Any]:
    return lambda b: PrivateMessageContent.decode_for(b, ct)


def _auth_decoder(ct: ContentType) -> Callable[[bytes], Any]:
    return lambda b: FramedContentAuthData.decode_for(b, ct)


def _decoders() -> list[tuple[str, Callable[[bytes], Any], Callable[[Any], bytes]]]:
    out: list[tuple[str, Callable[[bytes], Any], Callable[[Any], bytes]]] = [
        (cls.__name__, cls.decode, _encode) for cls in STRUCTS
    ]
    out.append(("ratchet_tree", decode_ratchet_tree, encode_ratchet_tree))
    out.append(
        ("external_senders", lambda b: parse_external_senders(Extension(5, b)), lambda v: _enc_senders(v))
    )
    for ct in ContentType:
        out.append((f"pmc_{ct.name}", _pmc_decoder(ct), _encode))
        out.append((f"auth_{ct.name}", _auth_decoder(ct), _encode))
    return out


def _enc_senders(senders: tuple[ExternalSender, ...]) -> bytes:
    return make_external_senders_extension(senders).extension_data


DECODERS = _decoders()


def _seeds() -> list[bytes]:
    seeds = [
        samples.key_package().encode(),
        MLSMessage(samples.key_package()).encode(),
        samples.commit().encode(),
        MLSMessage(
            PublicMessage(
                samples.framed(samples.commit()), samples.auth_for(samples.framed(samples.commit())), b"t"
            )
        ).encode(),
        encode_ratchet_tree((Node(samples.leaf()), Node(ParentNode(b"k", b"h", (1,))), None)),
    ]
    path = MLS_VECTORS / "messages.json"
    if path.is_file():
        for entry in json.loads(path.read_text())[:5]:
            seeds += [bytes.fromhex(v) for v in entry.values()]
    return seeds


SEEDS = _seeds()


def _check_all(data: bytes) -> None:
    for name, decode, encode in DECODERS:
        try:
            value = decode(data)
        except DecodeError:
            continue
        # Every decoder is canonical: what decodes re-encodes to the very same bytes.
        assert encode(value) == data, name
    # The hot structs have a fast path for ``bytes`` and the generic Reader path for other buffers: both
    # must accept and reject exactly the same inputs.
    for cls in (LeafNode, ParentNode, Node, KeyPackage, UpdatePath, Commit, MLSMessage):
        try:
            fast: Any = cls.decode(data)
        except DecodeError:
            fast = DecodeError
        try:
            slow: Any = cls.decode(memoryview(data))
        except DecodeError:
            slow = DecodeError
        assert fast == slow, cls.__name__


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
def test_random_bytes(data: bytes) -> None:
    _check_all(data)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "delete"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "truncate":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=4))
        elif data:
            del data[pos]
    return bytes(data)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_valid_messages(data: bytes) -> None:
    _check_all(data)


def test_seeds_decode() -> None:
    # The seeds themselves must decode somewhere, or the mutation test would exercise only error paths.
    assert MLSMessage.decode(SEEDS[1]).key_package == samples.key_package()


def test_sender_data_decodes_any_twelve_bytes() -> None:
    assert Sender.decode(b"\x04") == Sender.new_member_commit()
    assert SenderData.decode(bytes(range(12))).reuse_guard == bytes(range(8, 12))
