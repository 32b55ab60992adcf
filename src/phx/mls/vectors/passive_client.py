"""passive-client-*.json: join by Welcome (tree in the Welcome or out of band, external PSKs), then follow
every epoch's proposals and commit, comparing the epoch authenticator after the join and each commit."""

from __future__ import annotations

from typing import Any

from phx.crypto import suite
from phx.mls.group import Group
from phx.mls.key_package import KeyPackageBundle
from phx.mls.messages import MLSMessage

#: A time inside every lifetime the vectors use (they are generated with wide lifetimes).
_NOW = 1_700_000_000


def _h(s: str) -> bytes:
    return bytes.fromhex(s)


def run(entry: dict[str, Any]) -> None:
    cs = suite(entry["cipher_suite"])
    kp = MLSMessage.decode(_h(entry["key_package"])).key_package
    assert kp is not None, "key_package is not an MLSMessage(KeyPackage)"
    assert kp.cipher_suite == cs.suite_id
    bundle = KeyPackageBundle(
        kp, _h(entry["init_priv"]), _h(entry["encryption_priv"]), _h(entry["signature_priv"])
    )
    bundle.check_keys()
    psks = {_h(p["psk_id"]): _h(p["psk"]) for p in entry["external_psks"]}
    tree = _h(entry["ratchet_tree"]) if entry["ratchet_tree"] is not None else None
    group = Group.join_from_welcome(_h(entry["welcome"]), bundle, now=_NOW, ratchet_tree=tree, psk_store=psks)
    assert group.epoch_authenticator == _h(entry["initial_epoch_authenticator"]), (
        "initial epoch authenticator"
    )
    for i, epoch in enumerate(entry["epochs"]):
        for p in epoch["proposals"]:
            group.process(_h(p), now=_NOW)
        outcome = group.process(_h(epoch["commit"]), now=_NOW)
        assert outcome.__class__.__name__ == "CommitApplied", f"epoch {i}: commit not applied"
        assert group.epoch_authenticator == _h(epoch["epoch_authenticator"]), (
            f"epoch {i}: epoch authenticator"
        )
        # Persisting and reloading must not change anything a passive client needs.
        group = Group.from_bytes(group.to_bytes(), psk_store=psks)
