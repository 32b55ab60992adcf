"""The MLS key schedule (RFC 9420 §8): from one epoch's inputs to all of its secrets.

The functions take the *encoded* GroupContext so the key schedule does not depend on the wire structs;
callers pass ``group_context.encode()``. Secrets are plain ``bytes``; nothing here keeps state beyond one
:class:`EpochSecrets` value, which the group layer replaces wholesale at every epoch change.

Derivation (§8)::

    joiner_secret = ExpandWithLabel(Extract(init_secret, commit_secret), "joiner", GroupContext, Nh)
    member_secret = Extract(joiner_secret, psk_secret or 0)
    welcome_secret = DeriveSecret(member_secret, "welcome")
    epoch_secret  = ExpandWithLabel(member_secret, "epoch", GroupContext, Nh)
    <secret>      = DeriveSecret(epoch_secret, <label>)      (table in §8)
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from phx.crypto import CipherSuite, HpkeError
from phx.errors import MlsError

__all__ = [
    "ConfirmationTagMismatch",
    "EpochSecrets",
    "MembershipTagMismatch",
    "confirmation_tag",
    "derive_epoch_secrets",
    "epoch_secrets_from_joiner",
    "export_secret",
    "external_init_receive",
    "external_init_send",
    "joiner_secret",
    "membership_tag",
    "verify_confirmation_tag",
    "verify_membership_tag",
    "welcome_key_nonce",
    "welcome_secret",
]

# Label text of §8's "Epoch-Derived Secrets" table (without the "MLS 1.0 " prefix).
_SENDER_DATA = b"sender data"
_ENCRYPTION = b"encryption"
_EXPORTER = b"exporter"
_EXTERNAL = b"external"
_CONFIRM = b"confirm"
_MEMBERSHIP = b"membership"
_RESUMPTION = b"resumption"
_AUTHENTICATION = b"authentication"
_INIT = b"init"

_EXTERNAL_INIT_LABEL = b"MLS 1.0 external init secret"


class ConfirmationTagMismatch(MlsError):
    code = "bad_confirmation_tag"


class MembershipTagMismatch(MlsError):
    code = "bad_membership_tag"


def joiner_secret(cs: CipherSuite, init_secret: bytes, commit_secret: bytes, group_context: bytes) -> bytes:
    """``joiner_secret`` of the new epoch; ``group_context`` is the encoded GroupContext_[n]."""
    prk = cs.extract(init_secret, commit_secret)
    return cs.expand_with_label(prk, b"joiner", group_context, cs.nh)


def _member_secret(cs: CipherSuite, joiner: bytes, psk_secret: bytes | None) -> bytes:
    return cs.extract(joiner, psk_secret if psk_secret is not None else bytes(cs.nh))


def welcome_secret(cs: CipherSuite, joiner: bytes, psk_secret: bytes | None = None) -> bytes:
    return cs.derive_secret(_member_secret(cs, joiner, psk_secret), b"welcome")


def welcome_key_nonce(cs: CipherSuite, welcome_secret_: bytes) -> tuple[bytes, bytes]:
    """Key and nonce sealing ``Welcome.encrypted_group_info`` (§12.4.3.1)."""
    key = cs.expand_with_label(welcome_secret_, b"key", b"", cs.aead.nk)
    nonce = cs.expand_with_label(welcome_secret_, b"nonce", b"", cs.aead.nn)
    return key, nonce


def export_secret(
    cs: CipherSuite, exporter_secret: bytes, label: bytes, context: bytes, length: int
) -> bytes:
    """MLS-Exporter (§8.5). ``label`` is the application's label, bytes without any prefix."""
    return cs.expand_with_label(
        cs.derive_secret(exporter_secret, label), b"exported", cs.hash(context), length
    )


@dataclass(frozen=True, slots=True)
class EpochSecrets:
    """Every secret of one epoch (§8). ``init_secret`` is the next epoch's ``init_secret_[n]``."""

    cs: CipherSuite
    joiner_secret: bytes
    welcome_secret: bytes
    epoch_secret: bytes
    sender_data_secret: bytes
    encryption_secret: bytes
    exporter_secret: bytes
    external_secret: bytes
    confirmation_key: bytes
    membership_key: bytes
    resumption_psk: bytes
    epoch_authenticator: bytes
    init_secret: bytes

    def __repr__(self) -> str:
        # Never print secrets into logs or tracebacks.
        return f"EpochSecrets({self.cs.name})"

    def external_key_pair(self) -> tuple[bytes, bytes]:
        """``(external_priv, external_pub) = KEM.DeriveKeyPair(external_secret)``."""
        return self.cs.derive_hpke_key_pair(self.external_secret)

    def external_pub(self) -> bytes:
        return self.external_key_pair()[1]

    def export(self, label: bytes, context: bytes, length: int) -> bytes:
        return export_secret(self.cs, self.exporter_secret, label, context, length)

    def confirmation_tag(self, confirmed_transcript_hash: bytes) -> bytes:
        return confirmation_tag(self.cs, self.confirmation_key, confirmed_transcript_hash)

    def verify_confirmation_tag(self, confirmed_transcript_hash: bytes, tag: bytes) -> None:
        verify_confirmation_tag(self.cs, self.confirmation_key, confirmed_transcript_hash, tag)

    def membership_tag(self, authenticated_content_tbm: bytes) -> bytes:
        return membership_tag(self.cs, self.membership_key, authenticated_content_tbm)

    def verify_membership_tag(self, authenticated_content_tbm: bytes, tag: bytes) -> None:
        verify_membership_tag(self.cs, self.membership_key, authenticated_content_tbm, tag)


def epoch_secrets_from_joiner(
    cs: CipherSuite, joiner: bytes, group_context: bytes, psk_secret: bytes | None = None
) -> EpochSecrets:
    """The epoch as a joiner sees it: from ``joiner_secret`` (from GroupSecrets) onwards."""
    member = _member_secret(cs, joiner, psk_secret)
    epoch = cs.expand_with_label(member, b"epoch", group_context, cs.nh)
    d = cs.derive_secret
    return EpochSecrets(
        cs=cs,
        joiner_secret=joiner,
        welcome_secret=cs.derive_secret(member, b"welcome"),
        epoch_secret=epoch,
        sender_data_secret=d(epoch, _SENDER_DATA),
        encryption_secret=d(epoch, _ENCRYPTION),
        exporter_secret=d(epoch, _EXPORTER),
        external_secret=d(epoch, _EXTERNAL),
        confirmation_key=d(epoch, _CONFIRM),
        membership_key=d(epoch, _MEMBERSHIP),
        resumption_psk=d(epoch, _RESUMPTION),
        epoch_authenticator=d(epoch, _AUTHENTICATION),
        init_secret=d(epoch, _INIT),
    )


def derive_epoch_secrets(
    cs: CipherSuite,
    init_secret: bytes,
    commit_secret: bytes | None,
    group_context: bytes,
    psk_secret: bytes | None = None,
) -> EpochSecrets:
    """The epoch as a member sees it. ``commit_secret=None`` means the all-zero vector (no path)."""
    commit = commit_secret if commit_secret is not None else bytes(cs.nh)
    return epoch_secrets_from_joiner(
        cs, joiner_secret(cs, init_secret, commit, group_context), group_context, psk_secret
    )


# --- MACs ---------------------------------------------------------------------------------------------


def confirmation_tag(cs: CipherSuite, confirmation_key: bytes, confirmed_transcript_hash: bytes) -> bytes:
    return cs.mac(confirmation_key, confirmed_transcript_hash)


def verify_confirmation_tag(
    cs: CipherSuite, confirmation_key: bytes, confirmed_transcript_hash: bytes, tag: bytes
) -> None:
    if not hmac.compare_digest(cs.mac(confirmation_key, confirmed_transcript_hash), tag):
        raise ConfirmationTagMismatch("confirmation tag does not match the confirmed transcript hash")


def membership_tag(cs: CipherSuite, membership_key: bytes, authenticated_content_tbm: bytes) -> bytes:
    """``MAC(membership_key, AuthenticatedContentTBM)`` (§6.2); the TBM is passed encoded."""
    return cs.mac(membership_key, authenticated_content_tbm)


def verify_membership_tag(
    cs: CipherSuite, membership_key: bytes, authenticated_content_tbm: bytes, tag: bytes
) -> None:
    if not hmac.compare_digest(cs.mac(membership_key, authenticated_content_tbm), tag):
        raise MembershipTagMismatch("membership tag is invalid")


# --- external initialization (§8.3) -----------------------------------------------------------------


def external_init_send(cs: CipherSuite, external_pub: bytes) -> tuple[bytes, bytes]:
    """Joiner side of an external commit: return ``(kem_output, init_secret)``."""
    kem_output, ctx = cs.hpke.setup_base_s(external_pub, b"")
    return kem_output, ctx.export(_EXTERNAL_INIT_LABEL, cs.nh)


def external_init_receive(cs: CipherSuite, external_priv: bytes, kem_output: bytes) -> bytes:
    """Member side of an ExternalInit proposal: the ``init_secret`` the joiner chose."""
    try:
        ctx = cs.hpke.setup_base_r(kem_output, external_priv, b"")
    except HpkeError as e:
        raise MlsError(f"ExternalInit kem_output is invalid: {e}") from e
    return ctx.export(_EXTERNAL_INIT_LABEL, cs.nh)
