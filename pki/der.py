"""Hand-written DER primitives, shared by the CRL encoder and certificate assembly.

Each function returns ``bytes`` (definite, minimal lengths: DER, not BER).
"""

from __future__ import annotations


def length(n: int) -> bytes:
    """DER length octets (definite form, minimal)."""
    if n < 0x80:
        return bytes((n,))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(body),)) + body


def tlv(tag: int, content: bytes) -> bytes:
    return bytes((tag,)) + length(len(content)) + content


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
