"""GroupInfo and Welcome (RFC 9420 §12.4.3) and PSK resolution (§8.4): the pieces both sides share.

Committer side: :func:`sign_group_info`, then :func:`build_welcome` (encrypts the GroupInfo under the
welcome secret and the GroupSecrets to each new member's init key). Joiner side: :func:`open_welcome`
(find our entry and decrypt the GroupSecrets), :func:`decrypt_group_info`, and
:func:`verify_group_info_signature`. The group state machine in :mod:`phx.mls.group` strings them together
with tree validation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from phx.codec import Writer
from phx.crypto import MLS_PREFIX, CipherSuite, HpkeError
from phx.errors import DecodeError, MlsError
from phx.mls.key_schedule import welcome_key_nonce, welcome_secret
from phx.mls.messages import (
    EncryptedGroupSecrets,
    Extension,
    GroupContext,
    GroupInfo,
    GroupSecrets,
    HPKECiphertext,
    KeyPackage,
    PathSecret,
    PreSharedKeyID,
    PSKType,
    ResumptionPSKUsage,
    Welcome,
)
from phx.mls.messages.refs import make_key_package_ref
from phx.mls.psk import psk_secret

__all__ = [
    "GROUP_INFO_TBS",
    "WELCOME_LABEL",
    "NewMemberSecrets",
    "PskStore",
    "ResumptionLookup",
    "UnknownPsk",
    "build_welcome",
    "check_psk_ids",
    "decrypt_group_info",
    "open_welcome",
    "resolve_psk_secret",
    "sign_group_info",
    "verify_group_info_signature",
]

GROUP_INFO_TBS = b"GroupInfoTBS"
WELCOME_LABEL = b"Welcome"


class UnknownPsk(MlsError):
    code = "mls_unknown_psk"


class PskStore(Protocol):
    """The application's external PSKs: ``psk_id`` -> secret, ``None`` if unknown (a dict fits)."""

    def get(self, psk_id: bytes, /) -> bytes | None: ...


#: (psk_group_id, psk_epoch) -> resumption_psk of that epoch, ``None`` if not available.
ResumptionLookup = Callable[[bytes, int], bytes | None]


# --- PSKs -----------------------------------------------------------------------------------------------


def check_psk_ids(cs: CipherSuite, psk_ids: Sequence[PreSharedKeyID], *, allow_reinit_branch: bool) -> None:
    """§8.4/§12.2 rules on a list of PSK ids: nonce length Nh, no id twice, at most one reinit/branch
    resumption PSK (and none unless ``allow_reinit_branch``)."""
    seen: set[bytes] = set()
    special = 0
    for pid in psk_ids:
        if len(pid.psk_nonce) != cs.nh:
            raise MlsError("PSK nonce must be Nh bytes long")
        key = pid.encode()
        if key in seen:
            raise MlsError("the same PSK is referenced twice")
        seen.add(key)
        if pid.psktype == PSKType.RESUMPTION and pid.usage != ResumptionPSKUsage.APPLICATION:
            special += 1
    if special and not allow_reinit_branch:
        raise MlsError("a reinit/branch resumption PSK is only allowed when creating a group")
    if special > 1:
        raise MlsError("at most one reinit/branch resumption PSK")


def resolve_psk_secret(
    cs: CipherSuite,
    psk_ids: Sequence[PreSharedKeyID],
    external: PskStore | None,
    resumption: ResumptionLookup,
) -> bytes | None:
    """``psk_secret`` for ``psk_ids`` in order, ``None`` (= the zero vector) for an empty list.

    Raises :class:`UnknownPsk` if a PSK's value is not available.
    """
    if not psk_ids:
        return None
    values: list[tuple[bytes, bytes]] = []
    for pid in psk_ids:
        value: bytes | None
        if pid.psktype == PSKType.EXTERNAL:
            assert pid.psk_id is not None
            value = external.get(pid.psk_id) if external is not None else None
            if value is None:
                raise UnknownPsk(f"unknown external PSK {pid.psk_id.hex()}")
        else:
            assert pid.psk_group_id is not None and pid.psk_epoch is not None
            value = resumption(pid.psk_group_id, pid.psk_epoch)
            if value is None:
                raise UnknownPsk(
                    f"no resumption PSK for group {pid.psk_group_id.hex()} epoch {pid.psk_epoch}"
                )
        values.append((pid.encode(), value))
    return psk_secret(cs, values)


# --- GroupInfo -------------------------------------------------------------------------------------------


def sign_group_info(
    cs: CipherSuite,
    group_context: GroupContext,
    extensions: Sequence[Extension],
    confirmation_tag: bytes,
    signer: int,
    signature_private_key: bytes,
) -> GroupInfo:
    unsigned = GroupInfo(group_context, tuple(extensions), confirmation_tag, signer, b"")
    return unsigned.with_signature(cs.sign_with_label(signature_private_key, GROUP_INFO_TBS, unsigned.tbs()))


def verify_group_info_signature(cs: CipherSuite, group_info: GroupInfo, signer_public_key: bytes) -> None:
    """Raises :class:`~phx.errors.SignatureError`."""
    cs.check_signature(signer_public_key, GROUP_INFO_TBS, group_info.tbs(), group_info.signature)


# --- Welcome ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NewMemberSecrets:
    """One Welcome recipient: its KeyPackage and the path secret it gets (None for a commit without
    path)."""

    key_package: KeyPackage
    path_secret: bytes | None


def build_welcome(
    cs: CipherSuite,
    group_info: GroupInfo,
    joiner_secret: bytes,
    psk_ids: Sequence[PreSharedKeyID],
    psk_secret_: bytes | None,
    recipients: Sequence[NewMemberSecrets],
) -> Welcome:
    """Encrypt ``group_info`` under the welcome secret and the GroupSecrets to each recipient."""
    key, nonce = welcome_key_nonce(cs, welcome_secret(cs, joiner_secret, psk_secret_))
    encrypted_group_info = cs.seal(key, nonce, b"", group_info.encode())
    psks = tuple(psk_ids)
    entries = []
    # EncryptWithLabel(init_key, "Welcome", encrypted_group_info, .) for every recipient. The HPKE info
    # embeds encrypted_group_info (maybe the whole ratchet tree): the sealer hashes it once, not n times.
    sealer = cs.hpke.sealer(_label_info(WELCOME_LABEL, encrypted_group_info))
    for r in recipients:
        secrets = GroupSecrets(
            joiner_secret, None if r.path_secret is None else PathSecret(r.path_secret), psks
        )
        kem_output, ct = sealer.seal(r.key_package.init_key, b"", secrets.encode())
        ref = make_key_package_ref(cs, r.key_package.encode())
        entries.append(EncryptedGroupSecrets(ref, HPKECiphertext(kem_output, ct)))
    return Welcome(cs.suite_id, tuple(entries), encrypted_group_info)


def _label_info(label: bytes, context: bytes) -> bytes:
    """The ``EncryptContext`` of EncryptWithLabel: opaque label<V> ("MLS 1.0 " + label), opaque context<V>."""
    w = Writer()
    w.opaque(MLS_PREFIX + label)
    w.opaque(context)
    return w.getvalue()


def open_welcome(
    cs: CipherSuite, welcome: Welcome, key_package_ref: bytes, init_private_key: bytes
) -> GroupSecrets:
    """Find the entry for ``key_package_ref`` and decrypt its GroupSecrets."""
    if welcome.cipher_suite != cs.suite_id:
        raise MlsError("the Welcome's cipher suite does not match the KeyPackage's")
    entry = next((e for e in welcome.secrets if e.new_member == key_package_ref), None)
    if entry is None:
        raise MlsError("the Welcome has no entry for this KeyPackage")
    ct = entry.encrypted_group_secrets
    try:
        raw = cs.decrypt_with_label(
            init_private_key, WELCOME_LABEL, welcome.encrypted_group_info, ct.kem_output, ct.ciphertext
        )
    except HpkeError as e:
        raise MlsError(f"cannot decrypt the Welcome's group secrets: {e}") from e
    try:
        return GroupSecrets.decode(raw)
    except DecodeError as e:
        raise MlsError(f"malformed GroupSecrets: {e}") from e


def decrypt_group_info(
    cs: CipherSuite, welcome: Welcome, joiner_secret: bytes, psk_secret_: bytes | None
) -> GroupInfo:
    key, nonce = welcome_key_nonce(cs, welcome_secret(cs, joiner_secret, psk_secret_))
    try:
        raw = cs.open(key, nonce, b"", welcome.encrypted_group_info)
    except HpkeError as e:
        raise MlsError("cannot decrypt the Welcome's GroupInfo") from e
    try:
        gi = GroupInfo.decode(raw)
    except DecodeError as e:
        raise MlsError(f"malformed GroupInfo in Welcome: {e}") from e
    if gi.group_context.cipher_suite != cs.suite_id:
        raise MlsError("the GroupInfo's cipher suite does not match the Welcome's")
    return gi
