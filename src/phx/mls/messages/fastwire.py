"""Position-based parsing primitives for the hot structs (LeafNode, ParentNode, Node).

The :class:`~phx.codec.Reader` methods cost several Python calls per field; parsing a 10,000-member
ratchet tree through them dominates loading a group. These helpers work on ``bytes`` with an explicit
position and end, and apply the same strict rules (minimal varints, no overrun) as the codec.
"""

from __future__ import annotations

from struct import unpack

from phx.errors import DecodeError

__all__ = ["vl", "opaque", "u16_list", "u32_list"]


def vl(data: bytes, pos: int, end: int) -> tuple[int, int]:
    """Read a varint length header at ``pos``; return (start, stop) of the vector body."""
    if pos >= end:
        raise DecodeError("truncated varint")
    b = data[pos]
    prefix = b >> 6
    if prefix == 0:
        pos += 1
        stop = pos + b
    elif prefix == 1:
        if pos + 2 > end:
            raise DecodeError("truncated varint")
        n = ((b & 0x3F) << 8) | data[pos + 1]
        if n < 0x40:
            raise DecodeError("non-minimal varint")
        pos += 2
        stop = pos + n
    elif prefix == 2:
        if pos + 4 > end:
            raise DecodeError("truncated varint")
        n = int.from_bytes(data[pos : pos + 4], "big") & 0x3FFFFFFF
        if n < 0x4000:
            raise DecodeError("non-minimal varint")
        pos += 4
        stop = pos + n
    else:
        raise DecodeError("invalid varint prefix 0b11")
    if stop > end:
        raise DecodeError(f"vector of {stop - pos} bytes runs past its buffer")
    return pos, stop


def opaque(data: bytes, pos: int, end: int) -> tuple[bytes, int]:
    start, stop = vl(data, pos, end)
    return data[start:stop], stop


def u16_list(data: bytes, pos: int, end: int) -> tuple[tuple[int, ...], int]:
    start, stop = vl(data, pos, end)
    n = stop - start
    if n & 1:
        raise DecodeError("truncated integer")
    return unpack(f">{n >> 1}H", data[start:stop]), stop


def u32_list(data: bytes, pos: int, end: int) -> tuple[tuple[int, ...], int]:
    start, stop = vl(data, pos, end)
    n = stop - start
    if n & 3:
        raise DecodeError("truncated integer")
    return unpack(f">{n >> 2}I", data[start:stop]), stop
