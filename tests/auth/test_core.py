"""The AS's pure rules and wire structs, without a database."""

from __future__ import annotations

import inspect

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phx.auth import messages
from phx.auth.core import (
    OPERATIONS,
    AuthMode,
    StoredPackage,
    check_timestamp,
    choose_package,
    frame_end,
    tokens_after_charge,
)
from phx.auth.messages import Alias, AsRequest
from phx.auth.service import AsService
from phx.codec import Struct
from phx.errors import DecodeError, ExpiredError, RateLimited, ValidationError

DAY = 86_400


def test_every_operation_has_a_handler_and_the_exemptions_are_the_documented_ones() -> None:
    for name in OPERATIONS:
        assert callable(getattr(AsService, f"_op_{name}"))
    handlers = {n[4:] for n, _ in inspect.getmembers(AsService) if n.startswith("_op_")}
    assert handlers == set(OPERATIONS)
    exempt = {name for name, op in OPERATIONS.items() if not op.token}
    assert exempt == {
        "init_user_registration",  # the book: exempt
        "request_tokens",  # the book: exempt
        "finish_user_registration",
        "init_client_addition",
        "finish_client_addition",
        "get_as_credentials",
        "get_token_keys",
    }
    assert OPERATIONS["delete_user"].auth is AuthMode.CLIENT_2FA
    assert OPERATIONS["enqueue_message"].auth is AuthMode.NONE
    assert OPERATIONS["delete_alias"].auth is AuthMode.ALIAS


def test_check_timestamp_window() -> None:
    check_timestamp(1000, 1000, max_age=60, max_skew=10)
    check_timestamp(940, 1000, max_age=60, max_skew=10)
    check_timestamp(1010, 1000, max_age=60, max_skew=10)
    with pytest.raises(ExpiredError):
        check_timestamp(939, 1000, max_age=60, max_skew=10)
    with pytest.raises(ExpiredError):
        check_timestamp(1011, 1000, max_age=60, max_skew=10)


def test_choose_package() -> None:
    assert choose_package([], 0) is None
    a1, a2, b1 = StoredPackage(1, "a", 100), StoredPackage(2, "a", 100), StoredPackage(3, "b", 100)
    assert choose_package([a1, a2, b1], 50) == (a1, True)
    assert choose_package([b1, a2], 50) in ((a2, False), (b1, False))
    assert choose_package([b1], 50) == (b1, False)
    assert choose_package([b1], 101) is None
    # An expired package does not count as a spare.
    old = StoredPackage(0, "b", 10)
    assert choose_package([old, b1], 50) == (b1, False)


def test_tokens_after_charge() -> None:
    def charge(issued: int, epoch: int | None, requested: int) -> int:
        return tokens_after_charge(
            issued, epoch, epoch=5, requested=requested, allowance=10, now=5 * DAY + 100, frame=DAY
        )

    assert charge(0, None, 4) == 4
    assert charge(4, 5, 6) == 10
    assert charge(10, 4, 10) == 10  # a new frame starts from zero
    with pytest.raises(RateLimited, match="0 of 10 left") as info:
        charge(10, 5, 1)
    assert info.value.retry_after == DAY - 100
    assert frame_end(5 * DAY, DAY) == 6 * DAY


@pytest.mark.parametrize("bad", ["", "a\nb", "x" * 257, "e\u0301"])
def test_alias_rules(bad: str) -> None:
    with pytest.raises(ValidationError):
        Alias(bad)
    encoded = bytes([len(bad.encode())]) + bad.encode() if len(bad.encode()) < 64 else None
    if encoded is not None:
        with pytest.raises(DecodeError):
            Alias.decode(encoded)


def test_alias_accepts_unicode_in_nfc() -> None:
    assert Alias.decode(Alias("Zoë ☕").encode()) == Alias("Zoë ☕")


STRUCTS = [
    cls
    for _, cls in inspect.getmembers(messages, inspect.isclass)
    if issubclass(cls, Struct) and cls.__module__ == messages.__name__
]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.sampled_from(STRUCTS))
def test_decoding_raises_only_decode_error(data: bytes, cls: type[Struct]) -> None:
    try:
        cls.decode(data)
    except DecodeError:
        pass


def test_request_envelope_round_trip() -> None:
    request = AsRequest(b"params", None, messages.AliasAuth(7, b"sig"), b"t" * 162)
    assert AsRequest.decode(request.encode()) == request
