"""Credential issuance and chain verification, with a test for every rejection path."""

from __future__ import annotations

import dataclasses
import hashlib
import uuid
from dataclasses import dataclass

import pytest

from phx.codec import encode_varint
from phx.credentials import (
    DEFAULT_CREDENTIAL_CIPHERSUITE,
    LABEL_AS_PAYLOAD,
    LABEL_CLIENT_PAYLOAD,
    LABEL_CLIENT_SIGNED,
    LABEL_INTERMEDIATE_PAYLOAD,
    LABEL_INTERMEDIATE_SIGNED,
    LABEL_LEAF_PAYLOAD,
    AsCredential,
    AsCredentialPayload,
    ClientCredential,
    ClientCredentialPayload,
    ClientCsr,
    CredentialCiphersuite,
    CredentialError,
    CredentialFingerprint,
    CsrError,
    ExpirationData,
    HashAlgorithm,
    IntermediateAsCredential,
    IntermediateAsCredentialPayload,
    IntermediateAsCsr,
    LeafCredential,
    LeafCredentialPayload,
    RevokedCredential,
    SignatureScheme,
    create_intermediate_credential,
    issue_client_credential,
    issue_intermediate_credential,
    new_as_credential,
    new_client_csr,
    new_intermediate_csr,
    sign_leaf_credential,
    verify_as_credential,
    verify_client_credential,
    verify_client_csr,
    verify_intermediate_credential,
    verify_leaf_credential,
)
from phx.crypto import MLS_PREFIX, PHX_PREFIX, SUITE_1
from phx.errors import DecodeError, ExpiredError, PhxError, SignatureError
from phx.identifiers import ClientId, Fqdn, UserId

SUITE = DEFAULT_CREDENTIAL_CIPHERSUITE
A = Fqdn("a.test")
B = Fqdn("b.test")
NOW = 1_700_000_000
DAY = 86_400
YEAR = 365 * DAY
ROOT_VALIDITY = ExpirationData(NOW - YEAR, NOW + 10 * YEAR)
INTER_VALIDITY = ExpirationData(NOW - DAY, NOW + 2 * YEAR)
CLIENT_VALIDITY = ExpirationData(NOW - 10, NOW + 90 * DAY)
LEAF_VALIDITY = ExpirationData(NOW, NOW + DAY)


@dataclass
class Chain:
    root: AsCredential
    root_key: bytes
    inter: IntermediateAsCredential
    inter_key: bytes
    client: ClientCredential
    client_key: bytes


def make_chain(domain: Fqdn = A) -> Chain:
    root, root_key = new_as_credential(domain, ROOT_VALIDITY)
    inter, inter_key = create_intermediate_credential(root, root_key, INTER_VALIDITY, now=NOW)
    cid = ClientId(UserId(domain, uuid.uuid4()), uuid.uuid4())
    csr, client_key = new_client_csr(cid, inter, CLIENT_VALIDITY)
    client = issue_client_credential(
        csr, intermediate=inter, intermediate_private_key=inter_key, as_credential=root, now=NOW
    )
    return Chain(root, root_key, inter, inter_key, client, client_key)


@pytest.fixture(scope="module")
def chain() -> Chain:
    return make_chain()


def sign(key: bytes, label: bytes, content: bytes) -> bytes:
    return SUITE.sign(key, label, content)


# Hand-built credentials that the issuing functions would refuse to produce.


def forge_intermediate(
    c: Chain,
    *,
    validity: ExpirationData = INTER_VALIDITY,
    self_label: bytes = LABEL_INTERMEDIATE_PAYLOAD,
    sign_label: bytes = LABEL_INTERMEDIATE_SIGNED,
    signer_key: bytes | None = None,
) -> tuple[IntermediateAsCredential, bytes]:
    key, pub = SUITE.generate_key_pair()
    p = IntermediateAsCredentialPayload(validity, SUITE, pub, c.root.fingerprint())
    csr = IntermediateAsCsr(p, sign(key, self_label, p.encode()))
    sig = sign(signer_key or c.root_key, sign_label, csr.encode())
    return IntermediateAsCredential(csr, sig), key


def forge_client(
    c: Chain,
    *,
    client_id: ClientId | None = None,
    validity: ExpirationData = CLIENT_VALIDITY,
    self_label: bytes = LABEL_CLIENT_PAYLOAD,
    sign_label: bytes = LABEL_CLIENT_SIGNED,
    signer_key: bytes | None = None,
    signer_fingerprint: CredentialFingerprint | None = None,
) -> ClientCredential:
    key, pub = SUITE.generate_key_pair()
    cid = client_id or ClientId(UserId(c.root.domain, uuid.uuid4()), uuid.uuid4())
    p = ClientCredentialPayload(cid, validity, SUITE, pub, signer_fingerprint or c.inter.fingerprint())
    csr = ClientCsr(p, sign(key, self_label, p.encode()))
    return ClientCredential(csr, sign(signer_key or c.inter_key, sign_label, csr.encode()))


def verify_client(c: Chain, cred: ClientCredential, now: int = NOW, **kw: object) -> None:
    verify_client_credential(
        cred,
        intermediates=[c.inter],
        as_credentials=[c.root],
        now=now,
        **kw,  # type: ignore[arg-type]
    )


# --- wire form ---------------------------------------------------------------------------------------


def test_wire_round_trips(chain: Chain) -> None:
    assert AsCredential.decode(chain.root.encode()) == chain.root
    assert IntermediateAsCredential.decode(chain.inter.encode()) == chain.inter
    assert ClientCredential.decode(chain.client.encode()) == chain.client
    assert ClientCsr.decode(chain.client.signed_payload.encode()) == chain.client.signed_payload


def test_ciphersuite_and_expiration_encoding() -> None:
    assert SUITE.encode() == bytes([4, 0x08, 0x07])
    assert ExpirationData(1, 2).encode() == (1).to_bytes(8, "big") + (2).to_bytes(8, "big")
    with pytest.raises(DecodeError):
        CredentialCiphersuite.decode(bytes([3, 0x08, 0x07]))  # unknown hash
    with pytest.raises(DecodeError):
        CredentialCiphersuite.decode(bytes([4, 0x08, 0x08]))  # Ed448: not supported
    with pytest.raises(DecodeError):
        AsCredential.decode(make_chain().root.encode() + b"\x00")


def test_fingerprint_is_hash_of_full_encoding(chain: Chain) -> None:
    assert chain.client.fingerprint().value == hashlib.sha256(chain.client.encode()).digest()
    assert chain.root.fingerprint().value == hashlib.sha256(chain.root.encode()).digest()
    assert chain.client.payload.signer_fingerprint == chain.inter.fingerprint()
    assert chain.inter.payload.signer_fingerprint == chain.root.fingerprint()


def test_sha512_credentials() -> None:
    suite = CredentialCiphersuite(HashAlgorithm.SHA512, SignatureScheme.ED25519)
    root, key = new_as_credential(A, ROOT_VALIDITY, suite)
    assert len(root.fingerprint().value) == 64
    assert root.fingerprint().value == hashlib.sha512(root.encode()).digest()
    verify_as_credential(root, now=NOW)
    inter, _ = create_intermediate_credential(root, key, INTER_VALIDITY, now=NOW, suite=suite)
    verify_intermediate_credential(inter, as_credentials=[root], now=NOW)


def test_leaf_credential_encoding_is_the_books_flat_struct() -> None:
    p = LeafCredentialPayload(
        b"pseudonym", ExpirationData(1, 2), SUITE, b"k" * 32, CredentialFingerprint(b"f")
    )
    leaf = LeafCredential(p, b"ciphertext")
    flat = (
        encode_varint(9)
        + b"pseudonym"
        + ExpirationData(1, 2).encode()
        + SUITE.encode()
        + encode_varint(32)
        + b"k" * 32
        + encode_varint(1)
        + b"f"
        + encode_varint(10)
        + b"ciphertext"
    )
    assert leaf.encode() == flat
    assert LeafCredential.decode(flat) == leaf


def test_signatures_use_the_phoenix_prefix(chain: Chain) -> None:
    content = chain.root.payload.encode()
    pub = chain.root.payload.public_key
    assert SUITE_1.verify_with_label(pub, LABEL_AS_PAYLOAD, content, chain.root.self_signature, PHX_PREFIX)
    assert not SUITE_1.verify_with_label(
        pub, LABEL_AS_PAYLOAD, content, chain.root.self_signature, MLS_PREFIX
    )


def test_labels_are_distinct() -> None:
    labels = [
        LABEL_AS_PAYLOAD,
        LABEL_INTERMEDIATE_PAYLOAD,
        LABEL_INTERMEDIATE_SIGNED,
        LABEL_CLIENT_PAYLOAD,
        LABEL_CLIENT_SIGNED,
        LABEL_LEAF_PAYLOAD,
    ]
    assert len(set(labels)) == len(labels)


# --- AS credential -----------------------------------------------------------------------------------


def test_as_credential_valid(chain: Chain) -> None:
    verify_as_credential(chain.root, now=NOW, domain=A)
    verify_as_credential(chain.root, now=ROOT_VALIDITY.not_before)  # both ends are inclusive
    verify_as_credential(chain.root, now=ROOT_VALIDITY.not_after)


def test_as_credential_with_given_key() -> None:
    key, pub = SUITE.generate_key_pair()
    root, key2 = new_as_credential(A, ROOT_VALIDITY, private_key=key)
    assert key2 == key and root.payload.public_key == pub


def test_as_credential_forged_self_signature(chain: Chain) -> None:
    sig = bytearray(chain.root.self_signature)
    sig[0] ^= 1
    with pytest.raises(SignatureError):
        verify_as_credential(AsCredential(chain.root.payload, bytes(sig)), now=NOW)


def test_as_credential_tampered_payload(chain: Chain) -> None:
    p = dataclasses.replace(chain.root.payload, as_domain=B)
    with pytest.raises(SignatureError):
        verify_as_credential(AsCredential(p, chain.root.self_signature), now=NOW)


def test_as_credential_signed_under_another_label(chain: Chain) -> None:
    p = chain.root.payload
    for label in (LABEL_INTERMEDIATE_PAYLOAD, LABEL_CLIENT_PAYLOAD, LABEL_LEAF_PAYLOAD):
        with pytest.raises(SignatureError):
            verify_as_credential(AsCredential(p, sign(chain.root_key, label, p.encode())), now=NOW)


def test_as_credential_wrong_domain(chain: Chain) -> None:
    with pytest.raises(CredentialError):
        verify_as_credential(chain.root, now=NOW, domain=B)


def test_as_credential_time(chain: Chain) -> None:
    with pytest.raises(ExpiredError, match="expired"):
        verify_as_credential(chain.root, now=ROOT_VALIDITY.not_after + 1)
    with pytest.raises(ExpiredError, match="not valid yet"):
        verify_as_credential(chain.root, now=ROOT_VALIDITY.not_before - 1)


def test_as_credential_revoked(chain: Chain) -> None:
    with pytest.raises(RevokedCredential):
        verify_as_credential(chain.root, now=NOW, revoked={chain.root.fingerprint()})


def test_as_credential_empty_period() -> None:
    key, pub = SUITE.generate_key_pair()
    p = AsCredentialPayload(A, ExpirationData(NOW + 1, NOW), SUITE, pub)
    with pytest.raises(CredentialError):
        verify_as_credential(AsCredential(p, sign(key, LABEL_AS_PAYLOAD, p.encode())), now=NOW)
    with pytest.raises(CredentialError):
        new_as_credential(A, ExpirationData(NOW + 1, NOW))


# --- intermediate ------------------------------------------------------------------------------------


def test_intermediate_valid(chain: Chain) -> None:
    other_root, _ = new_as_credential(A, ROOT_VALIDITY)
    root = verify_intermediate_credential(chain.inter, as_credentials=[other_root, chain.root], now=NOW)
    assert root == chain.root


def test_intermediate_unknown_signer(chain: Chain) -> None:
    other_root, _ = new_as_credential(A, ROOT_VALIDITY)
    with pytest.raises(CredentialError, match="fingerprint"):
        verify_intermediate_credential(chain.inter, as_credentials=[other_root], now=NOW)
    with pytest.raises(CredentialError):
        verify_intermediate_credential(chain.inter, as_credentials=[], now=NOW)


def test_intermediate_forged_signature(chain: Chain) -> None:
    rogue_key, _ = SUITE.generate_key_pair()
    inter, _ = forge_intermediate(chain, signer_key=rogue_key)
    with pytest.raises(SignatureError, match="intermediate AS credential signature"):
        verify_intermediate_credential(inter, as_credentials=[chain.root], now=NOW)


def test_intermediate_bad_self_signature(chain: Chain) -> None:
    csr = dataclasses.replace(chain.inter.signed_payload, self_signature=bytes(64))
    inter = IntermediateAsCredential(csr, sign(chain.root_key, LABEL_INTERMEDIATE_SIGNED, csr.encode()))
    with pytest.raises(SignatureError, match="self-signature"):
        verify_intermediate_credential(inter, as_credentials=[chain.root], now=NOW)


@pytest.mark.parametrize("label", [LABEL_CLIENT_SIGNED, LABEL_AS_PAYLOAD, LABEL_INTERMEDIATE_PAYLOAD])
def test_intermediate_signature_under_swapped_label(chain: Chain, label: bytes) -> None:
    inter, _ = forge_intermediate(chain, sign_label=label)
    with pytest.raises(SignatureError):
        verify_intermediate_credential(inter, as_credentials=[chain.root], now=NOW)


@pytest.mark.parametrize("label", [LABEL_CLIENT_PAYLOAD, LABEL_AS_PAYLOAD, LABEL_INTERMEDIATE_SIGNED])
def test_intermediate_self_signature_under_swapped_label(chain: Chain, label: bytes) -> None:
    inter, _ = forge_intermediate(chain, self_label=label)
    with pytest.raises(SignatureError):
        verify_intermediate_credential(inter, as_credentials=[chain.root], now=NOW)


def test_intermediate_not_nested(chain: Chain) -> None:
    inter, _ = forge_intermediate(chain, validity=ExpirationData(NOW - DAY, ROOT_VALIDITY.not_after + 1))
    with pytest.raises(CredentialError, match="not within"):
        verify_intermediate_credential(inter, as_credentials=[chain.root], now=NOW)
    inter, _ = forge_intermediate(chain, validity=ExpirationData(ROOT_VALIDITY.not_before - 1, NOW + DAY))
    with pytest.raises(CredentialError, match="not within"):
        verify_intermediate_credential(inter, as_credentials=[chain.root], now=NOW)


def test_intermediate_empty_period(chain: Chain) -> None:
    inter, _ = forge_intermediate(chain, validity=ExpirationData(NOW + 1, NOW))
    with pytest.raises(CredentialError, match="empty"):
        verify_intermediate_credential(inter, as_credentials=[chain.root], now=NOW)


def test_intermediate_time(chain: Chain) -> None:
    with pytest.raises(ExpiredError, match="intermediate AS credential has expired"):
        verify_intermediate_credential(
            chain.inter, as_credentials=[chain.root], now=INTER_VALIDITY.not_after + 1
        )
    with pytest.raises(ExpiredError, match="intermediate AS credential is not valid yet"):
        verify_intermediate_credential(
            chain.inter, as_credentials=[chain.root], now=INTER_VALIDITY.not_before - 1
        )


def test_intermediate_revoked(chain: Chain) -> None:
    with pytest.raises(RevokedCredential, match="intermediate"):
        verify_intermediate_credential(
            chain.inter, as_credentials=[chain.root], now=NOW, revoked={chain.inter.fingerprint()}
        )
    with pytest.raises(RevokedCredential, match="AS credential"):
        verify_intermediate_credential(
            chain.inter, as_credentials=[chain.root], now=NOW, revoked={chain.root.fingerprint()}
        )


def test_intermediate_wrong_domain(chain: Chain) -> None:
    with pytest.raises(CredentialError):
        verify_intermediate_credential(chain.inter, as_credentials=[chain.root], now=NOW, domain=B)


# --- intermediate issuance ---------------------------------------------------------------------------


def test_issue_intermediate_rejects_bad_csrs(chain: Chain) -> None:
    other_root, _ = new_as_credential(A, ROOT_VALIDITY)
    csr, _ = new_intermediate_csr(other_root, INTER_VALIDITY)
    with pytest.raises(CsrError, match="different AS credential"):
        issue_intermediate_credential(csr, as_credential=chain.root, as_private_key=chain.root_key, now=NOW)

    csr, _ = new_intermediate_csr(chain.root, ExpirationData(NOW, ROOT_VALIDITY.not_after + 1))
    with pytest.raises(CsrError, match="not within"):
        issue_intermediate_credential(csr, as_credential=chain.root, as_private_key=chain.root_key, now=NOW)

    csr, _ = new_intermediate_csr(chain.root, ExpirationData(NOW + 1, NOW))
    with pytest.raises(CsrError, match="empty"):
        issue_intermediate_credential(csr, as_credential=chain.root, as_private_key=chain.root_key, now=NOW)

    csr, _ = new_intermediate_csr(chain.root, INTER_VALIDITY)
    bad = dataclasses.replace(csr, self_signature=bytes(64))
    with pytest.raises(SignatureError):
        issue_intermediate_credential(bad, as_credential=chain.root, as_private_key=chain.root_key, now=NOW)

    with pytest.raises(ExpiredError):
        issue_intermediate_credential(
            csr, as_credential=chain.root, as_private_key=chain.root_key, now=ROOT_VALIDITY.not_after + 1
        )

    wrong_key, _ = SUITE.generate_key_pair()
    with pytest.raises(PhxError, match="does not match"):
        issue_intermediate_credential(csr, as_credential=chain.root, as_private_key=wrong_key, now=NOW)


# --- client credentials ------------------------------------------------------------------------------


def test_client_credential_valid(chain: Chain) -> None:
    other = make_chain()
    result = verify_client_credential(
        chain.client,
        intermediates=[other.inter, chain.inter],
        as_credentials=[other.root, chain.root],
        now=NOW,
    )
    assert (result.client, result.intermediate, result.root) == (chain.client, chain.inter, chain.root)


def test_client_credential_unknown_intermediate(chain: Chain) -> None:
    other = make_chain()
    cred = forge_client(chain, signer_fingerprint=other.inter.fingerprint())
    with pytest.raises(CredentialError, match="fingerprint"):
        verify_client(chain, cred)
    with pytest.raises(CredentialError, match="fingerprint"):
        verify_client_credential(
            chain.client, intermediates=[other.inter], as_credentials=[chain.root], now=NOW
        )


def test_client_credential_wrong_fingerprint_for_its_signer(chain: Chain) -> None:
    # Signed by the real intermediate, but naming another one that the verifier also knows.
    other_inter, _ = forge_intermediate(chain)
    cred = forge_client(chain, signer_fingerprint=other_inter.fingerprint())
    with pytest.raises(SignatureError):
        verify_client_credential(
            cred, intermediates=[chain.inter, other_inter], as_credentials=[chain.root], now=NOW
        )


def test_client_credential_forged_signature(chain: Chain) -> None:
    rogue_key, _ = SUITE.generate_key_pair()
    with pytest.raises(SignatureError, match="client credential signature"):
        verify_client(chain, forge_client(chain, signer_key=rogue_key))
    sig = bytearray(chain.client.signature)
    sig[-1] ^= 0x80
    with pytest.raises(SignatureError):
        verify_client(chain, ClientCredential(chain.client.signed_payload, bytes(sig)))


def test_client_credential_signed_by_the_root_directly(chain: Chain) -> None:
    with pytest.raises(SignatureError):
        verify_client(chain, forge_client(chain, signer_key=chain.root_key))


@pytest.mark.parametrize("label", [LABEL_INTERMEDIATE_SIGNED, LABEL_CLIENT_PAYLOAD, LABEL_LEAF_PAYLOAD])
def test_client_signature_under_swapped_label(chain: Chain, label: bytes) -> None:
    with pytest.raises(SignatureError, match="client credential signature"):
        verify_client(chain, forge_client(chain, sign_label=label))


@pytest.mark.parametrize("label", [LABEL_INTERMEDIATE_PAYLOAD, LABEL_CLIENT_SIGNED, LABEL_LEAF_PAYLOAD])
def test_client_self_signature_under_swapped_label(chain: Chain, label: bytes) -> None:
    with pytest.raises(SignatureError, match="self-signature"):
        verify_client(chain, forge_client(chain, self_label=label))


def test_client_bad_self_signature(chain: Chain) -> None:
    csr = dataclasses.replace(chain.client.signed_payload, self_signature=bytes(64))
    cred = ClientCredential(csr, sign(chain.inter_key, LABEL_CLIENT_SIGNED, csr.encode()))
    with pytest.raises(SignatureError, match="self-signature"):
        verify_client(chain, cred)


def test_client_tampered_client_id(chain: Chain) -> None:
    p = dataclasses.replace(chain.client.payload, client_id=ClientId(UserId(A, uuid.uuid4()), uuid.uuid4()))
    csr = ClientCsr(p, chain.client.signed_payload.self_signature)
    with pytest.raises(SignatureError):
        verify_client(chain, ClientCredential(csr, chain.client.signature))


def test_client_not_nested(chain: Chain) -> None:
    cred = forge_client(chain, validity=ExpirationData(NOW, INTER_VALIDITY.not_after + 1))
    with pytest.raises(CredentialError, match="not within"):
        verify_client(chain, cred)
    cred = forge_client(chain, validity=ExpirationData(INTER_VALIDITY.not_before - 1, NOW + 1))
    with pytest.raises(CredentialError, match="not within"):
        verify_client(chain, cred)


def test_client_empty_period(chain: Chain) -> None:
    with pytest.raises(CredentialError, match="empty"):
        verify_client(chain, forge_client(chain, validity=ExpirationData(NOW + 1, NOW)))


def test_client_time(chain: Chain) -> None:
    with pytest.raises(ExpiredError, match="client credential has expired"):
        verify_client(chain, chain.client, now=CLIENT_VALIDITY.not_after + 1)
    with pytest.raises(ExpiredError, match="client credential is not valid yet"):
        verify_client(chain, chain.client, now=CLIENT_VALIDITY.not_before - 1)
    # An expired intermediate fails the whole chain even while the client credential itself is valid.
    late = forge_client(chain, validity=ExpirationData(NOW, INTER_VALIDITY.not_after))
    with pytest.raises(ExpiredError, match="intermediate"):
        verify_client(chain, late, now=INTER_VALIDITY.not_after + 1)


def test_client_revoked(chain: Chain) -> None:
    for fp, what in [
        (chain.client.fingerprint(), "client credential"),
        (chain.inter.fingerprint(), "intermediate"),
        (chain.root.fingerprint(), "AS credential"),
    ]:
        with pytest.raises(RevokedCredential, match=what):
            verify_client(chain, chain.client, revoked={fp})


def test_client_of_a_foreign_domain(chain: Chain) -> None:
    # a.test's AS signing a credential for a b.test user must not verify.
    foreign = ClientId(UserId(B, uuid.uuid4()), uuid.uuid4())
    cred = forge_client(chain, client_id=foreign)
    with pytest.raises(CredentialError, match="b.test"):
        verify_client(chain, cred)


def test_intermediate_credential_cannot_pose_as_client(chain: Chain) -> None:
    # Same key, same signer, but an intermediate-labelled signature over a client CSR.
    csr, _ = new_client_csr(chain.client.client_id, chain.inter, CLIENT_VALIDITY)
    cred = ClientCredential(csr, sign(chain.inter_key, LABEL_INTERMEDIATE_SIGNED, csr.encode()))
    with pytest.raises(SignatureError):
        verify_client(chain, cred)


# --- client issuance ---------------------------------------------------------------------------------


def issue(c: Chain, csr: ClientCsr, now: int = NOW, **kw: object) -> ClientCredential:
    return issue_client_credential(
        csr,
        intermediate=c.inter,
        intermediate_private_key=c.inter_key,
        as_credential=c.root,
        now=now,
        **kw,  # type: ignore[arg-type]
    )


def test_issue_client_credential(chain: Chain) -> None:
    cid = ClientId(UserId(A, uuid.uuid4()), uuid.uuid4())
    key, _ = SUITE.generate_key_pair()
    csr, key2 = new_client_csr(cid, chain.inter, CLIENT_VALIDITY, private_key=key)
    assert key2 == key
    verify_client_csr(csr, domain=A)
    cred = issue(chain, csr, max_lifetime=CLIENT_VALIDITY.lifetime)
    assert cred.signed_payload == csr
    verify_client(chain, cred)


def test_issue_rejects_foreign_domain_csr(chain: Chain) -> None:
    csr, _ = new_client_csr(ClientId(UserId(B, uuid.uuid4()), uuid.uuid4()), chain.inter, CLIENT_VALIDITY)
    with pytest.raises(CsrError, match="b.test"):
        verify_client_csr(csr, domain=A)
    with pytest.raises(CsrError, match="b.test"):
        issue(chain, csr)


def test_issue_rejects_bad_self_signature(chain: Chain) -> None:
    csr, _ = new_client_csr(chain.client.client_id, chain.inter, CLIENT_VALIDITY)
    for bad in (
        dataclasses.replace(csr, self_signature=bytes(64)),
        dataclasses.replace(csr, self_signature=csr.self_signature[:-1]),
    ):
        with pytest.raises(SignatureError):
            issue(chain, bad)
    key, _ = SUITE.generate_key_pair()
    swapped = ClientCsr(csr.payload, sign(key, LABEL_CLIENT_SIGNED, csr.payload.encode()))
    with pytest.raises(SignatureError):
        issue(chain, swapped)


def test_issue_rejects_csr_for_another_intermediate(chain: Chain) -> None:
    other_inter, _ = forge_intermediate(chain)
    csr, _ = new_client_csr(chain.client.client_id, other_inter, CLIENT_VALIDITY)
    with pytest.raises(CsrError, match="different intermediate"):
        issue(chain, csr)


def test_issue_rejects_bad_periods(chain: Chain) -> None:
    cid = chain.client.client_id
    csr, _ = new_client_csr(cid, chain.inter, ExpirationData(NOW, INTER_VALIDITY.not_after + 1))
    with pytest.raises(CsrError, match="not within"):
        issue(chain, csr)
    csr, _ = new_client_csr(cid, chain.inter, ExpirationData(NOW + 1, NOW))
    with pytest.raises(CsrError, match="empty"):
        issue(chain, csr)
    csr, _ = new_client_csr(cid, chain.inter, ExpirationData(NOW - DAY, NOW - 10))
    with pytest.raises(CsrError, match="ended"):
        issue(chain, csr)
    csr, _ = new_client_csr(cid, chain.inter, CLIENT_VALIDITY)
    with pytest.raises(CsrError, match="at most"):
        issue(chain, csr, max_lifetime=CLIENT_VALIDITY.lifetime - 1)


def test_issue_with_an_unusable_intermediate(chain: Chain) -> None:
    csr, _ = new_client_csr(chain.client.client_id, chain.inter, CLIENT_VALIDITY)
    with pytest.raises(ExpiredError):
        issue(chain, csr, now=INTER_VALIDITY.not_after + 1)
    other = make_chain()
    with pytest.raises(CredentialError):
        issue_client_credential(
            csr,
            intermediate=chain.inter,
            intermediate_private_key=chain.inter_key,
            as_credential=other.root,
            now=NOW,
        )
    with pytest.raises(PhxError, match="does not match"):
        issue_client_credential(
            csr,
            intermediate=chain.inter,
            intermediate_private_key=chain.root_key,
            as_credential=chain.root,
            now=NOW,
        )


# --- leaf credentials --------------------------------------------------------------------------------


def leaf_payload(c: Chain, validity: ExpirationData = LEAF_VALIDITY) -> LeafCredentialPayload:
    _, pub = SUITE.generate_key_pair()
    return LeafCredentialPayload(b"\x01" * 16, validity, SUITE, pub, c.client.fingerprint())


def test_leaf_sign_and_verify(chain: Chain) -> None:
    p = leaf_payload(chain)
    sig = sign_leaf_credential(p, chain.client, chain.client_key)
    verify_leaf_credential(p, sig, chain.client, now=NOW)


def test_leaf_rejections(chain: Chain) -> None:
    p = leaf_payload(chain)
    sig = sign_leaf_credential(p, chain.client, chain.client_key)
    other = make_chain()
    with pytest.raises(CredentialError, match="different client credential"):
        verify_leaf_credential(p, sig, other.client, now=NOW)
    with pytest.raises(SignatureError):
        verify_leaf_credential(p, bytes(64), chain.client, now=NOW)
    with pytest.raises(SignatureError):
        verify_leaf_credential(
            p, sign(chain.client_key, LABEL_CLIENT_PAYLOAD, p.encode()), chain.client, now=NOW
        )
    with pytest.raises(SignatureError):
        verify_leaf_credential(dataclasses.replace(p, identity=b"x"), sig, chain.client, now=NOW)
    with pytest.raises(ExpiredError):
        verify_leaf_credential(p, sig, chain.client, now=NOW + DAY + 1)
    with pytest.raises(ExpiredError):
        verify_leaf_credential(p, sig, chain.client, now=NOW - 1)
    with pytest.raises(RevokedCredential):
        verify_leaf_credential(p, sig, chain.client, now=NOW, revoked={chain.client.fingerprint()})

    long = leaf_payload(chain, ExpirationData(NOW, CLIENT_VALIDITY.not_after + 1))
    with pytest.raises(CredentialError, match="not within"):
        verify_leaf_credential(
            long, sign_leaf_credential(long, chain.client, chain.client_key), chain.client, now=NOW
        )
    empty = leaf_payload(chain, ExpirationData(NOW + 1, NOW))
    with pytest.raises(CredentialError, match="empty"):
        verify_leaf_credential(
            empty, sign_leaf_credential(empty, chain.client, chain.client_key), chain.client, now=NOW
        )


def test_sign_leaf_refuses_mismatches(chain: Chain) -> None:
    other = make_chain()
    with pytest.raises(PhxError, match="different client credential"):
        sign_leaf_credential(leaf_payload(chain), other.client, other.client_key)
    with pytest.raises(PhxError, match="does not match"):
        sign_leaf_credential(leaf_payload(chain), chain.client, other.client_key)
