"""``MLSMessage`` (RFC 9420 §6): version, wire format, and the body the wire format selects."""

from __future__ import annotations

from dataclasses import dataclass

from phx.codec import Reader, Struct, Writer
from phx.errors import DecodeError
from phx.mls.messages.common import ProtocolVersion, WireFormat
from phx.mls.messages.framing_structs import PrivateMessage, PublicMessage
from phx.mls.messages.group_structs import GroupInfo, Welcome
from phx.mls.messages.leaf import KeyPackage

__all__ = ["MLSMessageBody", "MLSMessage", "wire_format_of"]

MLSMessageBody = PublicMessage | PrivateMessage | Welcome | GroupInfo | KeyPackage

_BODY_CLASSES: dict[int, type[MLSMessageBody]] = {
    WireFormat.PUBLIC_MESSAGE: PublicMessage,
    WireFormat.PRIVATE_MESSAGE: PrivateMessage,
    WireFormat.WELCOME: Welcome,
    WireFormat.GROUP_INFO: GroupInfo,
    WireFormat.KEY_PACKAGE: KeyPackage,
}
_WIRE_FORMATS: dict[type, WireFormat] = {cls: WireFormat(wf) for wf, cls in _BODY_CLASSES.items()}


def wire_format_of(body: MLSMessageBody) -> WireFormat:
    return _WIRE_FORMATS[type(body)]


@dataclass(frozen=True, slots=True)
class MLSMessage(Struct):
    body: MLSMessageBody
    version: ProtocolVersion = ProtocolVersion.MLS10

    @property
    def wire_format(self) -> WireFormat:
        return wire_format_of(self.body)

    @property
    def public_message(self) -> PublicMessage | None:
        b = self.body
        return b if isinstance(b, PublicMessage) else None

    @property
    def private_message(self) -> PrivateMessage | None:
        b = self.body
        return b if isinstance(b, PrivateMessage) else None

    @property
    def welcome(self) -> Welcome | None:
        b = self.body
        return b if isinstance(b, Welcome) else None

    @property
    def group_info(self) -> GroupInfo | None:
        b = self.body
        return b if isinstance(b, GroupInfo) else None

    @property
    def key_package(self) -> KeyPackage | None:
        b = self.body
        return b if isinstance(b, KeyPackage) else None

    def _write(self, w: Writer) -> None:
        w.u16(self.version)
        w.u16(wire_format_of(self.body))
        self.body._write(w)

    @classmethod
    def _read(cls, r: Reader) -> MLSMessage:
        version = ProtocolVersion.read(r)
        wf = r.u16()
        body_cls = _BODY_CLASSES.get(wf)
        if body_cls is None:
            raise DecodeError(f"unknown WireFormat value {wf}")
        return cls(body_cls._read(r), version)
