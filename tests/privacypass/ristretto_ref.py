"""A slow, independent ristretto255 + RFC 9497 VOPRF reference, for tests only.

Written from RFC 9496 (ristretto255), RFC 9380 §5.3.1 (expand_message_xmd) and RFC 9497 (VOPRF mode,
ristretto255-SHA512) so the ``voprf`` wheel and the token vectors can be checked against something that
does not share its code. Plain Python integers, no constant-time pretence.
"""

from __future__ import annotations

import hashlib

P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493
D = (-121665 * pow(121666, -1, P)) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)

Point = tuple[int, int, int, int]  # extended coordinates (X, Y, Z, T)

IDENTITY: Point = (0, 1, 1, 0)
_BX = 15112221349535400772501151409588531511454012693041857206046113283949847762202
_BY = 46316835694926478169428394003475163141307993866256225615783033603165251855960
GENERATOR: Point = (_BX, _BY, 1, _BX * _BY % P)


def _neg(x: int) -> bool:
    return (x % P) & 1 == 1


def _abs(x: int) -> int:
    x %= P
    return (P - x) % P if _neg(x) else x


def sqrt_ratio_m1(u: int, v: int) -> tuple[bool, int]:
    u %= P
    v %= P
    r = (u * pow(v, 3, P)) * pow(u * pow(v, 7, P), (P - 5) // 8, P) % P
    check = v * r * r % P
    correct = check == u
    flipped = check == (-u) % P
    flipped_i = check == (-u * SQRT_M1) % P
    if flipped or flipped_i:
        r = r * SQRT_M1 % P
    return correct or flipped, _abs(r)


# RFC 9496 §4.1 (SQRT_AD_MINUS_ONE is the "negative" root, so it is spelled out, not computed).
SQRT_AD_MINUS_ONE = 25063068953384623474111414158702152701244531502492656460079210482610430750235
INVSQRT_A_MINUS_D = 54469307008909316920995813868745141605393597292927456921205312896311721017578
ONE_MINUS_D_SQ = (1 - D * D) % P
D_MINUS_ONE_SQ = (D - 1) * (D - 1) % P


def add(p1: Point, p2: Point) -> Point:
    x1, y1, z1, t1 = p1
    x2, y2, z2, t2 = p2
    a = (y1 - x1) * (y2 - x2) % P
    b = (y1 + x1) * (y2 + x2) % P
    c = t1 * 2 * D * t2 % P
    d = z1 * 2 * z2 % P
    e, f, g, h = (b - a) % P, (d - c) % P, (d + c) % P, (b + a) % P
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def mul(k: int, pt: Point) -> Point:
    out = IDENTITY
    k %= L
    while k:
        if k & 1:
            out = add(out, pt)
        pt = add(pt, pt)
        k >>= 1
    return out


def equal(p1: Point, p2: Point) -> bool:
    x1, y1, _, _ = p1
    x2, y2, _, _ = p2
    return (x1 * y2 - y1 * x2) % P == 0 or (y1 * y2 - x1 * x2) % P == 0


def decode(data: bytes) -> Point:
    if len(data) != 32:
        raise ValueError("ristretto255 encodings are 32 bytes")
    s = int.from_bytes(data, "little")
    if s >= P or _neg(s):
        raise ValueError("non-canonical encoding")
    ss = s * s % P
    u1 = (1 - ss) % P
    u2 = (1 + ss) % P
    u2_sqr = u2 * u2 % P
    v = (-(D * u1 * u1) - u2_sqr) % P
    was_square, invsqrt = sqrt_ratio_m1(1, v * u2_sqr)
    den_x = invsqrt * u2 % P
    den_y = invsqrt * den_x * v % P
    x = _abs(2 * s * den_x)
    y = u1 * den_y % P
    t = x * y % P
    if not was_square or _neg(t) or y == 0:
        raise ValueError("invalid ristretto255 encoding")
    return (x, y, 1, t)


def encode(pt: Point) -> bytes:
    x0, y0, z0, t0 = pt
    u1 = (z0 + y0) * (z0 - y0) % P
    u2 = x0 * y0 % P
    _, invsqrt = sqrt_ratio_m1(1, u1 * u2 * u2)
    den1 = invsqrt * u1 % P
    den2 = invsqrt * u2 % P
    z_inv = den1 * den2 * t0 % P
    rotate = _neg(t0 * z_inv)
    if rotate:
        x, y, den_inv = y0 * SQRT_M1 % P, x0 * SQRT_M1 % P, den1 * INVSQRT_A_MINUS_D % P
    else:
        x, y, den_inv = x0, y0, den2
    if _neg(x * z_inv):
        y = (-y) % P
    s = _abs(den_inv * (z0 - y))
    return s.to_bytes(32, "little")


def _map(t: int) -> Point:
    r = SQRT_M1 * t * t % P
    u = (r + 1) * ONE_MINUS_D_SQ % P
    v = (-1 - r * D) * (r + D) % P
    was_square, s = sqrt_ratio_m1(u, v)
    s_prime = (-_abs(s * t)) % P
    if not was_square:
        s = s_prime
    c = P - 1 if was_square else r
    n = (c * (r - 1) * D_MINUS_ONE_SQ - v) % P
    w0 = 2 * s * v % P
    w1 = n * SQRT_AD_MINUS_ONE % P
    w2 = (1 - s * s) % P
    w3 = (1 + s * s) % P
    return (w0 * w3 % P, w2 * w1 % P, w1 * w3 % P, w0 * w2 % P)


def from_uniform_bytes(data: bytes) -> Point:
    mask = (1 << 255) - 1
    r0 = (int.from_bytes(data[:32], "little") & mask) % P
    r1 = (int.from_bytes(data[32:64], "little") & mask) % P
    return add(_map(r0), _map(r1))


def expand_message_xmd(msg: bytes, dst: bytes, length: int) -> bytes:
    b_in, s_in = 64, 128
    ell = -(-length // b_in)
    dst_prime = dst + bytes([len(dst)])
    b0 = hashlib.sha512(b"\0" * s_in + msg + length.to_bytes(2, "big") + b"\0" + dst_prime).digest()
    b = [hashlib.sha512(b0 + b"\x01" + dst_prime).digest()]
    for i in range(2, ell + 1):
        b.append(
            hashlib.sha512(
                bytes(x ^ y for x, y in zip(b0, b[-1], strict=True)) + bytes([i]) + dst_prime
            ).digest()
        )
    return b"".join(b)[:length]


def _lp(data: bytes) -> bytes:
    return len(data).to_bytes(2, "big") + data


class Voprf:
    """RFC 9497 VOPRF mode for ristretto255-SHA512."""

    CONTEXT = b"OPRFV1-\x01-ristretto255-SHA512"

    @classmethod
    def hash_to_group(cls, data: bytes) -> Point:
        return from_uniform_bytes(expand_message_xmd(data, b"HashToGroup-" + cls.CONTEXT, 64))

    @classmethod
    def hash_to_scalar(cls, data: bytes, dst: bytes | None = None) -> int:
        dst = b"HashToScalar-" + cls.CONTEXT if dst is None else dst
        return int.from_bytes(expand_message_xmd(data, dst, 64), "little") % L

    @classmethod
    def derive_key_pair(cls, seed: bytes, info: bytes) -> int:
        derive_input = seed + _lp(info)
        for counter in range(256):
            sk = cls.hash_to_scalar(derive_input + bytes([counter]), b"DeriveKeyPair" + cls.CONTEXT)
            if sk:
                return sk
        raise ValueError("DeriveKeyPairError")

    @staticmethod
    def finalize(data: bytes, element: Point) -> bytes:
        return hashlib.sha512(_lp(data) + _lp(encode(element)) + b"Finalize").digest()

    @classmethod
    def evaluate(cls, sk: int, data: bytes) -> bytes:
        return cls.finalize(data, mul(sk, cls.hash_to_group(data)))

    @classmethod
    def composites(cls, pk: Point, blinded: list[Point], evaluated: list[Point]) -> tuple[Point, Point]:
        bm = encode(pk)
        seed_dst = b"Seed-" + cls.CONTEXT
        seed = hashlib.sha512(_lp(bm) + _lp(seed_dst)).digest()
        m, z = IDENTITY, IDENTITY
        for i, (c, d) in enumerate(zip(blinded, evaluated, strict=True)):
            transcript = _lp(seed) + i.to_bytes(2, "big") + _lp(encode(c)) + _lp(encode(d)) + b"Composite"
            di = cls.hash_to_scalar(transcript)
            m = add(mul(di, c), m)
            z = add(mul(di, d), z)
        return m, z

    @classmethod
    def verify_proof(cls, pk: Point, blinded: list[Point], evaluated: list[Point], proof: bytes) -> bool:
        c = int.from_bytes(proof[:32], "little")
        s = int.from_bytes(proof[32:64], "little")
        m, z = cls.composites(pk, blinded, evaluated)
        t2 = add(mul(s, GENERATOR), mul(c, pk))
        t3 = add(mul(s, m), mul(c, z))
        transcript = b"".join(_lp(encode(x)) for x in (pk, m, z, t2, t3)) + b"Challenge"
        return cls.hash_to_scalar(transcript) == c
