"""Secret tree and hash ratchets (RFC 9420 §9): derivation, out-of-order, replay, bounds, deletion."""

from __future__ import annotations

import pytest

from phx.crypto import SUITE_1
from phx.errors import MlsError
from phx.mls.secret_tree import (
    GenerationReused,
    GenerationTooFarAhead,
    GenerationTooOld,
    HashRatchet,
    InvalidSenderLeaf,
    SecretTree,
    sender_data_key_nonce,
)

CS = SUITE_1
ENC = bytes(range(32))


def _by_hand(leaf_path: list[str], label: bytes, generation: int) -> tuple[bytes, bytes]:
    secret = ENC
    for side in leaf_path:
        secret = CS.expand_with_label(secret, b"tree", side.encode(), 32)
    secret = CS.expand_with_label(secret, label, b"", 32)
    for j in range(generation):
        secret = CS.derive_tree_secret(secret, b"secret", j, 32)
    return (
        CS.derive_tree_secret(secret, b"key", generation, CS.aead.nk),
        CS.derive_tree_secret(secret, b"nonce", generation, CS.aead.nn),
    )


def test_matches_hand_derivation() -> None:
    tree = SecretTree(CS, ENC, 4)
    # Leaf 2 of a 4-leaf tree: root 3 -> right child 5 -> left child 4.
    assert tree.key_for(2, False, 3) == _by_hand(["right", "left"], b"application", 3)
    assert tree.key_for(2, True, 0) == _by_hand(["right", "left"], b"handshake", 0)
    assert tree.key_for(1, True, 1) == _by_hand(["left", "right"], b"handshake", 1)


def test_single_leaf_tree_uses_root() -> None:
    assert SecretTree(CS, ENC, 1).key_for(0, False, 0) == _by_hand([], b"application", 0)


def test_sender_and_receiver_agree() -> None:
    sender = SecretTree(CS, ENC, 8)
    receiver = SecretTree(CS, ENC, 8)
    for expected_gen in range(5):
        gen, key, nonce = sender.next_key(5, False)
        assert gen == expected_gen
        assert receiver.key_for(5, False, gen) == (key, nonce)
        receiver.consume(5, False, gen)
    assert sender.next_key(5, True)[0] == 0  # independent handshake ratchet


def test_out_of_order_within_window() -> None:
    tree = SecretTree(CS, ENC, 2)
    ref = SecretTree(CS, ENC, 2)
    expected = {g: ref.key_for(1, False, g) for g in range(6)}
    for g in (5, 2, 0, 4, 1, 3):
        assert tree.ratchet(1, False).take(g) == expected[g]


def test_replay_is_rejected() -> None:
    tree = SecretTree(CS, ENC, 2)
    tree.ratchet(0, False).take(3)
    with pytest.raises(GenerationReused, match="replay"):
        tree.key_for(0, False, 3)
    tree.ratchet(0, False).take(1)
    with pytest.raises(GenerationReused):
        tree.key_for(0, False, 1)


def test_key_kept_until_consumed() -> None:
    # A forged message that fails to decrypt must not burn the genuine message's key.
    tree = SecretTree(CS, ENC, 2)
    first = tree.key_for(0, True, 2)
    assert tree.key_for(0, True, 2) == first
    tree.consume(0, True, 2)
    with pytest.raises(GenerationReused):
        tree.key_for(0, True, 2)


def test_too_far_ahead() -> None:
    tree = SecretTree(CS, ENC, 2, max_forward=10)
    tree.key_for(0, False, 10)  # exactly the limit from generation 0
    with pytest.raises(GenerationTooFarAhead):
        tree.key_for(0, False, 22)
    tree.key_for(0, False, 21)  # ratchet now at 11: 21 is within reach
    with pytest.raises(GenerationTooFarAhead):
        tree.key_for(0, False, 2**32)


def test_too_old_after_eviction() -> None:
    tree = SecretTree(CS, ENC, 2, max_skipped=3)
    r = tree.ratchet(1, False)
    r.take(9)  # at most 3 keys retained (the taken one included): 7 and 8 remain
    with pytest.raises(GenerationTooOld, match="too old"):
        r.key_for(6)
    with pytest.raises(GenerationTooOld):
        r.key_for(0)
    r.take(7)
    with pytest.raises(GenerationReused):
        r.key_for(7)
    with pytest.raises(GenerationReused):
        r.key_for(9)
    assert len(r.key_for(8)) == 2


def test_sender_ratchet_rejects_past_generations() -> None:
    r = HashRatchet(CS, ENC)
    r.next_key()
    r.next_key()
    with pytest.raises(GenerationTooOld):
        r.key_for(0)
    assert r.next_generation == 2


def test_leaf_out_of_range() -> None:
    tree = SecretTree(CS, ENC, 4)
    with pytest.raises(InvalidSenderLeaf):
        tree.key_for(4, False, 0)
    with pytest.raises(MlsError):
        tree.next_key(-1, False)


def test_size_must_be_power_of_two() -> None:
    with pytest.raises(ValueError):
        SecretTree(CS, ENC, 3)


def test_node_secrets_deleted_on_use() -> None:
    tree = SecretTree(CS, ENC, 4)
    tree.key_for(0, False, 0)
    # Root (3) and node 1 consumed; only the copath (2, 5) remains, the leaf became ratchets.
    assert sorted(tree._nodes) == [2, 5]
    tree.key_for(3, False, 0)
    assert sorted(tree._nodes) == [2, 4]
    tree.key_for(2, False, 0)
    tree.key_for(1, False, 0)
    assert tree._nodes == {}
    assert ENC not in tree._nodes.values()


def test_sender_data_key_nonce_uses_sample() -> None:
    secret = bytes(32)
    long_ct = bytes(range(64))
    assert sender_data_key_nonce(CS, secret, long_ct) == sender_data_key_nonce(CS, secret, long_ct[:32])
    assert sender_data_key_nonce(CS, secret, long_ct) != sender_data_key_nonce(CS, secret, long_ct[:31])
    key, nonce = sender_data_key_nonce(CS, secret, b"short")
    assert key == CS.expand_with_label(secret, b"key", b"short", CS.aead.nk)
    assert nonce == CS.expand_with_label(secret, b"nonce", b"short", CS.aead.nn)
