"""deserialization.json: variable-length vector headers (RFC 9420 §2.1.2)."""

from __future__ import annotations

from typing import Any

from phx.codec import decode_varint, encode_varint

SUITE_KEY = None


def run(entry: dict[str, Any]) -> None:
    header = bytes.fromhex(entry["vlbytes_header"])
    length, end = decode_varint(header, 0)
    assert end == len(header), "header has trailing bytes"
    assert length == entry["length"], f"decoded length {length} != {entry['length']}"
    assert encode_varint(entry["length"]) == header, "encoded header differs"
