"""crypto-basics.json: the RFC 9420 §5 helpers."""

from __future__ import annotations

from typing import Any

from phx.crypto import suite


def _h(s: str) -> bytes:
    return bytes.fromhex(s)


def run(entry: dict[str, Any]) -> None:
    cs = suite(entry["cipher_suite"])
    v = entry["ref_hash"]
    assert cs.ref_hash(v["label"].encode(), _h(v["value"])) == _h(v["out"]), "ref_hash"
    v = entry["expand_with_label"]
    out = cs.expand_with_label(_h(v["secret"]), v["label"].encode(), _h(v["context"]), v["length"])
    assert out == _h(v["out"]), "expand_with_label"
    v = entry["derive_secret"]
    assert cs.derive_secret(_h(v["secret"]), v["label"].encode()) == _h(v["out"]), "derive_secret"
    v = entry["derive_tree_secret"]
    out = cs.derive_tree_secret(_h(v["secret"]), v["label"].encode(), v["generation"], v["length"])
    assert out == _h(v["out"]), "derive_tree_secret"
    v = entry["sign_with_label"]
    label, content = v["label"].encode(), _h(v["content"])
    assert cs.verify_with_label(_h(v["pub"]), label, content, _h(v["signature"])), "verify_with_label"
    mine = cs.sign_with_label(_h(v["priv"]), label, content)
    assert cs.verify_with_label(_h(v["pub"]), label, content, mine), "sign_with_label"
    v = entry["encrypt_with_label"]
    label, context = v["label"].encode(), _h(v["context"])
    pt = cs.decrypt_with_label(_h(v["priv"]), label, context, _h(v["kem_output"]), _h(v["ciphertext"]))
    assert pt == _h(v["plaintext"]), "decrypt_with_label"
    kem, ct = cs.encrypt_with_label(_h(v["pub"]), label, context, pt)
    assert cs.decrypt_with_label(_h(v["priv"]), label, context, kem, ct) == pt, "encrypt_with_label"
