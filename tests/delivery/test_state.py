"""The group state's encryption at rest, padding, month-only timestamps and padding target (no database)."""

from __future__ import annotations

import os
from datetime import UTC, datetime

import pytest

from phx.delivery.state import (
    COLD,
    ROSTER,
    GroupState,
    Member,
    PaddingTarget,
    Roster,
    WrongEarKey,
    decrypt_section,
    encrypt_section,
    month_start,
    next_month,
    padding_unit,
    size_bucket,
)
from phx.errors import DecodeError
from phx.identifiers import Fqdn, GroupId

GID = GroupId.random(Fqdn("example.com"))
KEY = os.urandom(32)


def ts(y: int, m: int, d: int = 1, hh: int = 0) -> int:
    return int(datetime(y, m, d, hh, tzinfo=UTC).timestamp())


def test_sections_round_trip_and_bind_key_group_and_section() -> None:
    blob = encrypt_section(KEY, GID, ROSTER, b"secret state", 64)
    assert decrypt_section(KEY, GID, ROSTER, blob) == b"secret state"
    assert b"secret state" not in blob
    with pytest.raises(WrongEarKey):
        decrypt_section(os.urandom(32), GID, ROSTER, blob)
    with pytest.raises(WrongEarKey):
        decrypt_section(KEY, GroupId.random(Fqdn("example.com")), ROSTER, blob)
    with pytest.raises(WrongEarKey):
        decrypt_section(KEY, GID, COLD, blob)
    tampered = bytearray(blob)
    tampered[-1] ^= 1
    with pytest.raises(WrongEarKey):
        decrypt_section(KEY, GID, ROSTER, bytes(tampered))
    with pytest.raises(DecodeError):
        decrypt_section(KEY, GID, ROSTER, b"\x02" + blob[1:])
    with pytest.raises(WrongEarKey):
        encrypt_section(b"short", GID, ROSTER, b"x", 1)
    # a fresh salt per write: equal plaintexts never give equal ciphertexts
    assert encrypt_section(KEY, GID, ROSTER, b"x", 64) != encrypt_section(KEY, GID, ROSTER, b"x", 64)


@pytest.mark.parametrize("size", [0, 1, 59, 60, 61, 500])
def test_padding_hides_the_size_up_to_the_unit(size: int) -> None:
    overhead = 1 + 32 + 16
    blob = encrypt_section(KEY, GID, COLD, bytes(size), 64)
    assert (len(blob) - overhead) % 64 == 0
    assert len(blob) - overhead == 64 * ((size + 4 + 63) // 64)
    assert decrypt_section(KEY, GID, COLD, blob) == bytes(size)


def test_padding_unit_and_target() -> None:
    assert padding_unit(1, ROSTER) < padding_unit(1, COLD)
    assert padding_unit(8, COLD) == 8 * padding_unit(1, COLD)
    assert [size_bucket(n) for n in (1, 2, 3, 4, 5, 1000)] == [0, 1, 2, 2, 3, 10]
    target = PaddingTarget(8, initial=16, min_groups=10)
    assert target.target() == 16  # nothing observed yet: the persisted value
    for i, n in enumerate([2] * 7 + [100, 1000]):
        target.observe(bytes([i]), n)
    assert target.target() == 128  # the 8th of 9 groups (ordered by size) has 100 members
    target.observe(bytes([7]), 3)
    assert target.target() == 16  # too few groups seen to go below the persisted target
    target.observe(bytes([9]), 2)
    assert target.target() == 2  # 10 groups: the estimate alone counts
    target.forget(bytes([0]))
    assert target.observed == 9
    small = PaddingTarget(1, max_groups=2, min_groups=1)
    for i in range(5):
        small.observe(bytes([i]), 1 << i)
    assert small.observed == 2 and small.target() == 8


def test_month_only_timestamps() -> None:
    assert month_start(ts(2026, 3, 17, 13)) == ts(2026, 3)
    assert month_start(ts(2026, 3)) == ts(2026, 3)
    assert next_month(ts(2026, 3, 17)) == ts(2026, 4)
    assert next_month(ts(2026, 12, 31, 23)) == ts(2027, 1)


def roster() -> Roster:
    members = {
        0: Member(0, 0, os.urandom(32), b"qc0", ts(2026, 1), 0),
        3: Member(3, 1, os.urandom(32), b"qc3", ts(2026, 2), 4, os.urandom(32)),
    }
    return Roster(1, 4, 0, os.urandom(32), 2, members, {3}, os.urandom(32))


def test_roster_round_trip() -> None:
    r = roster()
    assert Roster.decode(r.encode()) == r
    with pytest.raises(DecodeError):
        Roster.decode(r.encode() + b"\x00")
    with pytest.raises(DecodeError):
        Roster.decode(b"\x09" + r.encode()[1:])
    assert r.users() == {0: [0], 1: [3]}


def test_sections_of_different_writes_do_not_combine() -> None:
    r = roster()
    r.cold_digest = b"\x00" * 32
    blob = encrypt_section(KEY, GID, ROSTER, r.encode(), 64)
    with pytest.raises(DecodeError, match="belong together"):
        GroupState.decrypt(GID, KEY, blob, b"some other cold section", version=1)
    state = GroupState.decrypt(GID, KEY, blob, None, version=1)  # roster only: fine
    assert state.epoch == 4 and not state.cold_available
    with pytest.raises(RuntimeError):
        _ = state.cold


def test_fan_out_encoding_by_concatenation_equals_the_codec() -> None:
    from phx.mls.messages import ContentType, MLSMessage, PrivateMessage
    from phx.queuing.messages import FanOutMessage, MessageContent, MessageContentType
    from tests.delivery.helpers import random_queue_config

    configs = [random_queue_config(Fqdn(d)) for d in ("a.example", "b.example", "a.example")]
    members = {i: Member(i, i, os.urandom(32), qc.encode(), 0, 0) for i, qc in enumerate(configs)}
    state = GroupState(GID, Roster(1, 1, 0, os.urandom(32), 3, members), cold_blob=b"")
    content = MessageContent(
        MessageContentType.APPLICATION,
        MLSMessage(PrivateMessage(GID.to_mls(), 1, ContentType.APPLICATION, b"", b"sd", b"ct")),
    )
    for recipients in (state.recipients(), state.recipients(exclude=1), (random_queue_config(),)):
        message = FanOutMessage(recipients, content)
        assert state.encode_fan_out(message) == message.encode()
    assert state.recipients() == tuple(configs)
    first = state.recipients()
    state.roster.members[1].activity_time = 5
    state.touch_roster()  # no member changed its config: the decoded objects are reused
    assert all(a is b for a, b in zip(first, state.recipients(), strict=True))


def test_cold_section_and_past_state_round_trip() -> None:
    from phx.delivery.messages import MemberCredential
    from phx.delivery.state import ColdState, PastState
    from phx.mls.group import Group
    from phx.mls.messages import Credential
    from phx.mls.public_group import PublicGroup
    from tests.delivery.helpers import CS

    priv, _ = CS.generate_signature_key_pair()
    g = Group.create(CS, Credential.basic(b"a"), priv, now=1000, group_id=GID.to_mls())
    gi = g.group_info(ratchet_tree=True).group_info
    assert gi is not None
    cold = ColdState(PublicGroup.from_group_info(gi, None, 1000), {0: b"cred a", 7: b""})
    back = ColdState.decode(cold.encode())
    assert back.credentials == cold.credentials and back.public.context == cold.public.context
    assert back.credential_chains() == (MemberCredential(0, b"cred a"), MemberCredential(7, b""))
    past = PastState(3, g.tree.encode(), back.credential_chains())
    assert PastState.decode(past.encode()) == past
    with pytest.raises(DecodeError):
        ColdState.decode(b"\x05" + cold.encode()[1:])
