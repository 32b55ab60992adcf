"""What we can check of opaque-ke-py: round trips, wrong passwords, user-id binding, replay, bad input.

Against the RFC 9807 vectors (../shared/refs/opaque-test-vectors.json): the binding takes no injected
randomness and always uses Argon2 as KSF (the vectors use the identity KSF), so client messages, KE2 and
the keys cannot be replayed. The server's registration step is deterministic, though: loading the
vector's OPRF seed and server key pair as the server setup, ``server_registration_start`` reproduces the
vectors' ``registration_response`` (OPRF key derivation per credential identifier and evaluation) and
``server_registration_finish`` stores exactly the vectors' ``registration_upload``. Both ristretto255
vectors pass; message sizes match the configuration.
"""

from __future__ import annotations

import json
from typing import Any

import opaque_ke_py as ok
import pytest

from phx.auth.opaque import (
    OpaqueAuthError,
    client_login_finish,
    client_login_start,
    client_registration_finish,
    client_registration_start,
    load_server_setup,
    new_server_setup,
    server_login_finish,
    server_login_start,
    server_registration_finish,
    server_registration_start,
)
from phx.errors import ValidationError
from phx.identifiers import Fqdn, UserId
from tests.conftest import SHARED

SETUP = load_server_setup(new_server_setup())
ALICE = UserId.random(Fqdn("example.com"))
PASSWORD = b"hunter2 but longer"


def register(user: UserId = ALICE, password: bytes = PASSWORD) -> bytes:
    reg = client_registration_start(password)
    response = server_registration_start(SETUP, reg.request, user)
    return server_registration_finish(client_registration_finish(password, reg, response))


PASSWORD_FILE = register()


def login(password: bytes, user: UserId = ALICE, password_file: bytes = PASSWORD_FILE) -> tuple[bytes, bytes]:
    """Returns (server state, KE3); KE3 computation raises when the client notices a bad password."""
    c = client_login_start(password)
    ke2, state = server_login_start(SETUP, password_file, c.ke1, user)
    return state, client_login_finish(password, c, ke2)


def test_login_round_trip_agrees_on_a_session_key() -> None:
    c = client_login_start(PASSWORD)
    ke2, state = server_login_start(SETUP, PASSWORD_FILE, c.ke1, ALICE)
    ke3 = client_login_finish(PASSWORD, c, ke2)
    key = server_login_finish(state, ke3)
    assert len(key) == 64


def test_wrong_password_is_noticed_by_the_client() -> None:
    with pytest.raises(OpaqueAuthError):
        login(b"wrong")


def test_password_file_is_bound_to_its_user_id() -> None:
    with pytest.raises(OpaqueAuthError):
        login(PASSWORD, user=UserId.random(Fqdn("example.com")))


def test_ke3_is_bound_to_its_login() -> None:
    state_a, _ = login(PASSWORD)
    _, ke3_b = login(PASSWORD)
    with pytest.raises(OpaqueAuthError):
        server_login_finish(state_a, ke3_b)


def test_malformed_messages_are_validation_errors() -> None:
    with pytest.raises(ValidationError):
        server_registration_start(SETUP, b"\x01", ALICE)
    with pytest.raises(ValidationError):
        server_registration_finish(b"\x01" * 5)
    with pytest.raises(ValidationError):
        server_login_start(SETUP, PASSWORD_FILE, b"\x00", ALICE)
    state, _ = login(PASSWORD)
    with pytest.raises(OpaqueAuthError):
        server_login_finish(state, b"\x00" * 64)
    with pytest.raises(OpaqueAuthError):
        server_login_finish(state, b"\x00" * 3)


def _ristretto_vectors() -> list[dict[str, Any]]:
    vectors = json.loads((SHARED / "refs" / "opaque-test-vectors.json").read_text())
    return [
        v
        for v in vectors
        if v["config"]["Group"] == "ristretto255" and "registration_request" in v["outputs"]
    ]


RISTRETTO = _ristretto_vectors()


def test_the_vectors_are_there() -> None:
    assert len(RISTRETTO) == 2
    assert all(v["config"]["Hash"] == "SHA512" and v["config"]["Name"] == "3DH" for v in RISTRETTO)


@pytest.mark.parametrize("vector", RISTRETTO, ids=["rfc9807-ristretto-1", "rfc9807-ristretto-2"])
def test_server_registration_matches_rfc9807(vector: dict[str, Any]) -> None:
    i, o = vector["inputs"], vector["outputs"]
    h = bytes.fromhex
    # opaque-ke's ServerSetup serialization: oprf_seed || server private key || server public key.
    setup = ok.ServerSetupData.from_bytes(
        h(i["oprf_seed"]) + h(i["server_private_key"]) + h(i["server_public_key"])
    )
    identifier = h(i["credential_identifier"])
    response = ok.server_registration_start(setup, h(o["registration_request"]), identifier).get_message()
    assert bytes(response) == h(o["registration_response"])
    password_file = ok.server_registration_finish(h(o["registration_upload"])).get_password_file()
    assert bytes(password_file) == h(o["registration_upload"])
    # A different credential identifier derives a different OPRF key (the per-user binding).
    other = ok.server_registration_start(setup, h(o["registration_request"]), identifier + b"x").get_message()
    assert bytes(other) != response


@pytest.mark.parametrize("vector", RISTRETTO[:1], ids=["rfc9807-ristretto-1"])
def test_message_sizes_match_the_vectors(vector: dict[str, Any]) -> None:
    outputs = vector["outputs"]
    reg = client_registration_start(PASSWORD)
    assert len(reg.request) == len(bytes.fromhex(outputs["registration_request"]))
    response = server_registration_start(SETUP, reg.request, ALICE)
    assert len(response) == len(bytes.fromhex(outputs["registration_response"]))
    record = client_registration_finish(PASSWORD, reg, response)
    assert len(record) == len(bytes.fromhex(outputs["registration_upload"]))
    c = client_login_start(PASSWORD)
    assert len(c.ke1) == len(bytes.fromhex(outputs["KE1"]))
    ke2, _ = server_login_start(SETUP, PASSWORD_FILE, c.ke1, ALICE)
    assert len(ke2) == len(bytes.fromhex(outputs["KE2"]))
    assert len(client_login_finish(PASSWORD, c, ke2)) == len(bytes.fromhex(outputs["KE3"]))
