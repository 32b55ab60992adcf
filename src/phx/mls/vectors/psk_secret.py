"""psk_secret.json: chaining external PSKs into ``psk_secret`` (RFC 9420 §8.4)."""

from __future__ import annotations

from typing import Any

from phx.crypto import suite
from phx.mls.messages import PreSharedKeyID
from phx.mls.psk import psk_secret


def _h(s: str) -> bytes:
    return bytes.fromhex(s)


def _external_psk_id(psk_id: bytes, psk_nonce: bytes) -> bytes:
    return PreSharedKeyID.external(psk_id, psk_nonce).encode()


def run(entry: dict[str, Any]) -> None:
    cs = suite(entry["cipher_suite"])
    psks = [(_external_psk_id(_h(p["psk_id"]), _h(p["psk_nonce"])), _h(p["psk"])) for p in entry["psks"]]
    assert psk_secret(cs, psks) == _h(entry["psk_secret"]), "psk_secret"
