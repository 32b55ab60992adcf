"""The QS bridge's group-id cache: the same answers as decoding every time, bounded."""

from __future__ import annotations

from dataclasses import replace

import pytest

from phx.errors import DecodeError
from phx.federation.qs_bridge import GroupIds
from phx.identifiers import Fqdn
from phx.mls.messages import MLSMessage

from .helpers import message, new_group

A = Fqdn("a.test")


def test_group_ids_match_decoding_and_stay_bounded() -> None:
    ids = GroupIds(size=4)
    groups = [new_group(A) for _ in range(10)]
    for _ in range(2):
        for g in groups:
            content = message(g, b"x")
            assert ids.of(content) == g == content.group_id()
    assert len(ids._ids) == 4


def test_bytes_that_are_no_group_id_raise_every_time() -> None:
    ids = GroupIds()
    content = message(new_group(A), b"x")
    body = content.body
    assert isinstance(body, MLSMessage) and body.private_message is not None
    bad = replace(content, body=MLSMessage(replace(body.private_message, group_id=b"\x01")))
    for _ in range(2):
        with pytest.raises(DecodeError):
            ids.of(bad)
    assert ids._ids == {}
