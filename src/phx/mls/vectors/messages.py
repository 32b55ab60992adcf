"""messages.json: decode every serialized struct and re-encode it byte for byte."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from phx.mls.messages import (
    Add,
    Commit,
    ContentType,
    ExternalInit,
    GroupContextExtensions,
    GroupSecrets,
    MLSMessage,
    PreSharedKey,
    ReInit,
    Remove,
    Update,
    WireFormat,
    decode_ratchet_tree,
    encode_ratchet_tree,
)

SUITE_KEY = None


_Check = Callable[[bytes], bytes]


def _mls_message(wire_format: WireFormat, content_type: ContentType | None = None) -> _Check:
    def check(data: bytes) -> bytes:
        msg = MLSMessage.decode(data)
        assert msg.wire_format == wire_format, f"wire format {msg.wire_format!r} != {wire_format!r}"
        if content_type is not None:
            pm = msg.public_message
            assert pm is not None and pm.content.content_type == content_type, "content type"
        return msg.encode()

    return check


def _ratchet_tree(data: bytes) -> bytes:
    return encode_ratchet_tree(decode_ratchet_tree(data))


CHECKS: dict[str, _Check] = {
    "mls_welcome": _mls_message(WireFormat.WELCOME),
    "mls_group_info": _mls_message(WireFormat.GROUP_INFO),
    "mls_key_package": _mls_message(WireFormat.KEY_PACKAGE),
    "ratchet_tree": _ratchet_tree,
    "group_secrets": lambda b: GroupSecrets.decode(b).encode(),
    "add_proposal": lambda b: Add.decode(b).encode(),
    "update_proposal": lambda b: Update.decode(b).encode(),
    "remove_proposal": lambda b: Remove.decode(b).encode(),
    "pre_shared_key_proposal": lambda b: PreSharedKey.decode(b).encode(),
    "re_init_proposal": lambda b: ReInit.decode(b).encode(),
    "external_init_proposal": lambda b: ExternalInit.decode(b).encode(),
    "group_context_extensions_proposal": lambda b: GroupContextExtensions.decode(b).encode(),
    "commit": lambda b: Commit.decode(b).encode(),
    "public_message_application": _mls_message(WireFormat.PUBLIC_MESSAGE, ContentType.APPLICATION),
    "public_message_proposal": _mls_message(WireFormat.PUBLIC_MESSAGE, ContentType.PROPOSAL),
    "public_message_commit": _mls_message(WireFormat.PUBLIC_MESSAGE, ContentType.COMMIT),
    "private_message": _mls_message(WireFormat.PRIVATE_MESSAGE),
}


def run(entry: dict[str, Any]) -> None:
    unknown = set(entry) - set(CHECKS)
    assert not unknown, f"unexpected fields {sorted(unknown)}"
    for key, check in CHECKS.items():
        data = bytes.fromhex(entry[key])
        assert check(data) == data, f"{key}: re-encoding differs"
