"""Confirmed and interim transcript hashes (RFC 9420 §8.2).

::

    confirmed_[n] = Hash(interim_[n-1] || ConfirmedTranscriptHashInput_[n])
    interim_[n]   = Hash(confirmed_[n] || InterimTranscriptHashInput_[n])

Both start as the empty string at epoch 0. A committer needs ``confirmed_[n]`` *before* it has a
confirmation tag (the tag is a MAC over it with the new epoch's key), so the two steps are separate.
"""

from __future__ import annotations

from phx.codec import Writer, encode_varint
from phx.crypto import CipherSuite
from phx.errors import MlsError
from phx.mls.messages import AuthenticatedContent, ContentType, FramedContent, WireFormat

__all__ = [
    "confirmed_transcript_hash",
    "confirmed_transcript_hash_input",
    "interim_transcript_hash",
    "update_transcript_hashes",
]


def confirmed_transcript_hash_input(
    wire_format: WireFormat, content: FramedContent, signature: bytes
) -> bytes:
    """Encoded ``ConfirmedTranscriptHashInput`` for a commit's content and signature."""
    if content.content_type != ContentType.COMMIT:
        raise MlsError("only commits enter the transcript hash")
    w = Writer()
    w.u16(wire_format)
    content._write(w)
    w.opaque(signature)
    return w.getvalue()


def confirmed_transcript_hash(
    cs: CipherSuite,
    interim_transcript_hash_before: bytes,
    wire_format: WireFormat,
    content: FramedContent,
    signature: bytes,
) -> bytes:
    data = confirmed_transcript_hash_input(wire_format, content, signature)
    return cs.hash(interim_transcript_hash_before + data)


def interim_transcript_hash(cs: CipherSuite, confirmed: bytes, confirmation_tag: bytes) -> bytes:
    # InterimTranscriptHashInput is the single field ``MAC confirmation_tag`` (opaque<V>).
    return cs.hash(confirmed + encode_varint(len(confirmation_tag)) + confirmation_tag)


def update_transcript_hashes(
    cs: CipherSuite, interim_transcript_hash_before: bytes, commit: AuthenticatedContent
) -> tuple[bytes, bytes]:
    """Return ``(confirmed_transcript_hash, interim_transcript_hash)`` after ``commit``."""
    tag = commit.auth.confirmation_tag
    if tag is None:
        raise MlsError("a commit must carry a confirmation tag")
    confirmed = confirmed_transcript_hash(
        cs, interim_transcript_hash_before, commit.wire_format, commit.content, commit.auth.signature
    )
    return confirmed, interim_transcript_hash(cs, confirmed, tag)
