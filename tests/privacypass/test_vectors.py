"""The ``voprf`` wheel and our token structs against RFC 9497 and the batched-tokens draft vectors.

Three layers, each able to fail on its own:

1. the test-only reference (tests/privacypass/ristretto_ref.py) reproduces every RFC 9497 VOPRF
   ristretto255-SHA512 value (key, blinded and evaluated elements, outputs, proofs);
2. ``voprf`` reproduces DeriveKeyPair, BlindEvaluate and Evaluate, and its batch proofs verify under the
   reference, which pins the (c, s) proof layout that our wire response relies on;
3. the draft's type-0x0005 vectors decode into our structs byte for byte, and the reference recomputes
   their blinded messages from our ``token_input`` / key id, their evaluations, proofs and authenticators.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from voprf import ristretto

from phx.privacypass import (
    AmortizedBatchTokenRequest,
    AmortizedBatchTokenResponse,
    IssuerKey,
    Token,
    TokenChallenge,
    TokenClass,
    token_key_id,
)
from phx.privacypass.issuer import KEY_INFO, KEY_INFO_FEDERATED
from phx.privacypass.tokens import TOKEN_TYPE, token_input
from tests.conftest import SHARED
from tests.privacypass import ristretto_ref as ref

OPRF_VECTORS = SHARED / "refs" / "oprf-test-vectors.json"
BATCHED_DRAFT = SHARED / "refs" / "privacypass-batched-tokens.md"


def _voprf_suite() -> dict[str, Any]:
    suites = json.loads(OPRF_VECTORS.read_text())
    (suite,) = [s for s in suites if s["identifier"] == "ristretto255-SHA512" and s["mode"] == 1]
    return dict(suite)


def _split(value: str) -> list[bytes]:
    return [bytes.fromhex(x) for x in value.split(",")]


def _le(data: bytes) -> int:
    return int.from_bytes(data, "little")


# --- 1. the reference reproduces RFC 9497 ------------------------------------------------------------


def test_reference_reproduces_rfc9497() -> None:
    suite = _voprf_suite()
    sk = ref.Voprf.derive_key_pair(bytes.fromhex(suite["seed"]), bytes.fromhex(suite["keyInfo"]))
    assert sk.to_bytes(32, "little").hex() == suite["skSm"]
    pk = ref.mul(sk, ref.GENERATOR)
    assert ref.encode(pk).hex() == suite["pkSm"]
    for v in suite["vectors"]:
        inputs = _split(v["Input"])
        blinds = [_le(b) for b in _split(v["Blind"])]
        blinded = [ref.mul(b, ref.Voprf.hash_to_group(i)) for b, i in zip(blinds, inputs, strict=True)]
        assert [ref.encode(x) for x in blinded] == _split(v["BlindedElement"])
        evaluated = [ref.mul(sk, x) for x in blinded]
        assert [ref.encode(x) for x in evaluated] == _split(v["EvaluationElement"])
        assert [ref.Voprf.evaluate(sk, i) for i in inputs] == _split(v["Output"])
        proof = bytes.fromhex(v["Proof"]["proof"])
        assert ref.Voprf.verify_proof(pk, blinded, evaluated, proof)
        tampered = proof[:-1] + bytes([proof[-1] ^ 1])
        assert not ref.Voprf.verify_proof(pk, blinded, evaluated, tampered)


def test_reference_rejects_non_canonical_encodings() -> None:
    with pytest.raises(ValueError):
        ref.decode((ref.P + 1).to_bytes(32, "little"))  # s >= p
    with pytest.raises(ValueError):
        ref.decode((1).to_bytes(32, "little"))  # negative s
    g = ref.encode(ref.GENERATOR)
    assert ref.encode(ref.decode(g)) == g


# --- 2. voprf against RFC 9497 and the reference -----------------------------------------------------


def test_voprf_derive_key_pair_and_evaluate() -> None:
    suite = _voprf_suite()
    evaluator = ristretto.Evaluator.from_seed(bytes.fromhex(suite["seed"]), bytes.fromhex(suite["keyInfo"]))
    assert evaluator.public_key.serialize().hex() == suite["pkSm"]
    for v in suite["vectors"]:
        for inp, out in zip(_split(v["Input"]), _split(v["Output"]), strict=True):
            assert evaluator.evaluate_known_input(inp) == out


def test_voprf_blind_evaluate_matches_vectors_and_proof_layout() -> None:
    suite = _voprf_suite()
    seed, info = bytes.fromhex(suite["seed"]), bytes.fromhex(suite["keyInfo"])
    evaluator = ristretto.Evaluator.from_seed(seed, info)
    pk = ref.decode(bytes.fromhex(suite["pkSm"]))
    for v in suite["vectors"]:
        blinded_raw = _split(v["BlindedElement"])
        out = evaluator.evaluate_batch(
            [ristretto.BlindedInput.deserialize(b) for b in blinded_raw]
        ).serialize()
        proof, elements = out[:64], out[64:]
        assert [elements[i : i + 32] for i in range(0, len(elements), 32)] == _split(v["EvaluationElement"])
        # The proof is randomised (fresh r), so it cannot equal the vector's; it must verify under the
        # reference, read as c || s.
        blinded = [ref.decode(b) for b in blinded_raw]
        evaluated = [ref.decode(e) for e in _split(v["EvaluationElement"])]
        assert ref.Voprf.verify_proof(pk, blinded, evaluated, proof)


def test_issuer_key_is_rfc9497_derive_key_pair() -> None:
    seed = bytes(range(32))
    key = IssuerKey(seed)
    sk = ref.Voprf.derive_key_pair(seed, KEY_INFO)
    assert key.public_key == ref.encode(ref.mul(sk, ref.GENERATOR))
    assert key.key_id == token_key_id(key.public_key)
    data = b"some token input"
    assert key.authenticator(data) == ref.Voprf.evaluate(sk, data)
    # The federated-class key of the same seed: DeriveKeyPair with its own info.
    federated = IssuerKey(seed, TokenClass.FEDERATED)
    fsk = ref.Voprf.derive_key_pair(seed, KEY_INFO_FEDERATED)
    assert fsk != sk
    assert federated.public_key == ref.encode(ref.mul(fsk, ref.GENERATOR))
    assert federated.authenticator(data) == ref.Voprf.evaluate(fsk, data)


# --- 3. the batched-tokens draft vectors (type 0x0005) -----------------------------------------------


def _draft_vectors(heading: str) -> list[dict[str, Any]]:
    text = BATCHED_DRAFT.read_text()
    start = text.index(heading)
    body = text[text.index("~~~", start) + 3 :]
    body = body[: body.index("~~~")]
    vectors: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    key: str | None = None
    for raw_line in body.splitlines():
        line = raw_line.rstrip()
        if line.startswith("// Test vector"):
            current = {}
            vectors.append(current)
            key = None
            continue
        m = re.fullmatch(r"([a-zA-Z_]+):\s*([0-9a-f]*)", line)
        if m:
            key = m.group(1)
            current[key] = m.group(2) if m.group(2) else []
            continue
        item = re.fullmatch(r"\s*- ([0-9a-f]+)", line)
        if item and key is not None:
            current[key].append(item.group(1))
            continue
        if re.fullmatch(r"\s*[0-9a-f]+", line) and key is not None:
            if isinstance(current[key], list) and current[key]:
                current[key][-1] += line.strip()
            elif isinstance(current[key], list):
                current[key] = line.strip()
            else:
                current[key] += line.strip()
    return vectors


BATCHED = _draft_vectors("## Amortized Privately Verifiable Token Batch Issuance - VOPRF (ristretto255")
SINGLE = _draft_vectors("## Privately Verifiable Token Issuance - VOPRF (ristretto255")


def test_draft_vectors_were_found() -> None:
    assert len(BATCHED) == 10
    assert len(SINGLE) == 10
    assert all(len(v["nonces"]) == len(v["blinds"]) == len(v["tokens"]) for v in BATCHED)


@pytest.mark.parametrize("vector", BATCHED, ids=[f"batched-{i + 1}" for i in range(len(BATCHED))])
def test_batched_token_vector(vector: dict[str, Any]) -> None:
    h = bytes.fromhex
    sk = _le(h(vector["skS"]))
    pk_raw = h(vector["pkS"])
    assert ref.encode(ref.mul(sk, ref.GENERATOR)) == pk_raw
    key_id = token_key_id(pk_raw)
    challenge = TokenChallenge.decode(h(vector["token_challenge"]))
    assert challenge.encode() == h(vector["token_challenge"])
    assert challenge.token_type == TOKEN_TYPE

    request = AmortizedBatchTokenRequest.decode(h(vector["token_request"]))
    assert request.encode() == h(vector["token_request"])
    assert request.token_type == TOKEN_TYPE
    assert request.truncated_token_key_id == key_id[-1]
    nonces = [h(n) for n in vector["nonces"]]
    blinds = [_le(h(b)) for b in vector["blinds"]]
    inputs = [token_input(TOKEN_TYPE, n, challenge.digest(), key_id) for n in nonces]
    blinded = [ref.mul(b, ref.Voprf.hash_to_group(i)) for b, i in zip(blinds, inputs, strict=True)]
    assert tuple(ref.encode(x) for x in blinded) == request.blinded_msgs

    response = AmortizedBatchTokenResponse.decode(h(vector["token_response"]))
    assert response.encode() == h(vector["token_response"])
    evaluated = [ref.mul(sk, x) for x in blinded]
    assert tuple(ref.encode(x) for x in evaluated) == response.evaluated_msgs
    assert ref.Voprf.verify_proof(ref.decode(pk_raw), blinded, evaluated, response.evaluated_proof)

    for raw, inp in zip(vector["tokens"], inputs, strict=True):
        token = Token.decode(h(raw))
        assert token.encode() == h(raw)
        assert token.token_input() == inp
        assert token.authenticator == ref.Voprf.evaluate(sk, inp)


@pytest.mark.parametrize("vector", SINGLE[:3], ids=[f"single-{i + 1}" for i in range(3)])
def test_single_token_vector(vector: dict[str, Any]) -> None:
    """RFC 9578-style single issuance of type 0x0005: same token_input, key id and Token layout."""
    h = bytes.fromhex
    sk = _le(h(vector["skS"]))
    key_id = token_key_id(h(vector["pkS"]))
    challenge = TokenChallenge.decode(h(vector["token_challenge"]))
    inp = token_input(TOKEN_TYPE, h(vector["nonce"]), challenge.digest(), key_id)
    request = h(vector["token_request"])
    assert request[:2] == TOKEN_TYPE.to_bytes(2, "big") and request[2] == key_id[-1]
    assert request[3:] == ref.encode(ref.mul(_le(h(vector["blind"])), ref.Voprf.hash_to_group(inp)))
    token = Token.decode(h(vector["token"]))
    assert token.token_input() == inp
    assert token.authenticator == ref.Voprf.evaluate(sk, inp)
