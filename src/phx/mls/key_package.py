"""KeyPackages (RFC 9420 §10) and the private keys that go with them.

:func:`create_key_package` builds and signs a KeyPackage for a caller-supplied credential; the three
private keys (HPKE init key, leaf encryption key, signature key) come back together in a
:class:`KeyPackageBundle`, which the client stores until a Welcome that uses the KeyPackage arrives
(and can persist with :meth:`KeyPackageBundle.to_bytes`).

Validation of KeyPackages received from others (§10.1) lives in :mod:`phx.mls.commit_core`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from phx.codec import Reader, Writer, decode_all
from phx.crypto import CipherSuite, suite
from phx.errors import MlsError
from phx.mls.messages import (
    Capabilities,
    Credential,
    Extension,
    KeyPackage,
    LeafNode,
    LeafNodeSource,
    Lifetime,
    ProtocolVersion,
    find_extension,
)
from phx.mls.messages.refs import make_key_package_ref
from phx.mls.tree_validation import DEFAULT_EXTENSION_TYPES, DEFAULT_PROPOSAL_TYPES

__all__ = [
    "CredentialValidator",
    "DEFAULT_LIFETIME",
    "KeyPackageBundle",
    "LAST_RESORT_EXTENSION_TYPE",
    "NOT_BEFORE_SKEW",
    "create_key_package",
    "credential_check",
    "default_capabilities",
    "is_last_resort",
    "key_package_ref",
    "sign_leaf_node",
]

#: ``last_resort`` KeyPackage extension. RFC 9420 does not define it; the MLS extensions draft
#: (draft-ietf-mls-extensions, IANA "MLS Extension Types") registers it as 0x000A with empty data.
LAST_RESORT_EXTENSION_TYPE = 0x000A

#: Default validity of a KeyPackage's leaf (seconds).
DEFAULT_LIFETIME = 90 * 24 * 3600
#: ``not_before`` is back-dated by this much so peers with slightly slow clocks accept the leaf.
NOT_BEFORE_SKEW = 3600

#: Application hook validating a credential together with the signature key it is bound to (§5.3.1).
#: It raises (any :class:`~phx.errors.PhxError`) to reject; the MLS layer calls it for every credential
#: it accepts into a group: tree members on join, Add / Update / commit-path leaves, external joiners.
CredentialValidator = Callable[[Credential, bytes], None]

_KEY_PACKAGE_TBS = b"KeyPackageTBS"
_LEAF_NODE_TBS = b"LeafNodeTBS"


def credential_check(validator: CredentialValidator | None) -> Callable[[LeafNode], None] | None:
    """Adapt a :data:`CredentialValidator` to the leaf-based hook of :mod:`phx.mls.leaf_validation`."""
    if validator is None:
        return None

    def check(leaf: LeafNode) -> None:
        validator(leaf.credential, leaf.signature_key)

    return check


def default_capabilities(
    cs: CipherSuite,
    credential_type: int,
    *,
    extensions: Iterable[int] = (),
    proposals: Iterable[int] = (),
    credentials: Iterable[int] = (),
) -> Capabilities:
    """Capabilities advertising ``cs``, the credential type and any non-default types listed.

    RFC 9420 §7.2: the default extension and proposal types are implied and must not be listed.
    """
    exts = sorted({t for t in extensions if t not in DEFAULT_EXTENSION_TYPES})
    props = sorted({t for t in proposals if t not in DEFAULT_PROPOSAL_TYPES})
    creds = sorted({credential_type, *credentials})
    return Capabilities(
        versions=(ProtocolVersion.MLS10,),
        cipher_suites=(cs.suite_id,),
        extensions=tuple(exts),
        proposals=tuple(props),
        credentials=tuple(creds),
    )


def sign_leaf_node(
    cs: CipherSuite,
    unsigned: LeafNode,
    signature_private_key: bytes,
    group_id: bytes | None = None,
    leaf_index: int | None = None,
) -> LeafNode:
    """Sign ``unsigned`` (its ``signature`` field is ignored); update/commit leaves bind group and index."""
    tbs = unsigned.tbs(group_id, leaf_index)
    return unsigned.with_signature(cs.sign_with_label(signature_private_key, _LEAF_NODE_TBS, tbs))


def key_package_ref(cs: CipherSuite, key_package: KeyPackage) -> bytes:
    return make_key_package_ref(cs, key_package.encode())


def is_last_resort(key_package: KeyPackage) -> bool:
    return find_extension(key_package.extensions, LAST_RESORT_EXTENSION_TYPE) is not None


@dataclass(frozen=True, slots=True)
class KeyPackageBundle:
    """A KeyPackage with its three private keys. ``repr`` never shows the keys."""

    key_package: KeyPackage
    init_private_key: bytes
    encryption_private_key: bytes
    signature_private_key: bytes

    def __repr__(self) -> str:
        return f"KeyPackageBundle(suite={self.key_package.cipher_suite}, last_resort={self.last_resort})"

    @property
    def cipher_suite(self) -> CipherSuite:
        return suite(self.key_package.cipher_suite)

    @property
    def last_resort(self) -> bool:
        return is_last_resort(self.key_package)

    @property
    def leaf_node(self) -> LeafNode:
        return self.key_package.leaf_node

    def ref(self) -> bytes:
        """The KeyPackageRef naming this KeyPackage in a Welcome."""
        return key_package_ref(self.cipher_suite, self.key_package)

    def check_keys(self) -> None:
        """The private keys match the KeyPackage's public keys (raises :class:`MlsError`)."""
        cs = self.cipher_suite
        kp = self.key_package
        if cs.hpke_public_key(self.init_private_key) != kp.init_key:
            raise MlsError("init private key does not match the KeyPackage's init_key")
        if cs.hpke_public_key(self.encryption_private_key) != kp.leaf_node.encryption_key:
            raise MlsError("encryption private key does not match the leaf's encryption_key")
        if cs.signature_public_key(self.signature_private_key) != kp.leaf_node.signature_key:
            raise MlsError("signature private key does not match the leaf's signature_key")

    def to_bytes(self) -> bytes:
        w = Writer()
        w.u8(1)  # format version
        self.key_package._write(w)
        w.opaque(self.init_private_key)
        w.opaque(self.encryption_private_key)
        w.opaque(self.signature_private_key)
        return w.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> KeyPackageBundle:
        def read(r: Reader) -> KeyPackageBundle:
            if r.u8() != 1:
                raise MlsError("unknown KeyPackageBundle format")
            return cls(KeyPackage._read(r), r.opaque(), r.opaque(), r.opaque())

        return decode_all(read, data)


def create_key_package(
    cs: CipherSuite,
    credential: Credential,
    signature_private_key: bytes,
    *,
    now: int,
    lifetime: int = DEFAULT_LIFETIME,
    not_before: int | None = None,
    capabilities: Capabilities | None = None,
    leaf_extensions: Iterable[Extension] = (),
    extensions: Iterable[Extension] = (),
    last_resort: bool = False,
    init_private_key: bytes | None = None,
    encryption_private_key: bytes | None = None,
) -> KeyPackageBundle:
    """Build and sign a KeyPackage (§10) with fresh init and encryption keys.

    ``extensions`` go into the KeyPackage (e.g. the Phoenix QueueConfig extension), ``leaf_extensions``
    into its LeafNode; any type is allowed. Without explicit ``capabilities`` the leaf advertises ``cs``,
    the credential's type and every non-default extension type it carries (so others may set them in
    the group too). ``last_resort`` adds the last_resort extension.
    """
    leaf_exts = tuple(leaf_extensions)
    kp_exts = tuple(extensions)
    if last_resort and find_extension(kp_exts, LAST_RESORT_EXTENSION_TYPE) is None:
        kp_exts = (*kp_exts, Extension(LAST_RESORT_EXTENSION_TYPE, b""))
    if capabilities is None:
        capabilities = default_capabilities(
            cs,
            credential.credential_type,
            extensions=[e.extension_type for e in (*leaf_exts, *kp_exts)],
        )
    if credential.credential_type not in capabilities.credentials:
        raise MlsError("the credential's type must be listed in the leaf's capabilities")
    for e in leaf_exts:
        if (
            e.extension_type not in DEFAULT_EXTENSION_TYPES
            and e.extension_type not in capabilities.extensions
        ):
            raise MlsError(f"leaf extension {e.extension_type} must be listed in the leaf's capabilities")
    if init_private_key is None:
        init_private_key, init_key = cs.generate_hpke_key_pair()
    else:
        init_key = cs.hpke_public_key(init_private_key)
    if encryption_private_key is None:
        encryption_private_key, encryption_key = cs.generate_hpke_key_pair()
    else:
        encryption_key = cs.hpke_public_key(encryption_private_key)
    if init_key == encryption_key:
        raise MlsError("init key and encryption key must differ")
    start = now - NOT_BEFORE_SKEW if not_before is None else not_before
    leaf = sign_leaf_node(
        cs,
        LeafNode(
            encryption_key=encryption_key,
            signature_key=cs.signature_public_key(signature_private_key),
            credential=credential,
            capabilities=capabilities,
            leaf_node_source=LeafNodeSource.KEY_PACKAGE,
            lifetime=Lifetime(max(start, 0), now + lifetime),
            parent_hash=None,
            extensions=leaf_exts,
            signature=b"",
        ),
        signature_private_key,
    )
    unsigned = KeyPackage(ProtocolVersion.MLS10, cs.suite_id, init_key, leaf, kp_exts, b"")
    kp = unsigned.with_signature(cs.sign_with_label(signature_private_key, _KEY_PACKAGE_TBS, unsigned.tbs()))
    return KeyPackageBundle(kp, init_private_key, encryption_private_key, signature_private_key)
