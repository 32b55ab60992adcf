"""Transcript hashes (RFC 9420 §8.2)."""

from __future__ import annotations

import pytest

from phx.codec import encode_varint
from phx.crypto import SUITE_1
from phx.errors import MlsError
from phx.mls.messages import (
    AuthenticatedContent,
    Commit,
    ConfirmedTranscriptHashInput,
    FramedContent,
    FramedContentAuthData,
    InterimTranscriptHashInput,
    Sender,
    WireFormat,
)
from phx.mls.transcript import (
    confirmed_transcript_hash,
    confirmed_transcript_hash_input,
    interim_transcript_hash,
    update_transcript_hashes,
)

CS = SUITE_1
CONTENT = FramedContent(b"g", 3, Sender.member(2), b"", Commit((), None))


def test_input_matches_struct_encoding() -> None:
    expected = ConfirmedTranscriptHashInput(WireFormat.PUBLIC_MESSAGE, CONTENT, b"sig").encode()
    assert confirmed_transcript_hash_input(WireFormat.PUBLIC_MESSAGE, CONTENT, b"sig") == expected


def test_only_commits() -> None:
    app = FramedContent(b"g", 3, Sender.member(2), b"", b"data")
    with pytest.raises(MlsError):
        confirmed_transcript_hash_input(WireFormat.PRIVATE_MESSAGE, app, b"sig")


def test_chain() -> None:
    tag = b"\x05" * 32
    auth = AuthenticatedContent(WireFormat.PRIVATE_MESSAGE, CONTENT, FramedContentAuthData(b"sig", tag))
    interim_before = b"\x01" * 32
    confirmed, interim = update_transcript_hashes(CS, interim_before, auth)
    cth_input = ConfirmedTranscriptHashInput(WireFormat.PRIVATE_MESSAGE, CONTENT, b"sig").encode()
    assert confirmed == CS.hash(interim_before + cth_input)
    assert interim == CS.hash(confirmed + InterimTranscriptHashInput(tag).encode())
    assert interim == interim_transcript_hash(CS, confirmed, tag)
    assert interim == CS.hash(confirmed + encode_varint(32) + tag)
    # Epoch 0 starts from the empty interim hash; every input matters.
    assert confirmed_transcript_hash(CS, b"", WireFormat.PRIVATE_MESSAGE, CONTENT, b"sig") != confirmed
    assert (
        confirmed_transcript_hash(CS, interim_before, WireFormat.PUBLIC_MESSAGE, CONTENT, b"sig") != confirmed
    )
    assert (
        confirmed_transcript_hash(CS, interim_before, WireFormat.PRIVATE_MESSAGE, CONTENT, b"sih")
        != confirmed
    )
