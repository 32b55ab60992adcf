"""The well-known extensions' data structs (RFC 9420 §12.4.3.3, §11.1, §12.4.3.2, §12.1.8.1, §5.3.3).

Each extension's ``extension_data`` is the encoding of one struct; ``make_*`` build the :class:`Extension`,
``parse_*`` decode its data (raising :class:`~phx.errors.DecodeError`), :func:`find_extension` looks one
up by type.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from phx.codec import Reader, Struct, Writer, decode_all
from phx.mls.messages.common import Credential, Extension, ExtensionType, read_u16_list
from phx.mls.messages.tree_structs import Node, RatchetTree, decode_ratchet_tree, encode_ratchet_tree

__all__ = [
    "ApplicationId",
    "RequiredCapabilities",
    "ExternalPub",
    "ExternalSender",
    "find_extension",
    "make_ratchet_tree_extension",
    "parse_ratchet_tree_extension",
    "make_external_senders_extension",
    "parse_external_senders",
    "make_required_capabilities_extension",
    "parse_required_capabilities",
    "make_external_pub_extension",
    "parse_external_pub",
    "make_application_id_extension",
    "parse_application_id",
]


@dataclass(frozen=True, slots=True)
class ApplicationId(Struct):
    application_id: bytes


@dataclass(frozen=True, slots=True)
class RequiredCapabilities(Struct):
    """All three lists are open uint16 registries, kept as plain ints."""

    extension_types: tuple[int, ...] = ()
    proposal_types: tuple[int, ...] = ()
    credential_types: tuple[int, ...] = ()

    def _write(self, w: Writer) -> None:
        for items in (self.extension_types, self.proposal_types, self.credential_types):
            w.opaque(b"".join(v.to_bytes(2, "big") for v in items))

    @classmethod
    def _read(cls, r: Reader) -> RequiredCapabilities:
        return cls(read_u16_list(r), read_u16_list(r), read_u16_list(r))


@dataclass(frozen=True, slots=True)
class ExternalPub(Struct):
    external_pub: bytes


@dataclass(frozen=True, slots=True)
class ExternalSender(Struct):
    signature_key: bytes
    credential: Credential


def find_extension(extensions: Iterable[Extension], extension_type: int) -> Extension | None:
    for e in extensions:
        if e.extension_type == extension_type:
            return e
    return None


def make_ratchet_tree_extension(nodes: Sequence[Node | None]) -> Extension:
    return Extension(ExtensionType.RATCHET_TREE, encode_ratchet_tree(nodes))


def parse_ratchet_tree_extension(ext: Extension) -> RatchetTree:
    return decode_ratchet_tree(ext.extension_data)


def make_external_senders_extension(senders: Sequence[ExternalSender]) -> Extension:
    w = Writer()
    w.vector(senders, Writer.struct)
    return Extension(ExtensionType.EXTERNAL_SENDERS, w.getvalue())


def parse_external_senders(ext: Extension) -> tuple[ExternalSender, ...]:
    def read(r: Reader) -> tuple[ExternalSender, ...]:
        return r.vector(ExternalSender.read)

    return decode_all(read, ext.extension_data)


def make_required_capabilities_extension(rc: RequiredCapabilities) -> Extension:
    return Extension(ExtensionType.REQUIRED_CAPABILITIES, rc.encode())


def parse_required_capabilities(ext: Extension) -> RequiredCapabilities:
    return RequiredCapabilities.decode(ext.extension_data)


def make_external_pub_extension(external_pub: bytes) -> Extension:
    return Extension(ExtensionType.EXTERNAL_PUB, ExternalPub(external_pub).encode())


def parse_external_pub(ext: Extension) -> bytes:
    return ExternalPub.decode(ext.extension_data).external_pub


def make_application_id_extension(application_id: bytes) -> Extension:
    return Extension(ExtensionType.APPLICATION_ID, ApplicationId(application_id).encode())


def parse_application_id(ext: Extension) -> bytes:
    return ApplicationId.decode(ext.extension_data).application_id
