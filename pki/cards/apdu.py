"""ISO 7816-4 command/response APDUs and the BER-TLV subset cards use.

Both the host middleware and the software card use these, so an encoding bug shows up as a
failed round trip in the unit tests rather than as a silent mismatch.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from pki import der

CPS_AID = bytes.fromhex("E828BD080F802500 0001FF0010".replace(" ", ""))
PIV_AID = bytes.fromhex("A000000308000010000100")
CPS3_ATR = bytes.fromhex("3BAC00402A001225006480000310009000")

SW_OK = 0x9000


class ApduFormatError(ValueError):
    """A malformed APDU; ``sw`` is what a card answers to it."""

    def __init__(self, message: str, sw: int = 0x6700) -> None:
        super().__init__(message)
        self.sw = sw


@dataclass(frozen=True)
class CommandAPDU:
    cla: int
    ins: int
    p1: int
    p2: int
    data: bytes = b""
    le: int | None = None  # expected length; 256 (short) / 65536 (extended) mean "all"

    def __post_init__(self) -> None:
        for name in ("cla", "ins", "p1", "p2"):
            value = getattr(self, name)
            if not 0 <= value <= 0xFF:
                raise ValueError(f"{name} must be a byte, got {value!r}")
        if len(self.data) > 65535:
            raise ValueError(f"data too long for an APDU: {len(self.data)} bytes")
        if self.le is not None and not 0 < self.le <= 65536:
            raise ValueError(f"le must be in 1..65536, got {self.le}")

    @property
    def extended(self) -> bool:
        return len(self.data) > 255 or (self.le is not None and self.le > 256)

    def encode(self) -> bytes:
        header = bytes((self.cla, self.ins, self.p1, self.p2))
        if not self.extended:
            body = b""
            if self.data:
                body += bytes((len(self.data),)) + self.data
            if self.le is not None:
                body += bytes((self.le & 0xFF,))
            return header + body
        body = b"\x00"
        if self.data:
            body += len(self.data).to_bytes(2, "big") + self.data
        if self.le is not None:
            body += (self.le & 0xFFFF).to_bytes(2, "big")
        return header + body

    @classmethod
    def parse(cls, raw: bytes) -> CommandAPDU:
        """Decode the four ISO 7816-3 cases, short and extended."""
        if len(raw) < 4:
            raise ApduFormatError(f"APDU shorter than its header ({len(raw)} bytes)")
        cla, ins, p1, p2 = raw[0], raw[1], raw[2], raw[3]
        body = raw[4:]
        if not body:
            return cls(cla, ins, p1, p2)
        if len(body) == 1:
            return cls(cla, ins, p1, p2, le=body[0] or 256)
        if body[0] != 0:  # short Lc
            lc = body[0]
            if len(body) == 1 + lc:
                return cls(cla, ins, p1, p2, bytes(body[1:]))
            if len(body) == 2 + lc:
                return cls(cla, ins, p1, p2, bytes(body[1 : 1 + lc]), body[-1] or 256)
            raise ApduFormatError(f"Lc={lc} does not match a body of {len(body)} bytes")
        if len(body) == 3:  # extended case 2
            return cls(cla, ins, p1, p2, le=int.from_bytes(body[1:3], "big") or 65536)
        if len(body) < 3:
            raise ApduFormatError("truncated extended length")
        lc = int.from_bytes(body[1:3], "big")
        if lc == 0:
            raise ApduFormatError("extended Lc of zero")
        if len(body) == 3 + lc:
            return cls(cla, ins, p1, p2, bytes(body[3:]))
        if len(body) == 5 + lc:
            return cls(
                cla, ins, p1, p2, bytes(body[3 : 3 + lc]), int.from_bytes(body[-2:], "big") or 65536
            )
        raise ApduFormatError(f"extended Lc={lc} does not match a body of {len(body)} bytes")


@dataclass(frozen=True)
class ResponseAPDU:
    data: bytes
    sw: int

    @property
    def sw1(self) -> int:
        return self.sw >> 8

    @property
    def sw2(self) -> int:
        return self.sw & 0xFF

    def encode(self) -> bytes:
        return self.data + self.sw.to_bytes(2, "big")

    @classmethod
    def parse(cls, raw: bytes) -> ResponseAPDU:
        if len(raw) < 2:
            raise ApduFormatError(f"response shorter than a status word ({len(raw)} bytes)")
        return cls(bytes(raw[:-2]), int.from_bytes(raw[-2:], "big"))


# --- BER-TLV --------------------------------------------------------------------------------


# Encoding: the one DER/BER-TLV writer (definite, minimal lengths; multi-octet tags).
tlv = der.tlv


def iter_tlv(data: bytes) -> Iterator[tuple[int, bytes]]:
    """Yield (tag, value) for each top-level BER-TLV; raises ValueError on truncation."""
    i = 0
    while i < len(data):
        if data[i] in (0x00, 0xFF):  # padding between objects, allowed by ISO 7816-4
            i += 1
            continue
        start = i
        i += 1
        if data[start] & 0x1F == 0x1F:
            while True:
                if i >= len(data):
                    raise ValueError("truncated TLV tag")
                i += 1
                if data[i - 1] & 0x80 == 0:
                    break
        tag = int.from_bytes(data[start:i], "big")
        if i >= len(data):
            raise ValueError(f"missing TLV length for tag {tag:X}")
        first = data[i]
        i += 1
        if first < 0x80:
            length = first
        else:
            count = first & 0x7F
            if count == 0 or count > 3 or i + count > len(data):
                raise ValueError(f"bad TLV length for tag {tag:X}")
            length = int.from_bytes(data[i : i + count], "big")
            i += count
        if i + length > len(data):
            raise ValueError(f"TLV value for tag {tag:X} overruns the data")
        yield tag, bytes(data[i : i + length])
        i += length


def parse_tlv(data: bytes) -> dict[int, bytes]:
    """Top-level TLVs as a dict (first occurrence wins)."""
    out: dict[int, bytes] = {}
    for tag, value in iter_tlv(data):
        out.setdefault(tag, value)
    return out
