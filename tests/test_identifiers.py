"""Identifiers: domain validation, wire round trips, text forms, and strict decoding."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from phx.codec import encode_varint
from phx.errors import DecodeError, ValidationError
from phx.identifiers import (
    ClientId,
    Fqdn,
    GroupId,
    PseudonymousClientId,
    QsCid,
    QsUid,
    Service,
    UserId,
    parse_service_domain,
    parse_uuid,
    service_domain,
)

U1 = uuid.UUID("00112233-4455-6677-8899-aabbccddeeff")
U2 = uuid.UUID("ffeeddcc-bbaa-9988-7766-554433221100")
A = Fqdn("a.test")


def opaque(b: bytes) -> bytes:
    return encode_varint(len(b)) + b


# --- Fqdn --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "a.test",
        "example.com",
        "localhost",
        "a-b.c0",
        "0a.example",
        "xn--bcher-kva.example",
        "x" * 63 + ".test",
        ".".join(["a" * 63] * 3 + ["b" * 61]),  # exactly 253 characters
    ],
)
def test_fqdn_accepts_canonical_names(name: str) -> None:
    assert len(name) <= 253
    d = Fqdn(name)
    assert str(d) == name
    assert Fqdn.decode(d.encode()) == d
    assert d.encode() == opaque(name.encode())


@pytest.mark.parametrize(
    "name",
    [
        "",
        "A.test",
        "a.Test",
        ".a.test",
        "a.test.",
        "a..test",
        "-a.test",
        "a-.test",
        "a_b.test",
        "a b.test",
        "a.test:80",
        "bücher.example",
        "x" * 64 + ".test",
        ".".join(["a" * 63] * 3 + ["b" * 62]),  # 254 characters
        "127.0.0.1",
        "host.123",
        "42",
    ],
)
def test_fqdn_rejects_invalid_names(name: str) -> None:
    with pytest.raises(ValidationError):
        Fqdn(name)


def test_fqdn_rejects_non_str() -> None:
    bad: Any = b"a.test"
    with pytest.raises(ValidationError):
        Fqdn(bad)


def test_fqdn_parse_folds_case_only() -> None:
    assert Fqdn.parse("Example.COM") == Fqdn("example.com")
    with pytest.raises(ValidationError):
        Fqdn.parse("bücher.example")
    with pytest.raises(ValidationError):
        Fqdn.parse("Example.COM.")


@pytest.mark.parametrize(
    "data",
    [
        opaque(b"A.test"),  # not canonical: decoding never folds case
        opaque("bü.test".encode()),
        opaque(b"a..test"),
        opaque(b""),
        opaque(b"a" * 254),  # over the length limit
        b"\x06a.te",  # truncated
        opaque(b"a.test") + b"\x00",  # trailing byte
    ],
)
def test_fqdn_decode_rejects_invalid_bytes(data: bytes) -> None:
    with pytest.raises(DecodeError):
        Fqdn.decode(data)


def test_fqdn_ordering_and_hashing() -> None:
    assert sorted([Fqdn("b.test"), Fqdn("a.test")]) == [Fqdn("a.test"), Fqdn("b.test")]
    assert len({Fqdn("a.test"), Fqdn.parse("A.TEST")}) == 1


# --- services ----------------------------------------------------------------------------------------


def test_service_domains() -> None:
    assert service_domain(A, Service.AS) == Fqdn("as.a.test")
    assert A.service(Service.DS) == Fqdn("ds.a.test")
    assert A.service(Service.QS) == Fqdn("qs.a.test")
    assert parse_service_domain(Fqdn("qs.a.test")) == (Service.QS, A)
    assert parse_service_domain(Fqdn("as.localhost")) == (Service.AS, Fqdn("localhost"))


@pytest.mark.parametrize("host", ["a.test", "localhost", "www.a.test", "qs"])
def test_parse_service_domain_rejects_other_hosts(host: str) -> None:
    with pytest.raises(ValidationError):
        parse_service_domain(Fqdn(host))


def test_service_domain_too_long() -> None:
    long = Fqdn(".".join(["a" * 63] * 3 + ["b" * 61]))
    with pytest.raises(ValidationError):
        service_domain(long, Service.AS)


# --- uuids and user/client ids -----------------------------------------------------------------------


def test_parse_uuid_requires_hyphenated_form() -> None:
    assert parse_uuid("00112233-4455-6677-8899-AABBCCDDEEFF") == U1
    for bad in [
        "00112233445566778899aabbccddeeff",
        "{00112233-4455-6677-8899-aabbccddeeff}",
        "urn:uuid:00112233-4455-6677-8899-aabbccddeeff",
        "00112233-4455-6677-8899-aabbccddeef",
        "0011223g-4455-6677-8899-aabbccddeeff",
        "",
    ]:
        with pytest.raises(ValidationError):
            parse_uuid(bad)


def test_user_id_wire_and_text() -> None:
    u = UserId(A, U1)
    assert u.encode() == opaque(b"a.test") + U1.bytes
    assert UserId.decode(u.encode()) == u
    assert str(u) == "00112233-4455-6677-8899-aabbccddeeff@a.test"
    assert UserId.parse(str(u)) == u
    assert UserId.parse("00112233-4455-6677-8899-AABBCCDDEEFF@A.Test") == u


@pytest.mark.parametrize(
    "text",
    [
        "00112233-4455-6677-8899-aabbccddeeff",
        "@a.test",
        "00112233-4455-6677-8899-aabbccddeeff@",
        "00112233-4455-6677-8899-aabbccddeeff@a..test",
        "not-a-uuid@a.test",
        "x@00112233-4455-6677-8899-aabbccddeeff@a.test",
    ],
)
def test_user_id_parse_rejects(text: str) -> None:
    with pytest.raises(ValidationError):
        UserId.parse(text)


def test_identifier_field_types_are_checked() -> None:
    raw: Any = U1.bytes
    with pytest.raises(ValidationError):
        UserId(A, raw)
    with pytest.raises(ValidationError):
        UserId(raw, U1)
    with pytest.raises(ValidationError):
        ClientId(raw, U1)
    with pytest.raises(ValidationError):
        QsUid(raw)
    with pytest.raises(ValidationError):
        PseudonymousClientId(raw, U1)
    with pytest.raises(ValidationError):
        GroupId(U1, raw)


def test_client_id_wire_and_text() -> None:
    c = ClientId(UserId(A, U1), U2)
    assert c.encode() == opaque(b"a.test") + U1.bytes + U2.bytes
    assert ClientId.decode(c.encode()) == c
    assert c.domain == A
    text = "00112233-4455-6677-8899-aabbccddeeff.ffeeddcc-bbaa-9988-7766-554433221100@a.test"
    assert str(c) == text
    assert ClientId.parse(text) == c
    with pytest.raises(ValidationError):
        ClientId.parse("00112233-4455-6677-8899-aabbccddeeff@a.test")
    with pytest.raises(ValidationError):
        ClientId.parse("00112233-4455-6677-8899-aabbccddeeff.zz@a.test")


def test_nested_invalid_domain_is_a_decode_error() -> None:
    with pytest.raises(DecodeError):
        ClientId.decode(opaque(b"A.test") + U1.bytes + U2.bytes)
    with pytest.raises(DecodeError):
        UserId.decode(opaque(b"a.test") + U1.bytes[:15])


def test_qs_ids() -> None:
    q = QsUid(U1)
    assert q.encode() == U1.bytes
    assert QsUid.decode(q.encode()) == q
    assert QsUid.parse(str(q)) == q
    cid = QsCid(q, U2)
    assert QsCid is PseudonymousClientId
    assert cid.encode() == U1.bytes + U2.bytes
    assert QsCid.decode(cid.encode()) == cid
    assert QsCid.parse(str(cid)) == cid
    with pytest.raises(ValidationError):
        QsCid.parse(str(q))
    with pytest.raises(DecodeError):
        QsCid.decode(U1.bytes)
    with pytest.raises(DecodeError):
        QsUid.decode(U1.bytes + b"\x00")


def test_group_id() -> None:
    g = GroupId(U1, A)
    assert g.encode() == U1.bytes + opaque(b"a.test")
    assert g.to_mls() == g.encode()
    assert GroupId.from_mls(g.to_mls()) == g
    assert str(g) == "00112233-4455-6677-8899-aabbccddeeff@a.test"
    assert GroupId.parse(str(g)) == g
    with pytest.raises(DecodeError):
        GroupId.from_mls(b"\x01" * 32)  # an MLS group id of some other application
    with pytest.raises(DecodeError):
        GroupId.from_mls(U1.bytes)


def test_random_ids_are_fresh() -> None:
    u = UserId.random(A)
    assert u.as_domain == A and u != UserId.random(A)
    c = ClientId.random(u)
    assert c.user_id == u and c != ClientId.random(u)
    assert QsUid.random() != QsUid.random()
    q = QsUid.random()
    assert QsCid.random(q).qs_uid == q
    g = GroupId.random(A)
    assert g.ds_domain == A and g != GroupId.random(A)


_label = st.from_regex(r"[a-z][a-z0-9-]{0,20}[a-z0-9]|[a-z]", fullmatch=True)
_domain = st.lists(_label, min_size=1, max_size=4).map(".".join).map(Fqdn)


@given(_domain, st.uuids(), st.uuids(), st.uuids())
def test_round_trips(domain: Fqdn, u1: uuid.UUID, u2: uuid.UUID, u3: uuid.UUID) -> None:
    c = ClientId(UserId(domain, u1), u2)
    assert ClientId.decode(c.encode()) == c
    assert ClientId.parse(str(c)) == c
    g = GroupId(u3, domain)
    assert GroupId.decode(g.encode()) == g
    assert GroupId.parse(str(g)) == g
    cid = QsCid(QsUid(u1), u2)
    assert QsCid.parse(str(cid)) == cid


# --- the validation caches ------------------------------------------------------------------------------


def test_cached_names_do_not_admit_other_spellings() -> None:
    # "a.test" is validated and cached; its uppercase spelling is a different string and different bytes.
    assert Fqdn.decode(opaque(b"a.test")) == A
    assert Fqdn.decode(opaque(b"a.test")) is Fqdn.decode(opaque(b"a.test"))
    for _ in range(2):  # refused every time: only valid names are remembered
        with pytest.raises(DecodeError):
            Fqdn.decode(opaque(b"A.test"))
        with pytest.raises(ValidationError):
            Fqdn("A.test")
        with pytest.raises(DecodeError):
            Fqdn.decode(opaque(b"a..test"))


def test_validation_caches_stay_bounded() -> None:
    from phx import identifiers

    for i in range(identifiers._CACHE_LIMIT + 10):
        Fqdn.decode(opaque(f"n{i}.test".encode()))
    assert 0 < len(identifiers._VALID_NAMES) <= identifiers._CACHE_LIMIT
    assert 0 < len(identifiers._DECODED) <= identifiers._CACHE_LIMIT
    # A name that fell out of the caches is checked again, with the same answer.
    assert Fqdn.decode(opaque(b"n0.test")) == Fqdn("n0.test")
    with pytest.raises(ValidationError):
        Fqdn("n0.test-")


def test_group_ids_are_decoded_once_bounded_and_failures_never_remembered() -> None:
    from phx import identifiers

    groups = [GroupId.random(Fqdn("a.test")) for _ in range(identifiers._CACHE_LIMIT + 10)]
    for g in groups:
        assert GroupId.from_mls(g.to_mls()) == g
    assert GroupId.from_mls(groups[-1].to_mls()) is GroupId.from_mls(groups[-1].to_mls())
    assert 0 < len(identifiers._GROUP_IDS) <= identifiers._CACHE_LIMIT
    assert GroupId.from_mls(groups[0].to_mls()) == groups[0]  # fell out: decoded again, same answer
    for _ in range(2):
        with pytest.raises(DecodeError):
            GroupId.from_mls(b"\x01")
    assert b"\x01" not in identifiers._GROUP_IDS
