"""TOTP (RFC 6238 over RFC 4226 HOTP): HMAC-SHA1, 30-second steps, 6 digits.

Seeds are kept sealed at rest (``SeedBox``): AES-256-GCM under the key in ``secrets/totp.key``,
with the patient's INS as associated data, so a copy of the store alone gives no seed, and a
sealed seed moved onto another patient's row does not open.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import struct
import urllib.parse

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

STEP_SECONDS = 30
DIGITS = 6


def new_secret() -> str:
    """160 random bits, base32 without padding (what authenticator apps expect)."""
    return base64.b32encode(secrets.token_bytes(20)).decode("ascii").rstrip("=")


def seed_bytes(secret: str) -> bytes:
    """The HMAC key a base32 seed stands for."""
    return base64.b32decode(secret + "=" * (-len(secret) % 8), casefold=True)


_key = seed_bytes
_NONCE = 12
_AD = b"cps-totp-seed-v1:"


class SeedUnreadable(Exception):
    """A sealed seed that does not open: another key, another patient's row, or damage."""


class SeedBox:
    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    def seal(self, ins: str, secret: str) -> bytes:
        nonce = secrets.token_bytes(_NONCE)     # random 96-bit nonces: far below 2^32 seals
        return nonce + self._aead.encrypt(nonce, secret.encode("ascii"), _AD + ins.encode())

    def open(self, ins: str, sealed: bytes) -> str:
        if len(sealed) <= _NONCE + 16:
            raise SeedUnreadable("sealed seed too short")
        try:
            plain = self._aead.decrypt(sealed[:_NONCE], sealed[_NONCE:], _AD + ins.encode())
        except InvalidTag:
            raise SeedUnreadable("sealed seed does not open with this key for this patient"
                                 ) from None
        return plain.decode("ascii")


def hotp(secret: str, counter: int, digits: int = DIGITS) -> str:
    mac = hmac.new(_key(secret), struct.pack(">Q", counter), hashlib.sha1).digest()
    offset = mac[-1] & 0x0F
    code = (struct.unpack(">I", mac[offset:offset + 4])[0] & 0x7FFFFFFF) % 10 ** digits
    return f"{code:0{digits}d}"


def step_at(unix_time: float) -> int:
    return int(unix_time // STEP_SECONDS)


def totp(secret: str, unix_time: float) -> str:
    return hotp(secret, step_at(unix_time))


def matching_step(secret: str, code: str, unix_time: float, window: int = 1) -> int | None:
    """The time step (within ±window) whose code is ``code``, compared in constant time."""
    if len(code) != DIGITS or not code.isascii() or not code.isdigit():
        return None
    now = step_at(unix_time)
    found = None
    for step in range(now - window, now + window + 1):
        if hmac.compare_digest(hotp(secret, step), code):
            found = step
    return found


def provisioning_uri(secret: str, account: str, issuer: str = "CPS patient") -> str:
    label = urllib.parse.quote(f"{issuer}:{account}")
    query = urllib.parse.urlencode({"secret": secret, "issuer": issuer, "digits": DIGITS,
                                    "period": STEP_SECONDS, "algorithm": "SHA1"})
    return f"otpauth://totp/{label}?{query}"
