"""Queue encryption: server side against the client-side QueueReader, FS and PCS properties."""

from __future__ import annotations

import hmac
import itertools
from dataclasses import replace

import pytest

from phx.crypto import SUITE_1, CipherSuite
from phx.crypto.hpke import AES_256_GCM, CHACHA20_POLY1305, HKDF_SHA256, HKDF_SHA512
from phx.queues import (
    QueueDecryptionError,
    QueueGapError,
    QueueItemType,
    QueueMessage,
    QueueReader,
    QueueState,
    enqueue,
    new_queue,
    rotate,
)
from phx.queues.ratchet import _expand, _hmac_pair, _message_keys, chainer, stepper

cs = SUITE_1
DAY = 86400


def owner() -> tuple[bytes, bytes]:
    return cs.generate_hpke_key_pair()


def test_server_sampled_initial_key_round_trip() -> None:
    sk, pk = owner()
    state, items = new_queue(cs, pk, 1000)
    assert [i.item_type for i in items] == [QueueItemType.INITIAL_KEY]
    assert items[0].sequence_number == 0 and state.next_sequence == 1
    state, more = enqueue(cs, state, [b"one", b"two", b"three"], 1001, rotation_interval=DAY)
    assert [m.sequence_number for m in more] == [1, 2, 3]
    reader = QueueReader(cs, [sk])
    assert reader.read_all([*items, *more]) == [b"one", b"two", b"three"]
    assert reader.next_sequence == state.next_sequence == 4


def test_client_supplied_initial_key_has_no_initial_item() -> None:
    sk, pk = owner()
    rk = cs.random(cs.nh)
    state, items = new_queue(cs, pk, 0, ratchet_key=rk)
    assert items == [] and state.next_sequence == 0
    state, msgs = enqueue(cs, state, [b"hello"], 1)
    reader = QueueReader(cs, [sk], ratchet_key=rk)
    assert reader.read_all(msgs) == [b"hello"]
    with pytest.raises(Exception, match="initial ratchet key"):
        new_queue(cs, pk, 0, ratchet_key=b"short")


def test_ciphertexts_differ_and_keys_are_deleted() -> None:
    sk, pk = owner()
    state, _ = new_queue(cs, pk, 0)
    s1, m1 = enqueue(cs, state, [b"same"], 1)
    s2, m2 = enqueue(cs, s1, [b"same"], 1)
    assert m1[0].ciphertext != m2[0].ciphertext
    assert len({state.ratchet_key, s1.ratchet_key, s2.ratchet_key}) == 3


def test_forward_secrecy_current_key_cannot_read_earlier_messages() -> None:
    sk, pk = owner()
    state, init = new_queue(cs, pk, 0)
    state, early = enqueue(cs, state, [b"secret early"], 1)
    # An attacker now steals the server's whole state (current ratchet key included).
    stolen = state
    attacker = QueueReader(
        cs, [owner()[0]], ratchet_key=stolen.ratchet_key, next_sequence=early[0].sequence_number
    )
    with pytest.raises(QueueDecryptionError):
        attacker.read(early[0])
    # ...but it can read what comes next until a key update: that is what PCS below addresses.
    state, later = enqueue(cs, state, [b"later"], 2)
    attacker.next_sequence = later[0].sequence_number
    assert attacker.read(later[0]) == b"later"


def test_post_compromise_security_after_key_update() -> None:
    sk, pk = owner()
    state, init = new_queue(cs, pk, 0)
    state, before = enqueue(cs, state, [b"before"], 10, rotation_interval=DAY)
    compromised = state  # the attacker has the ratchet key from before the update
    state, after = enqueue(cs, state, [b"after 1", b"after 2"], 10 + DAY, rotation_interval=DAY)
    assert [i.item_type for i in after] == [
        QueueItemType.KEY_UPDATE,
        QueueItemType.MESSAGE,
        QueueItemType.MESSAGE,
    ]
    assert state.last_rotation == 10 + DAY

    # The owner follows the update.
    reader = QueueReader(cs, [sk])
    assert reader.read_all([*init, *before, *after]) == [b"before", b"after 1", b"after 2"]

    # An attacker with the pre-update ratchet state but not the owner's HPKE key cannot follow it.
    attacker = QueueReader(
        cs, [owner()[0]], ratchet_key=compromised.ratchet_key, next_sequence=compromised.next_sequence
    )
    with pytest.raises(QueueDecryptionError):
        attacker.read(after[0])
    # Skipping the update item and deriving on from the old key fails too.
    rk = compromised.ratchet_key
    key, nonce, _ = _message_keys(cs, rk, after[1].sequence_number)
    with pytest.raises(Exception, match="AEAD"):
        cs.open(key, nonce, after[1].sequence_number.to_bytes(8, "big") + b"\x03", after[1].ciphertext)


def test_rotation_only_when_due() -> None:
    sk, pk = owner()
    state, _ = new_queue(cs, pk, 100)
    s, items = enqueue(cs, state, [b"x"], 100 + DAY - 1, rotation_interval=DAY)
    assert [i.item_type for i in items] == [QueueItemType.MESSAGE]
    s, items = enqueue(cs, s, [b"y"], 100 + DAY, rotation_interval=DAY)
    assert [i.item_type for i in items] == [QueueItemType.KEY_UPDATE, QueueItemType.MESSAGE]
    s, items = enqueue(cs, s, [b"z"], 100 + DAY + 5, rotation_interval=DAY)
    assert [i.item_type for i in items] == [QueueItemType.MESSAGE]


def test_new_queue_encryption_key_and_old_key_retained_by_reader() -> None:
    sk1, pk1 = owner()
    sk2, pk2 = owner()
    state, init = new_queue(cs, pk1, 0)
    state, update = rotate(cs, replace(state, encryption_key=pk2), 5)
    state, msgs = enqueue(cs, state, [b"m"], 6)
    only_old = QueueReader(cs, [sk1])
    only_old.read(init[0])
    with pytest.raises(QueueDecryptionError):
        only_old.read(update)
    reader = QueueReader(cs, [sk1])
    reader.add_decryption_key(sk2)
    assert reader.read_all([*init, update, *msgs]) == [b"m"]


def test_reader_skips_repeats_and_refuses_gaps_without_changing_state() -> None:
    sk, pk = owner()
    state, init = new_queue(cs, pk, 0)
    state, msgs = enqueue(cs, state, [b"a", b"b", b"c"], 1)
    reader = QueueReader(cs, [sk])
    assert reader.read_all([*init, msgs[0]]) == [b"a"]
    assert reader.read(msgs[0]) is None  # repeated dequeue
    snapshot = reader.to_bytes()
    with pytest.raises(QueueGapError):
        reader.read(msgs[2])
    assert reader.to_bytes() == snapshot
    assert reader.read_all(msgs) == [b"b", b"c"]


def test_tampering_is_detected_and_state_unchanged() -> None:
    sk, pk = owner()
    state, init = new_queue(cs, pk, 0)
    state, msgs = enqueue(cs, state, [b"payload"], 1)
    reader = QueueReader(cs, [sk])
    reader.read_all(init)
    before = reader.to_bytes()
    bad = replace(msgs[0], ciphertext=bytes([msgs[0].ciphertext[0] ^ 1]) + msgs[0].ciphertext[1:])
    with pytest.raises(QueueDecryptionError):
        reader.read(bad)
    wrong_type = replace(msgs[0], item_type=QueueItemType.KEY_UPDATE)
    with pytest.raises(QueueDecryptionError):
        reader.read(wrong_type)
    assert reader.to_bytes() == before
    assert reader.read(msgs[0]) == b"payload"


def test_message_before_initial_key_is_refused() -> None:
    sk, pk = owner()
    state, init = new_queue(cs, pk, 0)
    state, msgs = enqueue(cs, state, [b"x"], 1)
    reader = QueueReader(cs, [sk], next_sequence=1)
    with pytest.raises(QueueDecryptionError, match="before the initial"):
        reader.read(msgs[0])


def test_reader_persistence_round_trip() -> None:
    sk, pk = owner()
    state, init = new_queue(cs, pk, 0)
    reader = QueueReader(cs, [sk])
    reader.read_all(init)
    restored = QueueReader.from_bytes(reader.to_bytes(), cs)
    assert (restored.ratchet_key, restored.next_sequence, restored.decryption_keys) == (
        reader.ratchet_key,
        reader.next_sequence,
        reader.decryption_keys,
    )
    state, msgs = enqueue(cs, state, [b"after restore"], 1)
    assert restored.read_all(msgs) == [b"after restore"]
    with pytest.raises(Exception, match="format|decode|trailing|truncated"):
        QueueReader.from_bytes(b"\x02" + reader.to_bytes()[1:], cs)
    assert state.ratchet_key.hex() not in repr(state) and "ratchet" not in repr(reader).replace("keyed", "")


def test_unusable_queue_encryption_key() -> None:
    with pytest.raises(Exception, match="unusable queue encryption key"):
        new_queue(cs, bytes(32), 0)  # all-zero X25519 point: low order


def test_long_interleaving_matches() -> None:
    sk, pk = owner()
    state, items = new_queue(cs, pk, 0)
    all_items: list[QueueMessage] = list(items)
    expected: list[bytes] = []
    for t, n in zip(range(0, 10 * DAY, DAY // 2), itertools.cycle([1, 3, 0, 2]), strict=False):
        payloads = [f"{t}-{i}".encode() for i in range(n)]
        state, new = enqueue(cs, state, payloads, t, rotation_interval=DAY)
        all_items += new
        expected += payloads
    assert [i.sequence_number for i in all_items] == list(range(len(all_items)))
    assert QueueReader(cs, [sk]).read_all(all_items) == expected
    assert isinstance(state, QueueState)


# --- the fast ratchet step -----------------------------------------------------------------------------


def _suites() -> list[CipherSuite]:
    """SUITE_1 plus suites built from the other primitives, so every branch of the fast step runs."""
    return [
        cs,
        CipherSuite(0xFF01, "sha512-aes256", HKDF_SHA512, AES_256_GCM, cs.hpke),
        CipherSuite(0xFF02, "sha256-chacha", HKDF_SHA256, CHACHA20_POLY1305, cs.hpke),
    ]


@pytest.mark.parametrize("suite", _suites(), ids=lambda s: s.name)
def test_stepper_matches_the_labelled_derivations(suite: CipherSuite) -> None:
    step = stepper(suite)
    rk = bytes(range(suite.nh))
    for seq in (0, 1, 255, 1 << 40):
        # The derivations as decisions.md states them, through the generic ExpandWithLabel.
        nk, nn = suite.aead.nk, suite.aead.nn
        okm = _expand(suite, rk, b"queue message key and nonce", seq.to_bytes(8, "big"), nk + nn)
        nxt = _expand(suite, rk, b"queue next ratchet key", b"", suite.nh)
        aad = seq.to_bytes(8, "big") + bytes((QueueItemType.MESSAGE,))
        ct, got_next = step(rk, seq, b"payload %d" % seq)
        assert got_next == nxt
        assert suite.open(okm[:nk], okm[nk:], aad, ct) == b"payload %d" % seq
        assert (ct, got_next) == _generic_step(suite, rk, seq, b"payload %d" % seq)
        rk = got_next


def _generic_step(suite: CipherSuite, rk: bytes, seq: int, payload: bytes) -> tuple[bytes, bytes]:
    key, nonce, nxt = _message_keys(suite, rk, seq)
    return suite.seal(key, nonce, seq.to_bytes(8, "big") + b"\x03", payload), nxt


@pytest.mark.parametrize("name", ["sha256", "sha512"])
@pytest.mark.parametrize("key_length", [0, 1, 32, 64, 65, 128, 129, 300])
def test_hmac_pair_is_hmac(name: str, key_length: int) -> None:
    pair = _hmac_pair(name)
    assert pair is not None
    key = bytes((i * 7) & 0xFF for i in range(key_length))
    assert pair(key, b"first", b"") == (
        hmac.digest(key, b"first", name),
        hmac.digest(key, b"", name),
    )
    assert _hmac_pair("md5") is None


def test_enqueue_uses_the_same_ratchet_as_the_reader_for_every_suite() -> None:
    for suite in _suites():
        rk = bytes(suite.nh)
        state, _ = new_queue(suite, b"", 0, ratchet_key=rk)
        state, items = enqueue(suite, state, [b"a", b"b"], 1)
        reader = QueueReader(suite, [b"unused"], ratchet_key=rk)
        assert reader.read_all(items) == [b"a", b"b"]


@pytest.mark.parametrize("suite", _suites(), ids=lambda s: s.name)
def test_chainer_is_the_step_repeated(suite: CipherSuite) -> None:
    chain, step = chainer(suite), stepper(suite)
    rk = bytes(range(1, suite.nh + 1))
    payloads = [b"", b"one", b"x" * 1000]
    cts, last = chain(rk, 7, payloads)
    expected = []
    key = rk
    for i, p in enumerate(payloads):
        ct, key = step(key, 7 + i, p)
        expected.append(ct)
    assert (cts, last) == (expected, key)
    assert chain(rk, 7, []) == ([], rk)
    with pytest.raises(ValueError):
        chain(rk[:-1], 0, [b"p"])
