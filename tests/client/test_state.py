"""The client state file: transactions, persistence across opens, user addresses."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from phx.client.session import ClientError, parse_user, user_id_for
from phx.client.state import ClientState
from phx.identifiers import Fqdn, GroupId, UserId


def test_transactions_roll_back_on_errors(tmp_path: Path) -> None:
    state = ClientState(tmp_path / "home")
    with state.tx() as c:
        state.put(c, "a", b"1")
    with pytest.raises(RuntimeError), state.tx() as c:
        state.put(c, "a", b"2")
        state.put(c, "b", b"3")
        raise RuntimeError("the network went away")
    assert state.get("a") == b"1" and state.get("b") is None
    assert (tmp_path / "home" / "client.sqlite3").stat().st_mode & 0o077 == 0
    state.close()
    again = ClientState(tmp_path / "home")
    assert again.get("a") == b"1"
    again.close()


def test_tokens_are_taken_once(tmp_path: Path) -> None:
    state = ClientState(tmp_path)
    state.add_tokens("a.test", [b"t1", b"t2"], 0)
    assert state.token_count("a.test") == 2 and state.token_count("b.test") == 0
    assert [state.take_token("a.test"), state.take_token("a.test"), state.take_token("a.test")] == [
        b"t1",
        b"t2",
        None,
    ]
    state.add_tokens("a.test", [b"t3"], 0)
    state.drop_tokens("a.test")
    assert state.take_token("a.test") is None
    state.close()


def test_messages_and_requests(tmp_path: Path) -> None:
    state = ClientState(tmp_path)
    gid = GroupId(uuid.uuid4(), Fqdn("a.test"))
    user = UserId.random(Fqdn("b.test"))
    with state.tx() as c:
        first = state.add_message(c, gid, user, "one", 10, False)
        state.add_message(c, gid, user, "two", 11, True)
        rid = state.add_request(c, "in", user, gid, b"package", "pending", 5)
    assert [m.text for m in state.messages(gid)] == ["one", "two"]
    assert [m.text for m in state.messages(after=first)] == ["two"]
    with state.tx() as c:
        state.set_request_status(c, rid, "accepted")
    assert state.requests("in", "pending") == [] and state.request(rid).status == "accepted"  # type: ignore[union-attr]
    state.close()


def test_user_addresses() -> None:
    uid, name = parse_user("Alice@A.Test")
    assert name == "alice" and uid == user_id_for("alice", Fqdn("a.test"))
    assert user_id_for("alice", Fqdn("b.test")) != uid  # the same name on another homeserver
    raw = UserId.random(Fqdn("b.test"))
    assert parse_user(str(raw)) == (raw, None)
    for bad in ("alice", "@a.test", "alice@", "al ice@a.test", "-alice@a.test", "alice@127.0.0.1"):
        with pytest.raises(ClientError):
            parse_user(bad)
