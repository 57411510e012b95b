"""The ``Card`` protocol every backend implements, and the values it returns."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from cryptography import x509

from pki.cards.apdu import iter_tlv, tlv

Usage = Literal["auth", "sign"]
USAGES: tuple[Usage, Usage] = ("auth", "sign")
KeyType = Literal["rsa2048", "p256"]

PIN_LENGTH = 4
PUK_LENGTH = 8
PIN_MAX_TRIES = 3
PUK_MAX_TRIES = 3

# DER prefix of DigestInfo{sha256} (RFC 8017 §9.2 note 1): prefix || 32-byte hash.
SHA256_DIGEST_INFO_PREFIX = bytes.fromhex("3031300d060960864801650304020105000420")

_TAG_RPPS, _TAG_GIVEN, _TAG_SURNAME, _TAG_PROF_CODE, _TAG_PROF_LABEL = 0x80, 0x81, 0x82, 0x83, 0x84


def check_pin(pin: str) -> None:
    if len(pin) != PIN_LENGTH or not pin.isascii() or not pin.isdigit():
        raise ValueError(f"PIN must be exactly {PIN_LENGTH} digits")


def check_puk(puk: str) -> None:
    if len(puk) != PUK_LENGTH or not puk.isascii() or not puk.isdigit():
        raise ValueError(f"PUK must be exactly {PUK_LENGTH} digits")


@dataclass(frozen=True)
class HolderData:
    """Card holder as personalised on the card (the certificate subject says the same)."""

    rpps: str  # 11-digit RPPS number (Luhn-checked by the directory, not here)
    given_name: str
    surname: str
    profession_code: int
    profession_label: str = ""

    def __post_init__(self) -> None:
        if len(self.rpps) != 11 or not self.rpps.isascii() or not self.rpps.isdigit():
            raise ValueError(f"rpps must be 11 digits, got {self.rpps!r}")
        if not self.given_name or not self.surname:
            raise ValueError("given_name and surname must not be empty")
        if not 0 <= self.profession_code <= 999:
            raise ValueError(f"profession_code out of range: {self.profession_code}")

    @property
    def national_id(self) -> str:
        """``8`` + RPPS: the identifier in the certificate CN and in login tokens."""
        return "8" + self.rpps

    def name_tlv(self) -> bytes:
        return tlv(_TAG_GIVEN, self.given_name.encode()) + tlv(_TAG_SURNAME, self.surname.encode())

    def info_tlv(self) -> bytes:
        return (
            tlv(_TAG_RPPS, self.rpps.encode())
            + tlv(_TAG_PROF_CODE, str(self.profession_code).encode())
            + tlv(_TAG_PROF_LABEL, self.profession_label.encode())
        )

    def to_bytes(self) -> bytes:
        """The on-card holder file (EF ``D001``): a flat BER-TLV list."""
        return self.info_tlv() + self.name_tlv()

    @classmethod
    def from_bytes(cls, data: bytes) -> HolderData:
        fields: dict[int, bytes] = {}
        for tag, value in iter_tlv(data):
            fields.setdefault(tag, value)
        try:
            return cls(
                rpps=fields[_TAG_RPPS].decode(),
                given_name=fields[_TAG_GIVEN].decode(),
                surname=fields[_TAG_SURNAME].decode(),
                profession_code=int(fields[_TAG_PROF_CODE].decode()),
                profession_label=fields.get(_TAG_PROF_LABEL, b"").decode(),
            )
        except (KeyError, UnicodeDecodeError) as exc:
            raise ValueError(f"holder data incomplete or not UTF-8: {exc}") from exc


def sha256_digest_info(data: bytes) -> bytes:
    """Host-side hashing: the card never sees the message, only DigestInfo(SHA-256(data))."""
    return SHA256_DIGEST_INFO_PREFIX + hashlib.sha256(data).digest()


@runtime_checkable
class Card(Protocol):
    """A CPS card, whichever way it is reached (PC/SC reader or PKCS#11 module).

    ``sign`` hashes ``data`` with SHA-256 on the host; the card signs DigestInfo with
    RSA PKCS#1 v1.5, or the raw hash with ECDSA (returned DER-encoded, as X.509 wants it).
    """

    def holder(self) -> HolderData: ...

    def certificate(self, usage: Usage) -> x509.Certificate: ...

    def pin_tries_left(self) -> int | None: ...

    def verify_pin(self, pin: str) -> None: ...

    def change_pin(self, old_pin: str, new_pin: str) -> None: ...

    def unblock_pin(self, puk: str, new_pin: str) -> None: ...

    def sign(self, usage: Usage, data: bytes) -> bytes: ...

    def close(self) -> None: ...

