"""Key schedule (RFC 9420 §8): structure of the derivation, tags, exporter, external init."""

from __future__ import annotations

import pytest

from phx.crypto import SUITE_1
from phx.errors import MlsError
from phx.mls.key_schedule import (
    ConfirmationTagMismatch,
    MembershipTagMismatch,
    derive_epoch_secrets,
    epoch_secrets_from_joiner,
    external_init_receive,
    external_init_send,
    joiner_secret,
    welcome_key_nonce,
    welcome_secret,
)

CS = SUITE_1
INIT = bytes(range(32))
COMMIT = bytes(range(32, 64))
GC = b"group context bytes"


def test_derivation_follows_the_rfc_diagram() -> None:
    s = derive_epoch_secrets(CS, INIT, COMMIT, GC)
    joiner = CS.expand_with_label(CS.extract(INIT, COMMIT), b"joiner", GC, CS.nh)
    assert s.joiner_secret == joiner
    member = CS.extract(joiner, bytes(CS.nh))
    assert s.welcome_secret == CS.derive_secret(member, b"welcome")
    epoch = CS.expand_with_label(member, b"epoch", GC, CS.nh)
    assert s.epoch_secret == epoch
    assert s.sender_data_secret == CS.derive_secret(epoch, b"sender data")
    assert s.epoch_authenticator == CS.derive_secret(epoch, b"authentication")
    assert s.init_secret == CS.derive_secret(epoch, b"init")


def test_all_epoch_secrets_are_distinct() -> None:
    s = derive_epoch_secrets(CS, INIT, COMMIT, GC)
    values = [
        s.joiner_secret,
        s.welcome_secret,
        s.epoch_secret,
        s.sender_data_secret,
        s.encryption_secret,
        s.exporter_secret,
        s.external_secret,
        s.confirmation_key,
        s.membership_key,
        s.resumption_psk,
        s.epoch_authenticator,
        s.init_secret,
    ]
    assert len(set(values)) == len(values)
    assert all(len(v) == CS.nh for v in values)


def test_joiner_view_equals_member_view() -> None:
    psk = bytes([7]) * 32
    member = derive_epoch_secrets(CS, INIT, COMMIT, GC, psk)
    joiner = epoch_secrets_from_joiner(CS, joiner_secret(CS, INIT, COMMIT, GC), GC, psk)
    assert member == joiner
    assert welcome_secret(CS, member.joiner_secret, psk) == member.welcome_secret


def test_none_commit_and_psk_mean_zero_vectors() -> None:
    a = derive_epoch_secrets(CS, INIT, None, GC, None)
    b = derive_epoch_secrets(CS, INIT, bytes(32), GC, bytes(32))
    assert a == b


def test_inputs_change_every_secret() -> None:
    base = derive_epoch_secrets(CS, INIT, COMMIT, GC)
    for other in (
        derive_epoch_secrets(CS, INIT, COMMIT, GC + b"!"),
        derive_epoch_secrets(CS, INIT, bytes(32), GC),
        derive_epoch_secrets(CS, INIT, COMMIT, GC, bytes([1]) * 32),
        derive_epoch_secrets(CS, bytes(32), COMMIT, GC),
    ):
        assert other.encryption_secret != base.encryption_secret
        assert other.init_secret != base.init_secret


def test_repr_hides_secrets() -> None:
    s = derive_epoch_secrets(CS, INIT, COMMIT, GC)
    assert s.init_secret.hex() not in repr(s)


def test_exporter() -> None:
    s = derive_epoch_secrets(CS, INIT, COMMIT, GC)
    out = s.export(b"label", b"ctx", 40)
    assert len(out) == 40
    inner = CS.derive_secret(s.exporter_secret, b"label")
    assert out == CS.expand_with_label(inner, b"exported", CS.hash(b"ctx"), 40)
    assert s.export(b"label", b"ctx2", 40) != out
    assert s.export(b"label2", b"ctx", 40) != out


def test_confirmation_tag() -> None:
    s = derive_epoch_secrets(CS, INIT, COMMIT, GC)
    tag = s.confirmation_tag(b"cth")
    assert tag == CS.mac(s.confirmation_key, b"cth")
    s.verify_confirmation_tag(b"cth", tag)
    with pytest.raises(ConfirmationTagMismatch):
        s.verify_confirmation_tag(b"cth2", tag)
    with pytest.raises(MlsError):
        s.verify_confirmation_tag(b"cth", tag[:-1] + bytes([tag[-1] ^ 1]))


def test_membership_tag() -> None:
    s = derive_epoch_secrets(CS, INIT, COMMIT, GC)
    tag = s.membership_tag(b"tbm")
    s.verify_membership_tag(b"tbm", tag)
    with pytest.raises(MembershipTagMismatch):
        s.verify_membership_tag(b"tbm!", tag)


def test_welcome_key_nonce_sizes() -> None:
    key, nonce = welcome_key_nonce(CS, bytes(32))
    assert (len(key), len(nonce)) == (CS.aead.nk, CS.aead.nn)


def test_external_init_round_trip() -> None:
    s = derive_epoch_secrets(CS, INIT, COMMIT, GC)
    priv, pub = s.external_key_pair()
    assert pub == s.external_pub() == CS.hpke_public_key(priv)
    kem_output, init = external_init_send(CS, pub)
    assert len(init) == CS.nh
    assert external_init_receive(CS, priv, kem_output) == init
    other_priv, _ = CS.generate_hpke_key_pair()
    assert external_init_receive(CS, other_priv, kem_output) != init


def test_external_init_rejects_malformed_kem_output() -> None:
    priv, _ = derive_epoch_secrets(CS, INIT, COMMIT, GC).external_key_pair()
    with pytest.raises(MlsError):
        external_init_receive(CS, priv, b"\x01\x02")
