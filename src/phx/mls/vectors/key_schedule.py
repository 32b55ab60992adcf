"""key-schedule.json: a chain of epochs from ``initial_init_secret`` (RFC 9420 §8)."""

from __future__ import annotations

from typing import Any

from phx.crypto import suite
from phx.mls.key_schedule import derive_epoch_secrets
from phx.mls.messages import GroupContext, ProtocolVersion


def _h(s: str) -> bytes:
    return bytes.fromhex(s)


def _group_context(cipher_suite: int, group_id: bytes, epoch: int, tree_hash: bytes, cth: bytes) -> bytes:
    return GroupContext(ProtocolVersion.MLS10, cipher_suite, group_id, epoch, tree_hash, cth, ()).encode()


def run(entry: dict[str, Any]) -> None:
    cs = suite(entry["cipher_suite"])
    group_id = _h(entry["group_id"])
    init_secret = _h(entry["initial_init_secret"])
    assert entry["epochs"], "no epochs"
    for i, ep in enumerate(entry["epochs"]):
        gc = _group_context(
            entry["cipher_suite"], group_id, i, _h(ep["tree_hash"]), _h(ep["confirmed_transcript_hash"])
        )
        assert gc == _h(ep["group_context"]), f"epoch {i}: group_context"
        s = derive_epoch_secrets(cs, init_secret, _h(ep["commit_secret"]), gc, _h(ep["psk_secret"]))
        for name in (
            "joiner_secret",
            "welcome_secret",
            "init_secret",
            "sender_data_secret",
            "encryption_secret",
            "exporter_secret",
            "epoch_authenticator",
            "external_secret",
            "confirmation_key",
            "membership_key",
            "resumption_psk",
        ):
            assert getattr(s, name) == _h(ep[name]), f"epoch {i}: {name}"
        assert s.external_pub() == _h(ep["external_pub"]), f"epoch {i}: external_pub"
        ex = ep["exporter"]
        out = s.export(ex["label"].encode(), _h(ex["context"]), ex["length"])
        assert out == _h(ex["secret"]), f"epoch {i}: exporter"
        init_secret = s.init_secret
