"""Client-to-client formats and their crypto: each check fails when the data is not what it claims."""

from __future__ import annotations

import os
import uuid

import pytest

from phx.client.wire import (
    ClientMessage,
    ClientMessageType,
    FriendshipPackage,
    GroupMetadata,
    WelcomeAttributionInfo,
    WelcomeAttributionInfoPayload,
    group_metadata,
    make_add_package,
    make_metadata_extension,
    new_leaf,
    new_secret,
    open_add_package,
    open_connection_establishment,
    open_credential_information,
    open_symmetric,
    seal_connection_establishment,
    seal_credential_information,
    seal_symmetric,
    verify_member,
)
from phx.credentials import (
    ClientCredential,
    CredentialError,
    ExpirationData,
    create_intermediate_credential,
    issue_client_credential,
    new_as_credential,
    new_client_csr,
)
from phx.crypto import SUITE_1
from phx.errors import DecodeError, ExpiredError, SignatureError, ValidationError
from phx.identifiers import ClientId, Fqdn, GroupId, UserId
from phx.queuing.messages import ClientQueueConfig, SealedQueueConfig

NOW = 1_767_225_600
DOMAIN = Fqdn("a.test")
GROUP = GroupId(uuid.uuid4(), DOMAIN)


def client_credential(now: int = NOW, lifetime: int = 86_400 * 30) -> tuple[ClientCredential, bytes]:
    root, root_key = new_as_credential(DOMAIN, ExpirationData(now - 10, now + 86_400 * 3650))
    inter, inter_key = create_intermediate_credential(
        root, root_key, ExpirationData(now - 10, now + 86_400 * 700), now=now
    )
    csr, key = new_client_csr(
        ClientId.random(UserId.random(DOMAIN)), inter, ExpirationData(now - 5, now + lifetime)
    )
    cred = issue_client_credential(
        csr, intermediate=inter, intermediate_private_key=inter_key, as_credential=root, now=now
    )
    return cred, key


def test_symmetric_encryption_is_bound_to_key_label_and_aad() -> None:
    key = new_secret()
    sealed = seal_symmetric(key, b"label", b"secret", b"aad")
    assert open_symmetric(key, b"label", sealed, b"aad") == b"secret"
    assert seal_symmetric(key, b"label", b"secret", b"aad") != sealed  # fresh nonce
    for args in (
        (new_secret(), b"label", sealed, b"aad"),
        (key, b"other", sealed, b"aad"),
        (key, b"label", sealed, b"x"),
    ):
        with pytest.raises(ValidationError, match="does not decrypt"):
            open_symmetric(*args)
    with pytest.raises(ValidationError, match="too short"):
        open_symmetric(key, b"label", b"short")


def test_leaf_credentials_verify_against_their_client_credential_only() -> None:
    cred, key = client_credential()
    leaf = new_leaf(cred, key, NOW)
    pub = SUITE_1.signature_public_key(leaf.signature_private_key)
    info = leaf.information(cred)
    assert verify_member(leaf.credential, pub, info, NOW) == cred
    other, other_key = client_credential()
    with pytest.raises(CredentialError, match="names a different client credential"):
        verify_member(leaf.credential, pub, leaf.information(other), NOW)
    with pytest.raises(ValidationError, match="another signature key"):
        verify_member(leaf.credential, SUITE_1.generate_signature_key_pair()[1], info, NOW)
    with pytest.raises(ValidationError, match="does not decrypt"):
        verify_member(leaf.credential, pub, type(info)(cred, new_secret()), NOW)
    with pytest.raises(ExpiredError):
        verify_member(leaf.credential, pub, info, NOW + 86_400 * 365)
    # the credential information travels encrypted under the group's credential key
    ck = new_secret()
    blob = seal_credential_information(ck, GROUP, info)
    assert open_credential_information(ck, GROUP, blob) == info
    with pytest.raises(ValidationError):
        open_credential_information(ck, GroupId(uuid.uuid4(), DOMAIN), blob)
    del other_key


def test_add_packages_open_only_with_the_friendship_key() -> None:
    cred, key = client_credential()
    fk = new_secret()
    qc = ClientQueueConfig(DOMAIN, SealedQueueConfig(os.urandom(32), os.urandom(64)))
    ap, bundle, sig_key = make_add_package(cred, key, fk, qc, NOW, last_resort=True)
    assert bundle.last_resort and bundle.key_package == ap.key_package
    info = open_add_package(ap, fk, NOW)
    assert info.client_credential == cred and info.signature_encryption_key == sig_key
    with pytest.raises(ValidationError, match="does not decrypt"):
        open_add_package(ap, new_secret(), NOW)
    # a package whose encrypted credential belongs to another key package is refused
    ap2, _, _ = make_add_package(cred, key, fk, qc, NOW)
    swapped = type(ap)(
        ap.key_package, ap2.encrypted_client_credential, ap2.encrypted_signature_encryption_key
    )
    with pytest.raises(ValidationError):
        open_add_package(swapped, fk, NOW)


def test_welcome_attribution_is_signed_by_the_inviter() -> None:
    cred, key = client_credential()
    payload = WelcomeAttributionInfoPayload(cred.client_id, new_secret())
    wai = WelcomeAttributionInfo.sign(payload, GROUP, b"welcome", cred, key)
    wai_key = new_secret()
    opened = WelcomeAttributionInfo.open(wai_key, GROUP, wai.seal(wai_key, GROUP))
    opened.verify(GROUP, b"welcome", cred)
    with pytest.raises(SignatureError):
        opened.verify(GROUP, b"another welcome", cred)
    other, _ = client_credential()
    with pytest.raises(ValidationError, match="another client"):
        opened.verify(GROUP, b"welcome", other)


def test_connection_establishment_sealing() -> None:
    sk, pk = SUITE_1.generate_hpke_key_pair()
    sealed = seal_connection_establishment(pk, b"package")
    assert open_connection_establishment(sk, sealed) == b"package"
    with pytest.raises(ValidationError):
        open_connection_establishment(SUITE_1.generate_hpke_key_pair()[0], sealed)
    with pytest.raises(ValidationError):
        seal_connection_establishment(b"not a key", b"package")


def test_client_messages_and_metadata_round_trip() -> None:
    fp = FriendshipPackage("alice", os.urandom(32), new_secret(), new_secret())
    for m in (
        ClientMessage.of_text("héllo"),
        ClientMessage(ClientMessageType.FRIENDSHIP, friendship=fp),
        ClientMessage(ClientMessageType.CONNECTION_DECLINED),
    ):
        assert ClientMessage.decode(m.encode()) == m
    with pytest.raises(DecodeError):
        ClientMessage.decode(b"\x01\x02\xff\xfe")  # text that is not UTF-8
    with pytest.raises(DecodeError):
        ClientMessage.decode(b"\x09")
    ck = new_secret()
    ext = make_metadata_extension(ck, GROUP, GroupMetadata("book club"))
    assert group_metadata((ext,), ck, GROUP) == GroupMetadata("book club")
    assert group_metadata((), ck, GROUP) is None
    with pytest.raises(ValidationError):
        group_metadata((ext,), new_secret(), GROUP)
