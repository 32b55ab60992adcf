"""Group.to_bytes / from_bytes mid-conversation, and the secret tree's persistence it relies on."""

from __future__ import annotations

import pytest

from phx.errors import DecodeError
from phx.mls.group import Group
from phx.mls.group_state import ApplicationMessage, CommitApplied, GroupConfig, GroupStatus
from phx.mls.messages import WireFormat
from phx.mls.secret_tree import GenerationReused, GenerationTooOld, SecretTree
from tests.mls.test_group_helpers import CS, NOW, assert_in_sync, client, commit_all, deliver, make_group


def _reload(g: Group) -> Group:
    data = g.to_bytes()
    again = Group.from_bytes(data, psk_store=g.psk_store)
    assert again.to_bytes() == data
    return again


def test_round_trip_keeps_out_of_order_keys_and_replay_protection() -> None:
    _, (a, b) = make_group(2)
    msgs = [a.send(f"m{i}".encode()) for i in range(4)]
    assert b.process(msgs[2], now=NOW) == ApplicationMessage(0, b"m2", b"", a.epoch)
    b = _reload(b)
    a = _reload(a)
    assert b.process(msgs[0], now=NOW) == ApplicationMessage(0, b"m0", b"", a.epoch)
    with pytest.raises(GenerationReused):
        b.process(msgs[2], now=NOW)
    assert b.process(msgs[3], now=NOW) == ApplicationMessage(0, b"m3", b"", a.epoch)
    # a's sending ratchet continued after reload: no generation reuse.
    assert b.process(a.send(b"next"), now=NOW) == ApplicationMessage(0, b"next", b"", a.epoch)
    assert b.process(msgs[1], now=NOW) == ApplicationMessage(0, b"m1", b"", a.epoch)


def test_round_trip_with_pending_commit_then_merge() -> None:
    _, (a, b) = make_group(2)
    carol_kp = client("carol").key_package()
    result = a.commit(now=NOW, add=[carol_kp.key_package], group_info=True)
    a = _reload(a)
    assert a.pending_commit == result
    deliver(result.commit, [b])
    applied = a.merge_pending_commit()
    assert isinstance(applied, CommitApplied) and applied.added[0].credential.identity == b"carol"
    c = Group.join_from_welcome(result.welcome, carol_kp, now=NOW)  # type: ignore[arg-type]
    assert_in_sync([a, b, c])


def test_round_trip_keeps_proposal_store_and_own_update_keys() -> None:
    _, (a, b, c) = make_group(3)
    p = c.propose_update(now=NOW, wire_format=WireFormat.PRIVATE_MESSAGE)
    deliver(p.message, [a, b])
    a, c = _reload(a), _reload(c)
    assert [e.ref for e in a.pending_proposals()] == [p.ref]
    result = a.commit(now=NOW)
    deliver(result.commit, [b, c])
    a.merge_pending_commit()
    assert_in_sync([a, b, c])
    assert deliver(c.send(b"after update"), [a, b])[0] == ApplicationMessage(2, b"after update", b"", a.epoch)


def test_round_trip_after_many_epochs_and_states() -> None:
    psks = {b"p": b"v" * 32}
    _, groups = make_group(3, psk_store=psks, config=GroupConfig(resumption_psk_epochs=3))
    for g in groups:
        g.psk_store = psks
    for i in range(4):
        committer = groups[i % 3]
        commit_all(committer, [g for g in groups if g is not committer], psks=[b"p"] if i == 2 else [])
        groups = [_reload(g) for g in groups]
    assert_in_sync(groups)
    assert groups[0].resumption_psk(groups[0].epoch) is not None
    # Remove member 2; its reloaded state remembers being removed.
    result = groups[0].commit(now=NOW, remove=[2])
    deliver(result.commit, groups[1:])
    groups[0].merge_pending_commit()
    removed = _reload(groups[2])
    assert removed.status == GroupStatus.REMOVED


def test_round_trip_external_join_pending() -> None:
    _, (a,) = make_group(1)
    bob = client("bob")
    b, msg = Group.join_external(a.group_info(), bob.credential, bob.signature_private_key, now=NOW)
    b = _reload(b)
    assert b.status == GroupStatus.EXTERNAL_JOIN_PENDING
    deliver(msg, [a])
    b.merge_pending_commit()
    assert_in_sync([a, b])


def test_corrupt_state_is_a_decode_error() -> None:
    _, (a,) = make_group(1)
    data = a.to_bytes()
    with pytest.raises(DecodeError):
        Group.from_bytes(data[:-1])
    with pytest.raises(DecodeError):
        Group.from_bytes(b"\xff" + data[1:])
    with pytest.raises(DecodeError):
        Group.from_bytes(data + b"\x00")


def test_secret_tree_round_trip() -> None:
    tree = SecretTree(CS, bytes(32), 8, max_forward=50, max_skipped=4)
    sent = [tree.next_key(3, False) for _ in range(3)]
    tree.key_for(5, True, 10)  # skips 0..9 of leaf 5's handshake ratchet, keeps 4
    tree.consume(5, True, 10)
    again = SecretTree.from_bytes(CS, tree.to_bytes())
    assert again.to_bytes() == tree.to_bytes()
    assert again.next_key(3, False) == tree.next_key(3, False)
    assert again.key_for(5, True, 9) == tree.key_for(5, True, 9)
    with pytest.raises(GenerationTooOld):
        again.key_for(5, True, 2)
    with pytest.raises(GenerationReused):
        again.key_for(5, True, 10)
    assert again.key_for(1, False, 0) == tree.key_for(1, False, 0)
    assert sent[0][0] == 0 and again.max_skipped == 4
    with pytest.raises(DecodeError):
        SecretTree.from_bytes(CS, tree.to_bytes()[:-3])


def test_round_trip_keeps_past_epochs() -> None:
    cfg = GroupConfig(max_past_epochs=2)
    a = client("alice").create_group(config=cfg)
    bob_kp = client("bob").key_package()
    result = a.commit(now=NOW, add=[bob_kp.key_package])
    a.merge_pending_commit()
    b = Group.join_from_welcome(result.welcome, bob_kp, now=NOW, config=cfg)  # type: ignore[arg-type]
    late = [a.send(b"e1")]
    commit_all(a, [b])
    late.append(a.send(b"e2"))
    commit_all(b, [a])
    b = _reload(b)
    assert [b.process(m, now=NOW) for m in late] == [
        ApplicationMessage(0, b"e1", b"", 1),
        ApplicationMessage(0, b"e2", b"", 2),
    ]
    with pytest.raises(GenerationReused):
        b.process(late[0], now=NOW)
