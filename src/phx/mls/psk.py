"""The PSK secret injected into the key schedule (RFC 9420 §8.4).

Takes each PSK as ``(encoded PreSharedKeyID, psk value)`` so it does not depend on the wire structs;
callers pass ``psk_id.encode()``. Resolving a PreSharedKeyID to its value (an external PSK store, or the
``resumption_psk`` of an earlier epoch) is the group layer's business.
"""

from __future__ import annotations

from collections.abc import Sequence

from phx.crypto import CipherSuite

__all__ = ["MAX_PSKS", "psk_secret"]

#: PSKLabel carries index and count as uint16.
MAX_PSKS = 0xFFFF


def psk_secret(cs: CipherSuite, psks: Sequence[tuple[bytes, bytes]]) -> bytes:
    """``psk_secret_[n]``; the all-zero vector of length ``Nh`` when ``psks`` is empty."""
    count = len(psks)
    if count > MAX_PSKS:
        raise ValueError(f"{count} PSKs do not fit PSKLabel.count (uint16)")
    zero = bytes(cs.nh)
    secret = zero
    tail = count.to_bytes(2, "big")
    for index, (psk_id, psk) in enumerate(psks):
        extracted = cs.extract(zero, psk)
        label = psk_id + index.to_bytes(2, "big") + tail  # PSKLabel {id, index, count}
        psk_input = cs.expand_with_label(extracted, b"derived psk", label, cs.nh)
        secret = cs.extract(psk_input, secret)
    return secret
