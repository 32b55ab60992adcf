"""PSK secret (RFC 9420 §8.4)."""

from __future__ import annotations

from phx.crypto import SUITE_1
from phx.mls.psk import psk_secret

CS = SUITE_1


def test_no_psks_is_zero_vector() -> None:
    assert psk_secret(CS, []) == bytes(CS.nh)


def test_single_psk_by_hand() -> None:
    psk_id, psk = b"\x01\x02id\x02nn", b"value"
    extracted = CS.extract(bytes(32), psk)
    label = psk_id + (0).to_bytes(2, "big") + (1).to_bytes(2, "big")
    expected = CS.extract(CS.expand_with_label(extracted, b"derived psk", label, 32), bytes(32))
    assert psk_secret(CS, [(psk_id, psk)]) == expected


def test_order_and_ids_matter() -> None:
    a, b = (b"id-a", b"psk-a"), (b"id-b", b"psk-b")
    ab = psk_secret(CS, [a, b])
    assert ab != psk_secret(CS, [b, a])
    assert ab != psk_secret(CS, [a])
    assert psk_secret(CS, [(b"id-x", b"psk-a")]) != psk_secret(CS, [a])
