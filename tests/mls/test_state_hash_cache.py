"""Tree-hash caches in persisted state: PublicGroup (DS) and Group (client) format 2; format 1 still read."""

from __future__ import annotations

from typing import Any

import pytest

from phx.codec import Reader, Writer
from phx.errors import DecodeError
from phx.mls.group import Group
from phx.mls.group_codec import encode_group
from phx.mls.group_state import CommitApplied
from phx.mls.public_group import CommitOutcome, PublicGroup
from phx.mls.tree import RatchetTree
from tests.mls.test_group_helpers import NOW, client, deliver, make_group


@pytest.fixture
def hash_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts tree-hash node computations (cache misses)."""
    calls = [0]
    compute = RatchetTree._compute_hash

    def counting(self: RatchetTree, *args: Any) -> bytes:
        calls[0] += 1
        return compute(self, *args)

    monkeypatch.setattr(RatchetTree, "_compute_hash", counting)
    return calls


def public_group(groups: list[Group]) -> PublicGroup:
    gi = groups[0].group_info(ratchet_tree=True).group_info
    assert gi is not None
    return PublicGroup.from_group_info(gi, None, NOW)


def cache_span(pg: PublicGroup, data: bytes) -> tuple[int, int]:
    """(start, end) of the hash cache field in PublicGroup state ``data``: it follows the tree."""
    w = Writer()
    w.u8(2)
    w.u16(pg.cs.suite_id)
    pg.context._write(w)
    w.opaque(pg.interim_transcript_hash)
    w.opaque(pg.confirmation_tag)
    pg.tree.write(w)
    start = len(w.getvalue())
    assert data.startswith(w.getvalue())
    r = Reader(data)
    r.pos = start
    r.opaque()
    return start, r.pos


def test_public_group_state_restores_without_rehashing(hash_calls: list[int]) -> None:
    _, groups = make_group(6)
    pg = public_group(groups)
    data = pg.to_bytes()
    assert data[0] == 2
    hash_calls[0] = 0
    back = PublicGroup.from_bytes(data)
    assert back.tree.tree_hash() == pg.context.tree_hash and hash_calls[0] == 0
    assert back.to_bytes() == data
    # The restored group processes a commit exactly like the live one.
    result = groups[2].commit(now=NOW, path=True)
    out, live = back.process(result.commit, NOW), pg.process(result.commit, NOW)
    assert isinstance(out, CommitOutcome) and isinstance(live, CommitOutcome)
    assert out.new_context == live.new_context


def test_public_group_reads_format_1(hash_calls: list[int]) -> None:
    _, groups = make_group(5)
    pg = public_group(groups)
    data = pg.to_bytes()
    start, end = cache_span(pg, data)
    old = b"\x01" + data[1:start] + data[end:]
    hash_calls[0] = 0
    back = PublicGroup.from_bytes(old)
    assert back.tree == pg.tree and back.context == pg.context
    assert back.tree.tree_hash() == pg.context.tree_hash
    assert hash_calls[0] == back.tree.width  # no cache: every node hashed once
    assert back.to_bytes() == data
    with pytest.raises(DecodeError):
        PublicGroup.from_bytes(b"\x03" + data[1:])


def test_public_group_cache_with_wrong_root_is_ignored(hash_calls: list[int]) -> None:
    _, groups = make_group(5)
    pg = public_group(groups)
    data = pg.to_bytes()
    _, end = cache_span(pg, data)
    bad = data[: end - 1] + bytes([data[end - 1] ^ 1]) + data[end:]
    hash_calls[0] = 0
    back = PublicGroup.from_bytes(bad)
    assert back.tree.tree_hash() == pg.context.tree_hash
    assert hash_calls[0] == back.tree.width
    assert back.to_bytes() == data
    start, _ = cache_span(pg, data)
    with pytest.raises(DecodeError):
        PublicGroup.from_bytes(data[:start] + b"\x01\x00" + data[end:])


def test_group_state_restores_without_rehashing_and_reads_format_1(hash_calls: list[int]) -> None:
    _, (a, b, c) = make_group(3)
    data = a.to_bytes()
    assert data[0] == 2
    hash_calls[0] = 0
    back = Group.from_bytes(data)
    assert back.tree.tree_hash() == a.context.tree_hash and hash_calls[0] == 0
    old = encode_group(a, version=1)
    assert old[0] == 1 and len(old) < len(data)
    from_old = Group.from_bytes(old)
    assert from_old.to_bytes() == data
    assert hash_calls[0] == a.tree.width
    with pytest.raises(ValueError):
        encode_group(a, version=3)


def test_pending_commit_state_keeps_its_cache(hash_calls: list[int]) -> None:
    _, (a, b) = make_group(2)
    carol = client("carol").key_package()
    result = a.commit(now=NOW, add=[carol.key_package], path=True)
    old = Group.from_bytes(encode_group(a, version=1))
    hash_calls[0] = 0
    a = Group.from_bytes(a.to_bytes())
    applied = a.merge_pending_commit()
    assert isinstance(applied, CommitApplied)
    assert a.tree.tree_hash() == a.context.tree_hash and hash_calls[0] == 0
    deliver(result.commit, [b])
    assert b.context == a.context
    old.merge_pending_commit()
    assert old.context == a.context and old.tree.tree_hash() == a.context.tree_hash
