"""What exactly the card signs to log in.

The message is domain-separated so that a login signature can never be replayed as anything
else (a document signature, a TLS handshake, another broker's login)::

    message = b"CPS-LOGIN-V1\\x00" || uint16(len(audience)) || audience (UTF-8)
              || challenge (32 bytes)

The card signs SHA-256(message): RSASSA-PKCS1-v1_5 with DigestInfo(SHA-256) for RSA keys,
ECDSA P-256 with SHA-256 (DER signature) for EC keys — what ``pki.cards.Card.sign("auth",
message)`` computes (the host hashes, the card signs). ``audience`` is the broker's issuer URL,
so a challenge signed for one broker is refused by every other.
"""

from __future__ import annotations

import struct

from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from pki.sigcheck import verify_signature

DOMAIN = b"CPS-LOGIN-V1\x00"


def login_message(challenge: bytes, audience: str) -> bytes:
    aud = audience.encode("utf-8")
    if len(aud) > 0xFFFF:
        raise ValueError("audience longer than 65535 bytes")
    return DOMAIN + struct.pack(">H", len(aud)) + aud + challenge


def verify_login_signature(public_key: CertificatePublicKeyTypes, message: bytes,
                           signature: bytes) -> bool:
    """True when ``signature`` is the card's signature over ``message``; False otherwise."""
    return verify_signature(public_key, signature, message)
