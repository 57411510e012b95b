"""Hand-written DER: a strict reader and the few encoders the CA, CRL and OCSP code needs.

Hand-written rather than asn1crypto because it sits on hot paths (OCSP parsing and answers,
CRL entries by the million, certificate assembly): a parse costs microseconds. The reader
rejects, never guesses: indefinite and non-minimal lengths, high tag numbers and elements
running past their container raise ``DerError``. The writers produce definite, minimal lengths.
"""

from __future__ import annotations


def length(n: int) -> bytes:
    """DER length octets (definite form, minimal)."""
    if n < 0x80:
        return bytes((n,))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(body),)) + body


def tlv(tag: int, content: bytes) -> bytes:
    """Tag, definite minimal length, content. ``tag`` is the tag's octets read as a number: one
    octet in X.509 and CRLs, up to three in the card's BER-TLV (``5F C1 05``, pki.cards.apdu)."""
    n = len(content)
    if tag < 0x100:
        if n < 0x80:
            return bytes((tag, n)) + content
        return bytes((tag,)) + length(n) + content
    return tag.to_bytes((tag.bit_length() + 7) // 8, "big") + length(n) + content


def sequence(*parts: bytes) -> bytes:
    return tlv(0x30, b"".join(parts))


def integer(value: int) -> bytes:
    """INTEGER, minimal two's complement."""
    size = value.bit_length() // 8 + 1 if value >= 0 else (value + 1).bit_length() // 8 + 1
    return tlv(0x02, value.to_bytes(size, "big", signed=True))


def octet_string(content: bytes) -> bytes:
    return tlv(0x04, content)


def boolean_true() -> bytes:
    return b"\x01\x01\xff"


def oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    if len(arcs) < 2:
        raise ValueError(f"OID needs at least two arcs: {dotted!r}")
    out = bytearray()
    for i, arc in enumerate([arcs[0] * 40 + arcs[1], *arcs[2:]]):
        if arc < 0 or (i == 0 and (arcs[0] > 2 or (arcs[0] < 2 and arcs[1] > 39))):
            raise ValueError(f"invalid OID {dotted!r}")
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        out += bytes(reversed(chunk))
    return tlv(0x06, bytes(out))


def bit_string(content: bytes) -> bytes:
    return tlv(0x03, b"\x00" + content)


# --- reading ---------------------------------------------------------------------------------
class DerError(ValueError):
    """The bytes are not the DER that was expected."""


def read_tlv(buf: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """(tag, content_start, content_end) of the element at ``pos``; it must end by ``end``."""
    if pos + 2 > end:
        raise DerError("truncated element header")
    tag = buf[pos]
    if tag & 0x1F == 0x1F:
        raise DerError("high tag numbers are not used here")
    first = buf[pos + 1]
    pos += 2
    if first < 0x80:
        size = first
    else:
        count = first & 0x7F
        if count == 0:
            raise DerError("indefinite length is not DER")
        if count > 4:
            raise DerError("element length too large")
        if pos + count > end:
            raise DerError("truncated length")
        size = int.from_bytes(buf[pos:pos + count], "big")
        if size < 0x80 or buf[pos] == 0:
            raise DerError("non-minimal length encoding")
        pos += count
    if pos + size > end:
        raise DerError("element runs past its container")
    return tag, pos, pos + size


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


def integer_value(content: bytes) -> int:
    """The value of INTEGER content octets, which must be minimal."""
    if not content:
        raise DerError("empty INTEGER")
    if len(content) > 1 and ((content[0] == 0 and content[1] < 0x80)
                             or (content[0] == 0xFF and content[1] >= 0x80)):
        raise DerError("non-minimal INTEGER")
    return int.from_bytes(content, "big", signed=True)
