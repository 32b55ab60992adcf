"""Message framing structs (RFC 9420 §6, §8.2): Sender, FramedContent, PublicMessage, PrivateMessage, ...

A framed body is ``bytes`` (application data), a :class:`Proposal` or a :class:`Commit`; its
``content_type`` follows from the body's class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from phx.codec import Fixed, Reader, Struct, Writer, decode_all
from phx.errors import DecodeError
from phx.mls.messages.common import ContentType, ProtocolVersion, SenderType, Uint32, Uint64, WireFormat
from phx.mls.messages.proposals import Commit, Proposal
from phx.mls.messages.tree_structs import GroupContext

__all__ = [
    "Sender",
    "FramedBody",
    "content_type_of",
    "FramedContent",
    "framed_content_tbs",
    "FramedContentAuthData",
    "AuthenticatedContent",
    "authenticated_content_tbm",
    "PublicMessage",
    "PrivateMessage",
    "PrivateMessageContent",
    "SenderData",
    "SenderDataAAD",
    "PrivateContentAAD",
    "ConfirmedTranscriptHashInput",
    "InterimTranscriptHashInput",
]

FramedBody = bytes | Proposal | Commit

_INDEXED = (SenderType.MEMBER, SenderType.EXTERNAL)


@dataclass(frozen=True, slots=True)
class Sender(Struct):
    """``Sender``: ``index`` is the leaf index (member) or sender index (external), else ``None``."""

    sender_type: SenderType
    index: int | None = None

    def __post_init__(self) -> None:
        if (self.index is not None) != (self.sender_type in _INDEXED):
            raise ValueError(
                f"Sender: index must be set exactly for member/external, not {self.sender_type!r}"
            )

    @classmethod
    def member(cls, leaf_index: int) -> Sender:
        return cls(SenderType.MEMBER, leaf_index)

    @classmethod
    def external(cls, sender_index: int) -> Sender:
        return cls(SenderType.EXTERNAL, sender_index)

    @classmethod
    def new_member_proposal(cls) -> Sender:
        return cls(SenderType.NEW_MEMBER_PROPOSAL)

    @classmethod
    def new_member_commit(cls) -> Sender:
        return cls(SenderType.NEW_MEMBER_COMMIT)

    @property
    def leaf_index(self) -> int | None:
        return self.index if self.sender_type == SenderType.MEMBER else None

    @property
    def sender_index(self) -> int | None:
        return self.index if self.sender_type == SenderType.EXTERNAL else None

    def _write(self, w: Writer) -> None:
        w.u8(self.sender_type)
        if self.index is not None:
            w.u32(self.index)

    @classmethod
    def _read(cls, r: Reader) -> Sender:
        t = SenderType.read(r)
        return cls(t, r.u32() if t in _INDEXED else None)


def content_type_of(body: FramedBody) -> ContentType:
    if isinstance(body, bytes):
        return ContentType.APPLICATION
    if isinstance(body, Proposal):
        return ContentType.PROPOSAL
    return ContentType.COMMIT


def _write_body(w: Writer, body: FramedBody) -> None:
    if isinstance(body, bytes):
        w.opaque(body)
    else:
        body._write(w)


def _read_body(r: Reader, content_type: ContentType) -> FramedBody:
    if content_type == ContentType.APPLICATION:
        return r.opaque()
    if content_type == ContentType.PROPOSAL:
        return Proposal._read(r)
    return Commit._read(r)


@dataclass(frozen=True, slots=True)
class FramedContent(Struct):
    group_id: bytes
    epoch: Uint64
    sender: Sender
    authenticated_data: bytes
    body: FramedBody

    @property
    def content_type(self) -> ContentType:
        return content_type_of(self.body)

    @property
    def application_data(self) -> bytes | None:
        b = self.body
        return b if isinstance(b, bytes) else None

    @property
    def proposal(self) -> Proposal | None:
        b = self.body
        return b if isinstance(b, Proposal) else None

    @property
    def commit(self) -> Commit | None:
        b = self.body
        return b if isinstance(b, Commit) else None

    def _write(self, w: Writer) -> None:
        w.opaque(self.group_id)
        w.u64(self.epoch)
        self.sender._write(w)
        w.opaque(self.authenticated_data)
        w.u8(content_type_of(self.body))
        _write_body(w, self.body)

    @classmethod
    def _read(cls, r: Reader) -> FramedContent:
        group_id = r.opaque()
        epoch = r.u64()
        sender = Sender._read(r)
        authenticated_data = r.opaque()
        ct = ContentType.read(r)
        return cls(group_id, epoch, sender, authenticated_data, _read_body(r, ct))


def framed_content_tbs(
    wire_format: WireFormat, content: FramedContent, context: GroupContext | bytes | None
) -> bytes:
    """``FramedContentTBS``: member and new_member_commit senders bind the (encoded) group context."""
    w = Writer()
    w.u16(ProtocolVersion.MLS10)
    w.u16(wire_format)
    content._write(w)
    if content.sender.sender_type in (SenderType.MEMBER, SenderType.NEW_MEMBER_COMMIT):
        if context is None:
            raise ValueError("FramedContentTBS for this sender type needs the group context")
        if isinstance(context, bytes):
            w.raw(context)
        else:
            context._write(w)
    return w.getvalue()


@dataclass(frozen=True, slots=True)
class FramedContentAuthData(Struct):
    """``FramedContentAuthData``: ``confirmation_tag`` is present exactly for commits.

    Its wire form depends on the content type carried elsewhere, so read it with :meth:`read_for` /
    :meth:`decode_for`.
    """

    signature: bytes
    confirmation_tag: bytes | None = None

    def _write(self, w: Writer) -> None:
        w.opaque(self.signature)
        if self.confirmation_tag is not None:
            w.opaque(self.confirmation_tag)

    @classmethod
    def _read(cls, r: Reader) -> FramedContentAuthData:
        raise TypeError("FramedContentAuthData needs the content type: use read_for/decode_for")

    @classmethod
    def read_for(cls, r: Reader, content_type: ContentType) -> FramedContentAuthData:
        sig = r.opaque()
        return cls(sig, r.opaque() if content_type == ContentType.COMMIT else None)

    @classmethod
    def decode_for(cls, data: bytes, content_type: ContentType) -> FramedContentAuthData:
        return decode_all(lambda r: cls.read_for(r, content_type), data)

    def check_for(self, content_type: ContentType) -> None:
        if (self.confirmation_tag is not None) != (content_type == ContentType.COMMIT):
            raise ValueError("confirmation_tag is present exactly for commits")


@dataclass(frozen=True, slots=True)
class AuthenticatedContent(Struct):
    wire_format: WireFormat
    content: FramedContent
    auth: FramedContentAuthData

    def __post_init__(self) -> None:
        self.auth.check_for(self.content.content_type)

    def _write(self, w: Writer) -> None:
        w.u16(self.wire_format)
        self.content._write(w)
        self.auth._write(w)

    @classmethod
    def _read(cls, r: Reader) -> AuthenticatedContent:
        wf = WireFormat.read(r)
        content = FramedContent._read(r)
        return cls(wf, content, FramedContentAuthData.read_for(r, content.content_type))


def authenticated_content_tbm(content_tbs: bytes, auth: FramedContentAuthData) -> bytes:
    """``AuthenticatedContentTBM`` (input of the membership tag) from FramedContentTBS bytes."""
    w = Writer()
    w.raw(content_tbs)
    auth._write(w)
    return w.getvalue()


@dataclass(frozen=True, slots=True)
class PublicMessage(Struct):
    """``PublicMessage``: ``membership_tag`` is present exactly for member senders."""

    content: FramedContent
    auth: FramedContentAuthData
    membership_tag: bytes | None = None

    def __post_init__(self) -> None:
        self.auth.check_for(self.content.content_type)
        if (self.membership_tag is not None) != (self.content.sender.sender_type == SenderType.MEMBER):
            raise ValueError("membership_tag is present exactly for member senders")

    def _write(self, w: Writer) -> None:
        self.content._write(w)
        self.auth._write(w)
        if self.membership_tag is not None:
            w.opaque(self.membership_tag)

    @classmethod
    def _read(cls, r: Reader) -> PublicMessage:
        content = FramedContent._read(r)
        auth = FramedContentAuthData.read_for(r, content.content_type)
        tag = r.opaque() if content.sender.sender_type == SenderType.MEMBER else None
        return cls(content, auth, tag)


@dataclass(frozen=True, slots=True)
class PrivateMessage(Struct):
    group_id: bytes
    epoch: Uint64
    content_type: ContentType
    authenticated_data: bytes
    encrypted_sender_data: bytes
    ciphertext: bytes


@dataclass(frozen=True, slots=True)
class PrivateMessageContent(Struct):
    """``PrivateMessageContent``: body, auth data, then ``padding`` zero bytes (a count here).

    The body's type is fixed by ``PrivateMessage.content_type`` from outside: decode with
    :meth:`decode_for`. Padding that is not all zero is a :class:`DecodeError`.
    """

    body: FramedBody
    auth: FramedContentAuthData
    padding: int = 0

    def __post_init__(self) -> None:
        self.auth.check_for(content_type_of(self.body))
        if self.padding < 0:
            raise ValueError("negative padding")

    @property
    def content_type(self) -> ContentType:
        return content_type_of(self.body)

    def _write(self, w: Writer) -> None:
        _write_body(w, self.body)
        self.auth._write(w)
        w.raw(bytes(self.padding))

    @classmethod
    def _read(cls, r: Reader) -> PrivateMessageContent:
        raise TypeError("PrivateMessageContent needs the content type: use decode_for")

    @classmethod
    def decode_for(cls, data: bytes, content_type: ContentType) -> PrivateMessageContent:
        def read(r: Reader) -> PrivateMessageContent:
            body = _read_body(r, content_type)
            auth = FramedContentAuthData.read_for(r, content_type)
            rest = r.take(r.remaining())
            if rest.count(0) != len(rest):
                raise DecodeError("PrivateMessageContent padding is not all zero")
            return cls(body, auth, len(rest))

        return decode_all(read, data)


@dataclass(frozen=True, slots=True)
class SenderData(Struct):
    leaf_index: Uint32
    generation: Uint32
    reuse_guard: Annotated[bytes, Fixed(4)]


@dataclass(frozen=True, slots=True)
class SenderDataAAD(Struct):
    group_id: bytes
    epoch: Uint64
    content_type: ContentType


@dataclass(frozen=True, slots=True)
class PrivateContentAAD(Struct):
    group_id: bytes
    epoch: Uint64
    content_type: ContentType
    authenticated_data: bytes


@dataclass(frozen=True, slots=True)
class ConfirmedTranscriptHashInput(Struct):
    wire_format: WireFormat
    content: FramedContent
    signature: bytes


@dataclass(frozen=True, slots=True)
class InterimTranscriptHashInput(Struct):
    confirmation_tag: bytes
