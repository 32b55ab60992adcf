"""welcome.json: decrypt a Welcome with the KeyPackage's init key, verify GroupInfo signature and
confirmation tag."""

from __future__ import annotations

from typing import Any

from phx.crypto import suite
from phx.mls.key_package import key_package_ref
from phx.mls.key_schedule import epoch_secrets_from_joiner
from phx.mls.messages import MLSMessage
from phx.mls.welcome import decrypt_group_info, open_welcome, verify_group_info_signature


def run(entry: dict[str, Any]) -> None:
    cs = suite(entry["cipher_suite"])
    kp = MLSMessage.decode(bytes.fromhex(entry["key_package"])).key_package
    welcome = MLSMessage.decode(bytes.fromhex(entry["welcome"])).welcome
    assert kp is not None and welcome is not None, "wrong message types"
    secrets = open_welcome(cs, welcome, key_package_ref(cs, kp), bytes.fromhex(entry["init_priv"]))
    assert not secrets.psks, "vector uses no PSKs"
    gi = decrypt_group_info(cs, welcome, secrets.joiner_secret, None)
    verify_group_info_signature(cs, gi, bytes.fromhex(entry["signer_pub"]))
    gc = gi.group_context
    epoch = epoch_secrets_from_joiner(cs, secrets.joiner_secret, gc.encode())
    epoch.verify_confirmation_tag(gc.confirmed_transcript_hash, gi.confirmation_tag)
