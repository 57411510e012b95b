"""A strict, minimal DER reader and writer: just what OCSP requests and responses need.

Hand-written rather than asn1crypto because it sits on the responder's hot path (a parse costs
microseconds, not tens of them) and because it must reject, never guess: indefinite lengths,
non-minimal lengths, high tag numbers and trailing bytes all raise ``DerError``.
"""

from __future__ import annotations

import datetime as dt
import functools
import time

SEQUENCE = 0x30
INTEGER = 0x02
BIT_STRING = 0x03
OCTET_STRING = 0x04
NULL = 0x05
OID = 0x06
ENUMERATED = 0x0A
BOOLEAN = 0x01
GENERALIZED_TIME = 0x18


class DerError(ValueError):
    """The bytes are not the DER that was expected."""


def read_tlv(buf: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """(tag, content_start, content_end) of the element at ``pos``; it must end by ``end``."""
    if pos + 2 > end:
        raise DerError("truncated element header")
    tag = buf[pos]
    if tag & 0x1F == 0x1F:
        raise DerError("high tag numbers are not used in OCSP")
    first = buf[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0:
            raise DerError("indefinite length is not DER")
        if count > 4:
            raise DerError("element length too large")
        if pos + count > end:
            raise DerError("truncated length")
        length = int.from_bytes(buf[pos:pos + count], "big")
        if length < 0x80 or buf[pos] == 0:
            raise DerError("non-minimal length encoding")
        pos += count
    if pos + length > end:
        raise DerError("element runs past its container")
    return tag, pos, pos + length


def expect(buf: bytes, pos: int, end: int, tag: int, what: str) -> tuple[int, int]:
    """Content bounds of the element at ``pos``, which must carry ``tag``."""
    got, start, stop = read_tlv(buf, pos, end)
    if got != tag:
        raise DerError(f"{what}: expected tag 0x{tag:02x}, got 0x{got:02x}")
    return start, stop


def children(buf: bytes, start: int, end: int) -> list[tuple[int, int, int, int]]:
    """(tag, element_start, content_start, content_end) of every element in [start, end)."""
    out = []
    pos = start
    while pos < end:
        tag, cstart, cend = read_tlv(buf, pos, end)
        out.append((tag, pos, cstart, cend))
        pos = cend
    return out


def length_bytes(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(raw),)) + raw


def tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        return bytes((tag, n)) + content
    return bytes((tag,)) + length_bytes(n) + content


def seq(*parts: bytes) -> bytes:
    return tlv(SEQUENCE, b"".join(parts))


def integer_content(value: int) -> bytes:
    """Minimal two's-complement content octets of an INTEGER."""
    size = value.bit_length() // 8 + 1
    return value.to_bytes(size, "big", signed=True)


def integer(value: int) -> bytes:
    return tlv(INTEGER, integer_content(value))


def integer_value(content: bytes) -> int:
    if not content:
        raise DerError("empty INTEGER")
    if len(content) > 1 and ((content[0] == 0 and content[1] < 0x80)
                             or (content[0] == 0xFF and content[1] >= 0x80)):
        raise DerError("non-minimal INTEGER")
    return int.from_bytes(content, "big", signed=True)


def encode_oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    body = bytearray([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        body.extend(reversed(chunk))
    return tlv(OID, bytes(body))


@functools.lru_cache(maxsize=8192)
def generalized_time(epoch: int) -> bytes:
    """GeneralizedTime DER for whole seconds since the epoch (RFC 5280 form: YYYYMMDDHHMMSSZ)."""
    return b"\x18\x0f" + time.strftime("%Y%m%d%H%M%SZ", time.gmtime(epoch)).encode("ascii")


def epoch(at: dt.datetime) -> int:
    if at.tzinfo is None:
        raise ValueError("naive datetime; use timezone-aware UTC")
    return int(at.timestamp())
