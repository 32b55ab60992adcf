"""HPKE base mode against the RFC 9180 test vectors, and cross-checked with the independent pyhpke."""

from __future__ import annotations

import re

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from phx.crypto.hpke import AES_128_GCM, CHACHA20_POLY1305, DHKEM_X25519, HKDF_SHA256, Hpke, HpkeError
from tests.conftest import SHARED

RFC = SHARED / "refs" / "rfc9180-hpke.md"


def _section(title: str) -> dict[str, object]:
    """Parse the Base Setup block of one RFC 9180 test-vector section into hex fields."""
    text = RFC.read_text()
    start = text.index(f"## {title}")
    base = text[start : text.index("### PSK Setup Information", start)]
    setup, enc_part = base.split("#### Encryptions")
    enc_part, exp_part = enc_part.split("#### Exported Values")

    def fields(block: str) -> dict[str, str]:
        out: dict[str, str] = {}
        key = None
        for line in block.splitlines():
            m = re.match(r"^([a-zA-Z_ ]+):\s*(\S*)$", line)
            if m:
                key = m.group(1).strip()
                out[key] = m.group(2)
            elif key and re.fullmatch(r"[0-9a-f]+", line.strip()):
                out[key] += line.strip()
        return out

    encryptions = [fields(b) for b in enc_part.split("sequence number")[1:]]
    for e, b in zip(encryptions, enc_part.split("sequence number")[1:], strict=True):
        e["seq"] = b.split("\n", 1)[0].strip(": ")
    exports = [fields(b) for b in exp_part.split("exporter_context")[1:]]
    for x, b in zip(exports, exp_part.split("exporter_context")[1:], strict=True):
        x["exporter_context"] = b.split("\n", 1)[0].strip(": ")
    return {"setup": fields(setup), "encryptions": encryptions, "exports": exports}


CASES = [
    ("DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-128-GCM", AES_128_GCM),
    ("DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20Poly1305", CHACHA20_POLY1305),
]


@pytest.mark.parametrize(("title", "aead"), CASES)
def test_rfc9180_base_vectors(title: str, aead: object) -> None:
    vec = _section(title)
    s = vec["setup"]
    assert isinstance(s, dict)
    h = bytes.fromhex
    hpke = Hpke(DHKEM_X25519, HKDF_SHA256, aead)  # type: ignore[arg-type]
    sk_e, pk_e = hpke.derive_key_pair(h(s["ikmE"]))
    sk_r, pk_r = hpke.derive_key_pair(h(s["ikmR"]))
    assert (sk_e, pk_e) == (h(s["skEm"]), h(s["pkEm"]))
    assert (sk_r, pk_r) == (h(s["skRm"]), h(s["pkRm"]))
    enc, sender = hpke.setup_base_s(pk_r, h(s["info"]), eph_sk=sk_e)
    assert enc == h(s["enc"])
    assert sender.key == h(s["key"])
    assert sender.base_nonce == h(s["base_nonce"])
    assert sender.exporter_secret == h(s["exporter_secret"])
    receiver = hpke.setup_base_r(enc, sk_r, h(s["info"]))
    encryptions = vec["encryptions"]
    assert isinstance(encryptions, list) and len(encryptions) == 6
    for e in encryptions:
        sender.seq = receiver.seq = int(e["seq"])
        assert sender.seal(h(e["aad"]), h(e["pt"])) == h(e["ct"])
        assert receiver.open(h(e["aad"]), h(e["ct"])) == h(e["pt"])
    exports = vec["exports"]
    assert isinstance(exports, list) and len(exports) == 3
    for x in exports:
        assert receiver.export(h(x["exporter_context"]), int(x["L"])) == h(x["exported_value"])


HPKE = Hpke(DHKEM_X25519, HKDF_SHA256, AES_128_GCM)


@settings(max_examples=25, deadline=None)
@given(info=st.binary(max_size=64), aad=st.binary(max_size=64), pt=st.binary(max_size=256))
def test_interoperates_with_pyhpke(info: bytes, aad: bytes, pt: bytes) -> None:
    from pyhpke import AEADId, CipherSuite, KDFId, KEMId, KEMKey

    other = CipherSuite.new(KEMId.DHKEM_X25519_HKDF_SHA256, KDFId.HKDF_SHA256, AEADId.AES128_GCM)
    sk, pk = HPKE.generate_key_pair()
    enc, ct = HPKE.seal(pk, info, aad, pt)
    rkey = KEMKey.from_pyca_cryptography_key(X25519PrivateKey.from_private_bytes(sk))
    ctx = other.create_recipient_context(enc, rkey, info)
    assert ctx.open(ct, aad) == pt
    assert ctx.export(b"ctx", 32) == HPKE.setup_base_r(enc, sk, info).export(b"ctx", 32)
    # And the other direction: pyhpke seals, we open.
    enc2, sctx = other.create_sender_context(
        KEMKey.from_pyca_cryptography_key(X25519PublicKey.from_public_bytes(pk)), info
    )
    ct2 = sctx.seal(pt, aad)
    assert HPKE.open(enc2, sk, info, aad, ct2) == pt


def test_open_rejects_tampering() -> None:
    sk, pk = HPKE.generate_key_pair()
    enc, ct = HPKE.seal(pk, b"info", b"aad", b"secret")
    with pytest.raises(HpkeError):
        HPKE.open(enc, sk, b"info", b"aad", ct[:-1] + bytes([ct[-1] ^ 1]))
    with pytest.raises(HpkeError):
        HPKE.open(enc, sk, b"other info", b"aad", ct)
    with pytest.raises(HpkeError):
        HPKE.open(enc[:5], sk, b"info", b"aad", ct)
    other_sk, _ = HPKE.generate_key_pair()
    with pytest.raises(HpkeError):
        HPKE.open(enc, other_sk, b"info", b"aad", ct)


def test_low_order_point_is_refused() -> None:
    sk, _ = HPKE.generate_key_pair()
    with pytest.raises(HpkeError):
        HPKE.open(bytes(32), sk, b"", b"", b"x" * 16)


@pytest.mark.parametrize(("title", "aead"), CASES)
def test_sealer_matches_rfc9180_first_encryption(title: str, aead: object) -> None:
    vec = _section(title)
    s, first = vec["setup"], vec["encryptions"][0]  # type: ignore[index]
    assert isinstance(s, dict) and isinstance(first, dict) and first["seq"] == "0"
    h = bytes.fromhex
    hpke = Hpke(DHKEM_X25519, HKDF_SHA256, aead)  # type: ignore[arg-type]
    sealer = hpke.sealer(h(s["info"]))
    for _ in range(2):  # the shared info part is reused, not consumed
        enc, ct = sealer.seal(h(s["pkRm"]), h(first["aad"]), h(first["pt"]), eph_sk=h(s["skEm"]))
        assert (enc, ct) == (h(s["enc"]), h(first["ct"]))


def test_sealer_output_opens_with_ordinary_open_and_pyhpke() -> None:
    from pyhpke import AEADId, CipherSuite, KDFId, KEMId, KEMKey

    other = CipherSuite.new(KEMId.DHKEM_X25519_HKDF_SHA256, KDFId.HKDF_SHA256, AEADId.AES128_GCM)
    info = b"i" * 5000
    sealer = HPKE.sealer(info)
    keys = [HPKE.generate_key_pair() for _ in range(3)]
    sealed = [sealer.seal(pk, b"aad", b"secret %d" % i) for i, (_, pk) in enumerate(keys)]
    assert len({enc for enc, _ in sealed}) == 3  # a fresh ephemeral key per recipient
    for i, ((sk, _), (enc, ct)) in enumerate(zip(keys, sealed, strict=True)):
        assert HPKE.open(enc, sk, info, b"aad", ct) == b"secret %d" % i
        rkey = KEMKey.from_pyca_cryptography_key(X25519PrivateKey.from_private_bytes(sk))
        assert other.create_recipient_context(enc, rkey, info).open(ct, b"aad") == b"secret %d" % i
    with pytest.raises(HpkeError):
        HPKE.open(sealed[0][0], keys[0][0], info + b"x", b"aad", sealed[0][1])


def test_x25519_agrees_with_openssl_and_refuses_bad_keys() -> None:
    for _ in range(5):
        sk, pk = HPKE.generate_key_pair()
        ours = X25519PrivateKey.from_private_bytes(sk)
        assert pk == ours.public_key().public_bytes_raw()
        other_sk, other_pk = HPKE.generate_key_pair()
        assert DHKEM_X25519._dh(sk, other_pk) == ours.exchange(X25519PublicKey.from_public_bytes(other_pk))
    with pytest.raises(HpkeError):
        DHKEM_X25519.public_key(b"short")
    with pytest.raises(HpkeError):
        HPKE.seal(b"\x01" + bytes(31), b"", b"", b"x")  # u = 1 has order 1: all-zero shared secret
    with pytest.raises(HpkeError):
        HPKE.seal(pk[:31], b"", b"", b"x")


@pytest.mark.parametrize("length", [0, 1, 16, 31, 32, 33, 64, 65, 100, 255 * 32])
def test_hkdf_expand_matches_cryptography(length: int) -> None:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

    prk, info = bytes(range(32)), b"context info"
    expected = HKDFExpand(hashes.SHA256(), length, info).derive(prk) if length else b""
    assert HKDF_SHA256.expand(prk, info, length) == expected
    with pytest.raises(ValueError):
        HKDF_SHA256.expand(prk, info, 255 * 32 + 1)
