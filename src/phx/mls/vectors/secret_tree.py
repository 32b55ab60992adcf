"""secret-tree.json: sender-data keys and the per-leaf handshake/application ratchets (RFC 9420 §9)."""

from __future__ import annotations

from typing import Any

from phx.crypto import suite
from phx.mls.secret_tree import SecretTree, sender_data_key_nonce


def _h(s: str) -> bytes:
    return bytes.fromhex(s)


def run(entry: dict[str, Any]) -> None:
    cs = suite(entry["cipher_suite"])
    sd = entry["sender_data"]
    key, nonce = sender_data_key_nonce(cs, _h(sd["sender_data_secret"]), _h(sd["ciphertext"]))
    assert key == _h(sd["key"]), "sender_data key"
    assert nonce == _h(sd["nonce"]), "sender_data nonce"

    leaves = entry["leaves"]
    assert leaves, "no leaves"
    tree = SecretTree(cs, _h(entry["encryption_secret"]), len(leaves))
    for i, gens in enumerate(leaves):
        for g in gens:
            gen = g["generation"]
            for kind, handshake in (("handshake", True), ("application", False)):
                key, nonce = tree.key_for(i, handshake, gen)
                assert key == _h(g[f"{kind}_key"]), f"leaf {i} gen {gen}: {kind}_key"
                assert nonce == _h(g[f"{kind}_nonce"]), f"leaf {i} gen {gen}: {kind}_nonce"
                tree.consume(i, handshake, gen)
