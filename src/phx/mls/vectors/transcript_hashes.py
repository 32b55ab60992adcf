"""transcript-hashes.json: confirmation tag and transcript hash update for one commit (RFC 9420 §8.2)."""

from __future__ import annotations

from typing import Any

from phx.crypto import suite
from phx.mls.key_schedule import verify_confirmation_tag
from phx.mls.messages import AuthenticatedContent, ContentType
from phx.mls.transcript import update_transcript_hashes


def _h(s: str) -> bytes:
    return bytes.fromhex(s)


def run(entry: dict[str, Any]) -> None:
    cs = suite(entry["cipher_suite"])
    raw = _h(entry["authenticated_content"])
    content = AuthenticatedContent.decode(raw)
    assert content.encode() == raw, "authenticated_content re-encoding"
    assert content.content.content_type == ContentType.COMMIT, "not a commit"
    confirmed_after = _h(entry["confirmed_transcript_hash_after"])
    tag = content.auth.confirmation_tag
    assert tag is not None, "commit without confirmation tag"
    verify_confirmation_tag(cs, _h(entry["confirmation_key"]), confirmed_after, tag)
    confirmed, interim = update_transcript_hashes(cs, _h(entry["interim_transcript_hash_before"]), content)
    assert confirmed == confirmed_after, "confirmed_transcript_hash_after"
    assert interim == _h(entry["interim_transcript_hash_after"]), "interim_transcript_hash_after"
