"""TOTP (RFC 6238 over RFC 4226 HOTP): HMAC-SHA1, 30-second steps, 6 digits."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import struct
import urllib.parse

STEP_SECONDS = 30
DIGITS = 6


def new_secret() -> str:
    """160 random bits, base32 without padding (what authenticator apps expect)."""
    return base64.b32encode(secrets.token_bytes(20)).decode("ascii").rstrip("=")


def _key(secret: str) -> bytes:
    return base64.b32decode(secret + "=" * (-len(secret) % 8), casefold=True)


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
