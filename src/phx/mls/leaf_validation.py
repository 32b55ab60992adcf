"""LeafNode and KeyPackage validation against a group (RFC 9420 §7.3, §10, §13.4).

Secret-free and shared by the client group and the DS's public group. The checks that concern one leaf
alone live here; the checks that concern the leaf *and the other members* (credential types supported by
everyone, unique keys) take the group's :class:`MemberSupport` and :class:`~phx.mls.tree.RatchetTree`.

:class:`MemberSupport` keeps counters of the credential types in use and of the credential capability
lists, so the "supported by all members" rule costs O(distinct capability lists) per new leaf instead of
a scan of the whole tree on every commit.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import TypeVar

from phx.crypto import CipherSuite
from phx.errors import DecodeError, MlsError
from phx.mls.messages import (
    Extension,
    ExtensionType,
    KeyPackage,
    LeafNode,
    LeafNodeSource,
    ProtocolVersion,
)
from phx.mls.messages.extensions import (
    RequiredCapabilities,
    find_extension,
    parse_external_senders,
    parse_required_capabilities,
)
from phx.mls.tree import RatchetTree
from phx.mls.tree_validation import DEFAULT_EXTENSION_TYPES, DEFAULT_PROPOSAL_TYPES

__all__ = [
    "InvalidKeyPackage",
    "InvalidLeafNode",
    "InvalidExtensions",
    "MemberSupport",
    "CredentialCheck",
    "check_extension_list",
    "check_group_context_extensions",
    "check_leaf_supports_group",
    "group_required_capabilities",
    "validate_key_package",
    "validate_leaf_node",
    "verify_leaf_node_signature",
]

K = TypeVar("K", bound=Hashable)

LEAF_NODE_TBS = b"LeafNodeTBS"
KEY_PACKAGE_TBS = b"KeyPackageTBS"

#: Application credential validation (§5.3.1): called with the leaf, raises to reject it.
CredentialCheck = Callable[[LeafNode], None]


class InvalidLeafNode(MlsError):
    code = "mls_invalid_leaf_node"


class InvalidKeyPackage(MlsError):
    code = "mls_invalid_key_package"


class InvalidExtensions(MlsError):
    code = "mls_invalid_extensions"


# --- extensions ---------------------------------------------------------------------------------------


def check_extension_list(extensions: Sequence[Extension], where: str) -> None:
    """§13.4: a list of extensions carries at most one extension of each type."""
    seen: set[int] = set()
    for e in extensions:
        if e.extension_type in seen:
            raise InvalidExtensions(f"{where}: extension type {e.extension_type} appears twice")
        seen.add(e.extension_type)


def group_required_capabilities(extensions: Sequence[Extension]) -> RequiredCapabilities | None:
    """The group's required_capabilities, if any; malformed data is an :class:`InvalidExtensions`."""
    ext = find_extension(extensions, ExtensionType.REQUIRED_CAPABILITIES)
    if ext is None:
        return None
    try:
        return parse_required_capabilities(ext)
    except DecodeError as e:
        raise InvalidExtensions(f"malformed required_capabilities extension: {e}") from e


def check_group_context_extensions(extensions: Sequence[Extension]) -> RequiredCapabilities | None:
    """Well-formedness of a GroupContext extension list (GCE proposal, GroupInfo).

    No duplicate types; required_capabilities and external_senders must parse (§11.1, §12.1.8.1).
    Returns the required_capabilities.
    """
    check_extension_list(extensions, "group context")
    ext = find_extension(extensions, ExtensionType.EXTERNAL_SENDERS)
    if ext is not None:
        try:
            senders = parse_external_senders(ext)
        except DecodeError as e:
            raise InvalidExtensions(f"malformed external_senders extension: {e}") from e
        keys = [s.signature_key for s in senders]
        if len(set(keys)) != len(keys):
            raise InvalidExtensions("external_senders lists a signature key twice")
    return group_required_capabilities(extensions)


def check_leaf_supports_group(
    leaf: LeafNode,
    extensions: Sequence[Extension],
    required: RequiredCapabilities | None,
    where: str,
    error: type[MlsError] = InvalidLeafNode,
) -> None:
    """The leaf supports every group context extension and the required capabilities (§7.3, §13.4)."""
    caps = leaf.capabilities
    for e in extensions:
        t = e.extension_type
        if t not in DEFAULT_EXTENSION_TYPES and t not in caps.extensions:
            raise error(f"{where}: does not support group context extension {t}")
    if required is None:
        return
    for t in required.extension_types:
        if t not in DEFAULT_EXTENSION_TYPES and t not in caps.extensions:
            raise error(f"{where}: lacks required extension {t}")
    for t in required.proposal_types:
        if t not in DEFAULT_PROPOSAL_TYPES and t not in caps.proposals:
            raise error(f"{where}: lacks required proposal type {t}")
    for t in required.credential_types:
        if t not in caps.credentials:
            raise error(f"{where}: lacks required credential type {t}")


# --- the members' credential support -----------------------------------------------------------------


class MemberSupport:
    """Credential types in use and credential capabilities of a set of members, as counters.

    ``supported`` (types every member lists) is the intersection over the *distinct* capability lists,
    which are few in practice, so it is cheap to recompute after each change.
    """

    __slots__ = ("_used", "_caps", "_supported")

    def __init__(self, leaves: Iterable[LeafNode] = ()) -> None:
        self._used: Counter[int] = Counter()
        self._caps: Counter[tuple[int, ...]] = Counter()
        self._supported: frozenset[int] | None = None
        for leaf in leaves:
            self.add(leaf)

    @classmethod
    def of_tree(cls, tree: RatchetTree) -> MemberSupport:
        return cls(leaf for _, leaf in tree.leaves())

    def copy(self) -> MemberSupport:
        m = MemberSupport.__new__(MemberSupport)
        m._used = self._used.copy()
        m._caps = self._caps.copy()
        m._supported = self._supported
        return m

    def add(self, leaf: LeafNode) -> None:
        self._used[leaf.credential.credential_type] += 1
        self._caps[leaf.capabilities.credentials] += 1
        self._supported = None

    def remove(self, leaf: LeafNode) -> None:
        _decrement(self._used, leaf.credential.credential_type)
        _decrement(self._caps, leaf.capabilities.credentials)
        self._supported = None

    def replace(self, old: LeafNode | None, new: LeafNode | None) -> None:
        if old is not None:
            self.remove(old)
        if new is not None:
            self.add(new)

    @property
    def used(self) -> frozenset[int]:
        return frozenset(self._used)

    @property
    def supported(self) -> frozenset[int]:
        s = self._supported
        if s is None:
            lists = iter(self._caps)
            first = next(lists, None)
            acc = set(first) if first is not None else set()
            for caps in lists:
                acc.intersection_update(caps)
            s = self._supported = frozenset(acc)
        return s

    def check(self, leaf: LeafNode, where: str) -> None:
        """§7.3: the leaf's credential type is supported by all members (this one included), and it
        supports every credential type in use."""
        t = leaf.credential.credential_type
        if t not in self.supported or t not in leaf.capabilities.credentials:
            raise InvalidLeafNode(f"{where}: credential type {t} is not supported by every member")
        caps = leaf.capabilities.credentials
        missing = [u for u in self._used if u not in caps]
        if missing:
            raise InvalidLeafNode(f"{where}: does not support credential types in use {sorted(missing)}")


def _decrement(counter: Counter[K], key: K) -> None:
    n = counter[key] - 1
    if n > 0:
        counter[key] = n
    else:
        counter.pop(key, None)


# --- leaf nodes ---------------------------------------------------------------------------------------


def verify_leaf_node_signature(
    cs: CipherSuite, leaf: LeafNode, group_id: bytes | None, leaf_index: int | None, where: str
) -> None:
    if leaf.leaf_node_source == LeafNodeSource.KEY_PACKAGE:
        tbs = leaf.tbs()
    else:
        if group_id is None or leaf_index is None:
            raise InvalidLeafNode(f"{where}: an update/commit leaf needs its group and leaf index")
        tbs = leaf.tbs(group_id, leaf_index)
    if not cs.verify_with_label(leaf.signature_key, LEAF_NODE_TBS, tbs, leaf.signature):
        raise InvalidLeafNode(f"{where}: invalid LeafNode signature")


def validate_leaf_node(
    cs: CipherSuite,
    leaf: LeafNode,
    *,
    source: LeafNodeSource,
    group_id: bytes | None = None,
    leaf_index: int | None = None,
    extensions: Sequence[Extension] = (),
    required: RequiredCapabilities | None = None,
    now: int | None = None,
    tree: RatchetTree | None = None,
    replaces: int | None = None,
    support: MemberSupport | None = None,
    check_credential: CredentialCheck | None = None,
) -> None:
    """The checks of §7.3 for one LeafNode arriving in a KeyPackage, Update or Commit.

    ``source``: the expected leaf_node_source. ``group_id``/``leaf_index`` bind update and commit
    leaves' signatures. ``extensions``/``required``: the group context's extensions and
    required_capabilities (pass ``required=None`` to derive it from ``extensions``). ``now``: Unix
    seconds, enables the lifetime check of key_package leaves. ``tree``: checks that the encryption and
    signature keys are unique among the members, where leaf ``replaces`` (the leaf being replaced, if
    any) does not count. ``support``: the members' credential support the leaf must fit.
    """
    where = f"leaf {leaf_index}" if leaf_index is not None else "leaf node"
    if leaf.leaf_node_source != source:
        got = leaf.leaf_node_source.name.lower()
        raise InvalidLeafNode(f"{where}: leaf_node_source is {got}, expected {source.name.lower()}")
    if check_credential is not None:
        check_credential(leaf)
    caps = leaf.capabilities
    ctype = leaf.credential.credential_type
    if ctype not in caps.credentials:
        raise InvalidLeafNode(f"{where}: credential type {ctype} not in its capabilities")
    check_extension_list(leaf.extensions, where)
    for ext in leaf.extensions:
        t = ext.extension_type
        if t not in DEFAULT_EXTENSION_TYPES and t not in caps.extensions:
            raise InvalidLeafNode(f"{where}: extension {t} not in its capabilities")
    if required is None:
        required = group_required_capabilities(extensions)
    check_leaf_supports_group(leaf, extensions, required, where)
    if now is not None and leaf.lifetime is not None:
        if not leaf.lifetime.not_before <= now <= leaf.lifetime.not_after:
            raise InvalidLeafNode(f"{where}: outside its lifetime")
    verify_leaf_node_signature(cs, leaf, group_id, leaf_index, where)
    if tree is not None:
        own = None if replaces is None else 2 * replaces
        owner = tree.encryption_key_owner(leaf.encryption_key)
        if owner is not None and owner != own:
            raise InvalidLeafNode(f"{where}: encryption key already used by node {owner}")
        sig_owner = tree.signature_key_owner(leaf.signature_key)
        if sig_owner is not None and sig_owner != replaces:
            raise InvalidLeafNode(f"{where}: signature key already used by leaf {sig_owner}")
    if support is not None:
        support.check(leaf, where)


# --- key packages -------------------------------------------------------------------------------------


def validate_key_package(
    cs: CipherSuite,
    kp: KeyPackage,
    *,
    now: int | None = None,
    extensions: Sequence[Extension] = (),
    required: RequiredCapabilities | None = None,
    check_credential: CredentialCheck | None = None,
) -> None:
    """§10: version and suite match the group (``cs``), the leaf is a valid key_package leaf, the
    KeyPackage signature verifies, and init_key differs from the leaf's encryption key.

    Checks against other members (unique keys, credential support) are the caller's, with the tree.
    """
    if kp.version != ProtocolVersion.MLS10:
        raise InvalidKeyPackage(f"KeyPackage version {kp.version} does not match the group's")
    if kp.cipher_suite != cs.suite_id:
        raise InvalidKeyPackage(f"KeyPackage cipher suite {kp.cipher_suite} does not match the group's")
    check_extension_list(kp.extensions, "KeyPackage")
    try:
        validate_leaf_node(
            cs,
            kp.leaf_node,
            source=LeafNodeSource.KEY_PACKAGE,
            extensions=extensions,
            required=required,
            now=now,
            check_credential=check_credential,
        )
    except InvalidLeafNode as e:
        raise InvalidKeyPackage(f"KeyPackage leaf node: {e}") from e
    if not cs.verify_with_label(kp.leaf_node.signature_key, KEY_PACKAGE_TBS, kp.tbs(), kp.signature):
        raise InvalidKeyPackage("invalid KeyPackage signature")
    if kp.init_key == kp.leaf_node.encryption_key:
        raise InvalidKeyPackage("KeyPackage init_key equals the leaf's encryption_key")
