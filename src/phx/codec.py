"""The wire codec: the TLS presentation language as RFC 9420 §2.1 uses it.

Every protocol struct is a frozen dataclass deriving from :class:`Struct`. Its fields are described by
their type annotations, so the class *is* the wire schema:

=====================================  ==============================================================
annotation                             wire form
=====================================  ==============================================================
``Annotated[int, U8]`` (U16/U32/U64)   fixed-width big-endian unsigned integer
``bytes``                              ``opaque<V>``: MLS variable-length vector (varint header)
``Annotated[bytes, Fixed(n)]``         ``opaque[n]``
``Annotated[bytes, MaxLen(n)]``        ``opaque<V>`` with at most ``n`` bytes
``str``                                ``opaque<V>`` holding UTF-8
``bool``                               ``uint8`` restricted to 0 / 1
another ``Struct`` subclass            the nested struct
a ``WireEnum`` subclass                its declared width; unknown values are rejected
``tuple[T, ...]``                      ``T<V>``: a vector whose header counts bytes, not items
``T | None``                           ``optional<T>``: a presence octet then the value
=====================================  ==============================================================

Variants (``select`` on an earlier field) do not fit a declarative table; such classes override
``_write``/``_read`` by hand with the :class:`Writer`/:class:`Reader` primitives.

Decoding is strict: trailing bytes, non-minimal varints, vectors running past their buffer or over
their limit, and unknown enum values all raise :class:`DecodeError`, and nothing else escapes.
"""

from __future__ import annotations

import enum
import struct as _struct
import types
import typing
from collections.abc import Callable
from dataclasses import fields
from typing import Any, Self, TypeVar, get_args, get_origin

from phx.errors import DecodeError

__all__ = [
    "U8",
    "U16",
    "U32",
    "U64",
    "DecodeError",
    "Fixed",
    "MaxLen",
    "Reader",
    "Struct",
    "WireEnum",
    "Writer",
    "decode_varint",
    "encode_varint",
]

#: Largest length a varint header can carry (RFC 9420 §2.1.2: 30 bits).
MAX_VARINT = (1 << 30) - 1


class Width:
    """Marks an int field with its wire width in bytes."""

    __slots__ = ("size", "fmt", "packer")

    def __init__(self, size: int, fmt: str) -> None:
        self.size = size
        self.fmt = fmt
        self.packer = _struct.Struct(fmt)

    def __repr__(self) -> str:
        return f"U{self.size * 8}"


U8 = Width(1, ">B")
U16 = Width(2, ">H")
U32 = Width(4, ">I")
U64 = Width(8, ">Q")


class Fixed:
    """Marks a ``bytes`` field as a fixed-length array ``opaque[n]``."""

    __slots__ = ("size",)

    def __init__(self, size: int) -> None:
        self.size = size


class MaxLen:
    """Caps a variable-length field (in bytes for ``bytes``/``str``, in items for tuples)."""

    __slots__ = ("limit",)

    def __init__(self, limit: int) -> None:
        self.limit = limit


def encode_varint(n: int) -> bytes:
    if n < 0x40:
        return bytes((n,))
    if n < 0x4000:
        return (0x4000 | n).to_bytes(2, "big")
    if n <= MAX_VARINT:
        return (0x80000000 | n).to_bytes(4, "big")
    raise ValueError(f"length {n} does not fit an MLS varint")


def decode_varint(data: bytes | memoryview, pos: int, end: int | None = None) -> tuple[int, int]:
    """Decode a varint at ``pos`` (not reading at or past ``end``); return (value, new position)."""
    end = len(data) if end is None else end
    if pos >= end:
        raise DecodeError("truncated varint")
    first = data[pos]
    prefix = first >> 6
    if prefix == 0:
        return first, pos + 1
    if prefix == 1:
        if pos + 2 > end:
            raise DecodeError("truncated varint")
        v = ((first & 0x3F) << 8) | data[pos + 1]
        if v < 0x40:
            raise DecodeError("non-minimal varint")
        return v, pos + 2
    if prefix == 2:
        if pos + 4 > end:
            raise DecodeError("truncated varint")
        v = int.from_bytes(data[pos : pos + 4], "big") & 0x3FFFFFFF
        if v < 0x4000:
            raise DecodeError("non-minimal varint")
        return v, pos + 4
    raise DecodeError("invalid varint prefix 0b11")


class Writer:
    """Appends wire encodings to a bytearray."""

    __slots__ = ("buf",)

    def __init__(self) -> None:
        self.buf = bytearray()

    def uint(self, width: Width, v: int) -> None:
        try:
            self.buf += width.packer.pack(v)
        except _struct.error as e:
            raise ValueError(f"{v} does not fit {width!r}") from e

    def u8(self, v: int) -> None:
        self.uint(U8, v)

    def u16(self, v: int) -> None:
        self.uint(U16, v)

    def u32(self, v: int) -> None:
        self.uint(U32, v)

    def u64(self, v: int) -> None:
        self.uint(U64, v)

    def raw(self, b: bytes) -> None:
        self.buf += b

    def opaque(self, b: bytes) -> None:
        buf = self.buf
        n = len(b)
        if n < 0x40:
            buf.append(n)
        else:
            buf += encode_varint(n)
        buf += b

    def vector(self, items: typing.Iterable[Any], write_item: Callable[[Writer, Any], None]) -> None:
        """Write ``T<V>``; ``write_item(writer, item)`` (for structs use ``Writer.struct``)."""
        # The items go straight into this buffer and the length header is inserted in front of them
        # afterwards (it is one octet for most vectors): no second buffer and no copy of the items.
        buf = self.buf
        start = len(buf)
        for item in items:
            write_item(self, item)
        n = len(buf) - start
        if n < 0x40:
            buf.insert(start, n)
        else:
            buf[start:start] = encode_varint(n)

    def struct(self, s: Struct) -> None:
        s._write(self)

    def optional(self, v: Any, write_item: Callable[[Writer, Any], None]) -> None:
        if v is None:
            self.buf.append(0)
        else:
            self.buf.append(1)
            write_item(self, v)

    def getvalue(self) -> bytes:
        return bytes(self.buf)


class Reader:
    """Reads wire encodings from a buffer; every failure is a :class:`DecodeError`."""

    __slots__ = ("data", "pos", "end")

    def __init__(self, data: bytes | memoryview, pos: int = 0, end: int | None = None) -> None:
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else end

    def remaining(self) -> int:
        return self.end - self.pos

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > self.end:
            raise DecodeError(f"truncated: need {n} bytes, have {self.end - self.pos}")
        out = bytes(self.data[self.pos : self.pos + n])
        self.pos += n
        return out

    def uint(self, width: Width) -> int:
        n = width.size
        if self.pos + n > self.end:
            raise DecodeError("truncated integer")
        v: int = width.packer.unpack_from(self.data, self.pos)[0]
        self.pos += n
        return v

    def u8(self) -> int:
        return self.uint(U8)

    def u16(self) -> int:
        return self.uint(U16)

    def u32(self) -> int:
        return self.uint(U32)

    def u64(self) -> int:
        return self.uint(U64)

    def length(self) -> int:
        data, pos, end = self.data, self.pos, self.end
        if pos < end and data[pos] < 0x40:  # one-octet header: most vectors
            n = data[pos]
            pos += 1
        else:
            n, pos = decode_varint(data, pos, end)
        self.pos = pos
        if n > end - pos:
            raise DecodeError(f"vector of {n} bytes runs past its buffer")
        return n

    def opaque(self, limit: int | None = None) -> bytes:
        # length() and take() inlined: this is the codec's hottest path.
        data, pos, end = self.data, self.pos, self.end
        if pos < end and data[pos] < 0x40:
            n = data[pos]
            pos += 1
        else:
            n, pos = decode_varint(data, pos, end)
        if n > end - pos:
            self.pos = pos
            raise DecodeError(f"vector of {n} bytes runs past its buffer")
        if limit is not None and n > limit:
            self.pos = pos
            raise DecodeError(f"vector of {n} bytes exceeds its limit of {limit}")
        self.pos = pos + n
        return bytes(data[pos : pos + n])

    def vector(self, read_item: Callable[[Reader], Any], limit: int | None = None) -> tuple[Any, ...]:
        n = self.length()
        sub = Reader(self.data, self.pos, self.pos + n)
        items = []
        while sub.pos < sub.end:
            before = sub.pos
            items.append(read_item(sub))
            if sub.pos == before:
                # An item that consumes nothing would repeat forever.
                raise DecodeError("vector item of zero length")
            if limit is not None and len(items) > limit:
                raise DecodeError(f"vector exceeds its limit of {limit} items")
        self.pos = sub.end
        return tuple(items)

    def optional(self, read_item: Callable[[Reader], Any]) -> Any:
        flag = self.u8()
        if flag == 0:
            return None
        if flag == 1:
            return read_item(self)
        raise DecodeError(f"invalid optional presence octet {flag}")

    def boolean(self) -> bool:
        v = self.u8()
        if v > 1:
            raise DecodeError(f"invalid boolean {v}")
        return v == 1

    def finish(self) -> None:
        if self.pos != self.end:
            raise DecodeError(f"{self.end - self.pos} trailing bytes")


#: Each WireEnum class's width (looked up on every read and write).
_ENUM_WIDTHS: dict[type, Width] = {}


class WireEnum(enum.IntEnum):
    """An enum on the wire. Subclasses set ``__wire_width__ = U8`` etc. (default uint16)."""

    @classmethod
    def wire_width(cls) -> Width:
        width = _ENUM_WIDTHS.get(cls)
        if width is None:
            w = cls.__dict__.get("__wire_width__")
            width = _ENUM_WIDTHS[cls] = w if isinstance(w, Width) else U16
        return width

    @classmethod
    def read(cls, r: Reader) -> Self:
        v = r.uint(_ENUM_WIDTHS.get(cls) or cls.wire_width())
        # The members by value, looked up directly (calling the class costs several Python calls).
        member: Self | None = cls._value2member_map_.get(v)  # type: ignore[assignment]
        if member is None:
            raise DecodeError(f"unknown {cls.__name__} value {v}")
        return member

    def write(self, w: Writer) -> None:
        w.uint(self.wire_width(), int(self))


_Write = Callable[[Writer, Any], None]
_Read = Callable[[Reader], Any]
T = TypeVar("T")


def _split_annotation(
    tp: Any,
) -> tuple[Any, tuple[Any, ...], Width | None, Fixed | None, MaxLen | None]:
    """An annotation's type, its metadata and the wire markers among them (``Annotated[int, U16]``)."""
    meta: tuple[Any, ...] = ()
    if get_origin(tp) is typing.Annotated:
        tp, *rest = get_args(tp)
        meta = tuple(rest)
    width = next((m for m in meta if isinstance(m, Width)), None)
    fixed = next((m for m in meta if isinstance(m, Fixed)), None)
    maxlen = next((m for m in meta if isinstance(m, MaxLen)), None)
    return tp, meta, width, fixed, maxlen


def _codec_for(tp: Any, owner: type) -> tuple[_Write, _Read]:
    """Build the (write, read) pair for one annotation."""
    tp, meta, width, fixed, maxlen = _split_annotation(tp)
    limit = maxlen.limit if maxlen else None
    origin = get_origin(tp)

    if origin in (typing.Union, types.UnionType):
        present = [a for a in get_args(tp) if a is not type(None)]
        if len(present) != 1:
            raise TypeError(f"{owner.__name__}: only T | None unions are supported")
        inner_tp = typing.Annotated[(present[0], *meta)] if meta else present[0]
        iw, ir = _codec_for(inner_tp, owner)
        return (lambda w, v: w.optional(v, iw)), (lambda r: r.optional(ir))
    if origin is tuple:
        args = get_args(tp)
        if len(args) != 2 or args[1] is not Ellipsis:
            raise TypeError(f"{owner.__name__}: vectors are tuple[T, ...]")
        item = args[0]
        if isinstance(item, type) and issubclass(item, Struct):
            # Look the item reader up per vector, not once here: the class's generated reader replaces
            # the generic one on first use (see Struct._read).
            icls = item
            return (lambda w, v: w.vector(v, _write_struct)), (lambda r: r.vector(icls._read, limit))
        iw, ir = _codec_for(item, owner)
        return (lambda w, v: w.vector(v, iw)), (lambda r: r.vector(ir, limit))
    if tp is bool:
        return (lambda w, v: w.u8(1 if v else 0)), (lambda r: r.boolean())
    if tp is int:
        if width is None:
            raise TypeError(f"{owner.__name__}: int fields need a width (Annotated[int, U16])")
        wd = width
        return (lambda w, v: w.uint(wd, v)), (lambda r: r.uint(wd))
    if tp is bytes:
        if fixed is not None:
            size = fixed.size

            def write_fixed(w: Writer, v: bytes) -> None:
                if len(v) != size:
                    raise ValueError(f"{owner.__name__}: expected {size} bytes, got {len(v)}")
                w.raw(v)

            return write_fixed, (lambda r: r.take(size))
        return (lambda w, v: w.opaque(v)), (lambda r: r.opaque(limit))
    if tp is str:

        def read_str(r: Reader) -> str:
            raw = r.opaque(limit)
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DecodeError("invalid UTF-8") from e

        return (lambda w, v: w.opaque(v.encode("utf-8"))), read_str
    if isinstance(tp, type) and issubclass(tp, WireEnum):
        ecls = tp
        return (lambda w, v: v.write(w)), ecls.read
    if isinstance(tp, type) and issubclass(tp, Struct):
        scls = tp
        return _write_struct, (lambda r: scls._read(r))
    raise TypeError(f"{owner.__name__}: no wire form for {tp!r}")


def _write_struct(w: Writer, v: Struct) -> None:
    v._write(w)


#: Marks an opaque field in _field_source's answer (followed by its limit, if any).
_INLINE_OPAQUE = "#opaque:"


def _field_source(
    name: str, tp: Any, write: _Write, read: _Read, i: int, env: dict[str, Any]
) -> tuple[str, str]:
    """Python source reading (an expression over ``r``, or :data:`_INLINE_OPAQUE` and the limit for an
    opaque field) and writing (a statement writing ``v`` to ``w``) one field, for the code
    :func:`_generate` builds: direct calls for the common kinds, the field's closures otherwise. Names the
    source uses go into ``env``."""
    tp, _, width, fixed, maxlen = _split_annotation(tp)
    env[f"_w{i}"], env[f"_r{i}"] = write, read
    closures = f"_r{i}(r)", f"_w{i}(w, v.{name})"
    if tp is int and width is not None:
        env[f"_u{i}"] = width
        return f"r.uint(_u{i})", f"w.uint(_u{i}, v.{name})"
    if tp is bytes and fixed is None:
        # A marker instead of an expression: _generate reads opaque fields inline.
        return f"{_INLINE_OPAQUE}{maxlen.limit if maxlen else ''}", f"w.opaque(v.{name})"
    if tp is bytes and fixed is not None:
        return f"r.take({fixed.size})", closures[1]
    if isinstance(tp, type) and issubclass(tp, WireEnum):
        env[f"_e{i}"] = tp
        return f"_e{i}.read(r)", f"v.{name}.write(w)"
    if isinstance(tp, type) and issubclass(tp, Struct):
        env[f"_s{i}"] = tp
        return f"_s{i}._read(r)", f"v.{name}._write(w)"
    return closures


def _generate(cls: type[Struct]) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """``_read`` (a classmethod function) and ``_write`` for a declarative struct, as straight-line code:
    no per-field loop, lambda or plan lookup at run time (the codec's cost is mostly Python calls)."""
    hints = typing.get_type_hints(cls, include_extras=True)
    env: dict[str, Any] = {
        "_owner": cls,
        "_generic_read": _generic_read,
        "_generic_write": _generic_write,
        "_decode_varint": decode_varint,
        "_DecodeError": DecodeError,
    }
    reads, writes = [], []
    for i, (name, write, read) in enumerate(cls._compile()):
        rd, wr = _field_source(name, hints[name], write, read, i, env)
        reads.append(rd)
        writes.append(wr)
    # Reading: opaque fields are read inline (Reader.opaque's steps and checks, on a local position that
    # is synchronised with the reader around every other field's call).
    lines = ["def _read(cls, r):", "    if cls is not _owner:", "        return _generic_read(cls, r)"]
    if any(rd.startswith(_INLINE_OPAQUE) for rd in reads):
        lines.append("    data = r.data; end = r.end")
    local = False
    for i, rd in enumerate(reads):
        if not rd.startswith(_INLINE_OPAQUE):
            if local:
                lines.append("    r.pos = pos")
                local = False
            lines.append(f"    a{i} = {rd}")
            continue
        if not local:
            lines.append("    pos = r.pos")
            local = True
        limit = rd[len(_INLINE_OPAQUE) :]
        lines += [
            "    if pos < end and data[pos] < 0x40:",
            "        n = data[pos]; pos += 1",
            "    else:",
            "        n, pos = _decode_varint(data, pos, end)",
            "    if n > end - pos:",
            "        r.pos = pos",
            '        raise _DecodeError(f"vector of {n} bytes runs past its buffer")',
        ]
        if limit:
            lines += [
                f"    if n > {int(limit)}:",
                "        r.pos = pos",
                '        raise _DecodeError(f"vector of {n} bytes exceeds its limit of ' + limit + '")',
            ]
        lines += [f"    a{i} = bytes(data[pos : pos + n]); pos += n"]
    if local:
        lines.append("    r.pos = pos")
    lines.append(f"    return _owner({', '.join(f'a{i}' for i in range(len(reads)))})")
    body = "".join(f"    {wr}\n" for wr in writes)
    src = (
        "\n".join(lines) + "\n"
        "def _write(v, w):\n"
        "    if type(v) is not _owner:\n"
        "        return _generic_write(v, w)\n"
        f"{body}"
        "    return None\n"
    )
    exec(compile(src, f"<phx.codec {cls.__qualname__}>", "exec"), env)
    read_fn, write_fn = env["_read"], env["_write"]
    read_fn._phx_generated = write_fn._phx_generated = True
    return read_fn, write_fn


def _install(cls: type[Struct]) -> None:
    """Give ``cls`` its generated ``_read``/``_write`` where it relies on :class:`Struct`'s (a hand-written
    method of the class itself is left alone)."""
    read_fn, write_fn = _generate(cls)
    if "_read" not in cls.__dict__:
        type.__setattr__(cls, "_read", classmethod(read_fn))
    if "_write" not in cls.__dict__:
        type.__setattr__(cls, "_write", write_fn)


def _is_generated(method: Any) -> bool:
    return getattr(getattr(method, "__func__", method), "_phx_generated", False)


def _generic_read(cls: type[Any], r: Reader) -> Any:
    own = cls.__dict__.get("_read")
    if own is None:
        _install(cls)
        own = cls.__dict__["_read"]
    if _is_generated(own):
        return own.__func__(cls, r)
    # A hand-written _read that delegates to Struct's: the plan, field by field.
    return cls(*[read(r) for _, _, read in cls._compile()])


def _generic_write(v: Any, w: Writer) -> None:
    cls = type(v)
    own = cls.__dict__.get("_write")
    if own is None:
        _install(cls)
        own = cls.__dict__["_write"]
    if _is_generated(own):
        own(v, w)
        return
    for name, write, _ in cls._compile():
        write(w, getattr(v, name))


class Struct:
    """Base of every wire struct. Subclasses are ``@dataclass(frozen=True, slots=True)``."""

    __slots__ = ()

    @classmethod
    def _compile(cls) -> list[tuple[str, _Write, _Read]]:
        plan = cls.__dict__.get("_plan_cache")
        if plan is None:
            hints = typing.get_type_hints(cls, include_extras=True)
            plan = [(f.name, *_codec_for(hints[f.name], cls)) for f in fields(cls)]  # type: ignore[arg-type]
            type.__setattr__(cls, "_plan_cache", plan)
        return plan

    # The first use of a declarative struct replaces these two on its class by generated straight-line
    # code (_install); they stay the entry points for a class's first call.
    def _write(self, w: Writer) -> None:
        _generic_write(self, w)

    @classmethod
    def _read(cls, r: Reader) -> Self:
        v: Self = _generic_read(cls, r)
        return v

    def encode(self) -> bytes:
        w = Writer()
        self._write(w)
        return bytes(w.buf)

    @classmethod
    def decode(cls, data: bytes | memoryview) -> Self:
        """Decode exactly one value filling ``data``; anything else is a :class:`DecodeError`."""
        r = Reader(data)
        try:
            v = cls._read(r)
        except DecodeError:
            raise
        except (ValueError, TypeError, OverflowError) as e:
            # Field validation in __post_init__ rejects a value: still a decode failure.
            raise DecodeError(f"{cls.__name__}: {e}") from e
        r.finish()
        return v

    @classmethod
    def read(cls, r: Reader) -> Self:
        """Decode one value from a reader (for use inside hand-written ``_read`` methods)."""
        try:
            return cls._read(r)
        except DecodeError:
            raise
        except (ValueError, TypeError, OverflowError) as e:
            raise DecodeError(f"{cls.__name__}: {e}") from e


def decode_all(read_item: Callable[[Reader], T], data: bytes) -> T:
    """Run a reader function over exactly ``data``."""
    r = Reader(data)
    try:
        v = read_item(r)
    except DecodeError:
        raise
    except (ValueError, TypeError, OverflowError) as e:
        raise DecodeError(str(e)) from e
    r.finish()
    return v
