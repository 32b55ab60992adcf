"""KeyPackages (RFC 9420 §10): creation, capabilities, lifetimes, extensions, the private-key bundle."""

from __future__ import annotations

from dataclasses import replace

import pytest

from phx.crypto import SUITE_1
from phx.errors import DecodeError, MlsError
from phx.mls.key_package import (
    LAST_RESORT_EXTENSION_TYPE,
    NOT_BEFORE_SKEW,
    KeyPackageBundle,
    create_key_package,
    default_capabilities,
    is_last_resort,
    key_package_ref,
)
from phx.mls.leaf_validation import InvalidKeyPackage, validate_key_package
from phx.mls.messages import (
    Capabilities,
    Credential,
    CredentialType,
    Extension,
    KeyPackage,
    LeafNodeSource,
    MLSMessage,
)

CS = SUITE_1
NOW = 1_700_000_000


def _bundle(**kw: object) -> KeyPackageBundle:
    priv, _ = CS.generate_signature_key_pair()
    return create_key_package(CS, Credential.basic(b"alice"), priv, now=NOW, **kw)  # type: ignore[arg-type]


def test_key_package_is_valid_and_matches_its_keys() -> None:
    b = _bundle()
    kp = b.key_package
    validate_key_package(CS, kp, now=NOW)
    b.check_keys()
    assert kp.leaf_node.leaf_node_source == LeafNodeSource.KEY_PACKAGE
    assert kp.init_key != kp.leaf_node.encryption_key
    assert kp.leaf_node.lifetime is not None
    assert kp.leaf_node.lifetime.not_before == NOW - NOT_BEFORE_SKEW
    assert kp.leaf_node.capabilities.cipher_suites == (CS.suite_id,)
    assert kp.leaf_node.capabilities.credentials == (CredentialType.BASIC,)
    assert KeyPackage.decode(kp.encode()) == kp
    assert MLSMessage.decode(MLSMessage(kp).encode()).key_package == kp
    assert b.ref() == key_package_ref(CS, kp) and len(b.ref()) == CS.nh


def test_lifetime_is_enforced_by_validation() -> None:
    b = _bundle(lifetime=100)
    validate_key_package(CS, b.key_package, now=NOW + 100)
    with pytest.raises(InvalidKeyPackage, match="lifetime"):
        validate_key_package(CS, b.key_package, now=NOW + 101)
    with pytest.raises(InvalidKeyPackage, match="lifetime"):
        validate_key_package(CS, b.key_package, now=NOW - NOT_BEFORE_SKEW - 1)


def test_last_resort_and_application_extensions() -> None:
    queue_config = Extension(0xF001, b"sealed queue config")
    b = _bundle(last_resort=True, extensions=[queue_config], leaf_extensions=[Extension(0xF002, b"x")])
    kp = b.key_package
    assert is_last_resort(kp) and b.last_resort
    assert not is_last_resort(_bundle().key_package)
    assert Extension(LAST_RESORT_EXTENSION_TYPE, b"") in kp.extensions and queue_config in kp.extensions
    caps = kp.leaf_node.capabilities.extensions
    assert {0xF001, 0xF002, LAST_RESORT_EXTENSION_TYPE} <= set(caps)
    validate_key_package(CS, kp, now=NOW)


def test_capabilities_must_cover_credential_and_leaf_extensions() -> None:
    priv, _ = CS.generate_signature_key_pair()
    caps = Capabilities(cipher_suites=(1,), credentials=(CredentialType.X509,))
    with pytest.raises(MlsError, match="credential"):
        create_key_package(CS, Credential.basic(b"a"), priv, now=NOW, capabilities=caps)
    caps = default_capabilities(CS, CredentialType.BASIC)
    with pytest.raises(MlsError, match="leaf extension"):
        create_key_package(
            CS,
            Credential.basic(b"a"),
            priv,
            now=NOW,
            capabilities=caps,
            leaf_extensions=[Extension(0xF0, b"")],
        )
    # Default extension types are implied and never listed.
    assert default_capabilities(CS, 1, extensions=[2, 3, 0xF00D]).extensions == (0xF00D,)


def test_custom_credential_type() -> None:
    priv, _ = CS.generate_signature_key_pair()
    cred = Credential.custom(0xF000, b"phoenix leaf credential")
    b = create_key_package(CS, cred, priv, now=NOW)
    assert b.key_package.leaf_node.credential == cred
    validate_key_package(CS, b.key_package, now=NOW)


def test_tampering_breaks_the_signatures() -> None:
    kp = _bundle().key_package
    with pytest.raises(InvalidKeyPackage, match="KeyPackage signature"):
        validate_key_package(CS, replace(kp, extensions=(Extension(0xF0, b""),)), now=NOW)
    leaf = replace(kp.leaf_node, credential=Credential.basic(b"mallory"))
    with pytest.raises(InvalidKeyPackage, match="LeafNode signature"):
        validate_key_package(CS, replace(kp, leaf_node=leaf), now=NOW)


def test_given_private_keys_are_used() -> None:
    init_priv, _ = CS.generate_hpke_key_pair()
    enc_priv, _ = CS.generate_hpke_key_pair()
    b = _bundle(init_private_key=init_priv, encryption_private_key=enc_priv)
    assert b.init_private_key == init_priv and b.encryption_private_key == enc_priv
    b.check_keys()
    with pytest.raises(MlsError, match="differ"):
        _bundle(init_private_key=init_priv, encryption_private_key=init_priv)


def test_bundle_round_trip_and_key_mismatch() -> None:
    b = _bundle(last_resort=True)
    again = KeyPackageBundle.from_bytes(b.to_bytes())
    assert again == b
    for key in (b.init_private_key, b.encryption_private_key, b.signature_private_key):
        assert key.hex() not in repr(b) and repr(key) not in repr(b)
    with pytest.raises(DecodeError):
        KeyPackageBundle.from_bytes(b.to_bytes()[:-1])
    wrong = replace(b, encryption_private_key=b.init_private_key)
    with pytest.raises(MlsError, match="encryption"):
        wrong.check_keys()
    wrong = replace(b, signature_private_key=bytes(32))
    with pytest.raises(MlsError, match="signature"):
        wrong.check_keys()
