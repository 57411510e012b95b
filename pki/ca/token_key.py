"""The access-token signing key of the login broker, held in the HSM like every CA key.

The key is generated inside the token on first use (label ``token:broker``; P-256 by default,
because the broker signs one token per login and ECDSA in the HSM is an order of magnitude
cheaper than RSA-2048). Relying services learn it from the JWKS, identified by a
self-describing ``kid``: the RFC 7638 JWK thumbprint of the public key, so any holder of the
key can recompute it and a rotated key can never collide with the old ``kid``.

``TbsSigner`` wants a certificate; the token key has no place in the PKI hierarchy, so it gets a
self-signed descriptor certificate (signed by itself, in the HSM) that is never published.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from pki.ca.authority import Authority
from pki.errors import HsmError
from pki.hsm import HsmEcKey, HsmRsaKey, KeyType
from pki.signer import TbsSigner

DEFAULT_LABEL = "token:broker"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _int_bytes(value: int, size: int | None = None) -> bytes:
    length = size if size is not None else max(1, (value.bit_length() + 7) // 8)
    return value.to_bytes(length, "big")


def public_jwk(public_key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey) -> dict[str, str]:
    """The JWK members that define the key (RFC 7517/7518), without kid/alg/use."""
    if isinstance(public_key, rsa.RSAPublicKey):
        numbers = public_key.public_numbers()
        return {"kty": "RSA", "n": b64url(_int_bytes(numbers.n)),
                "e": b64url(_int_bytes(numbers.e))}
    if not isinstance(public_key.curve, ec.SECP256R1):
        raise ValueError(f"token key curve {public_key.curve.name} is not P-256")
    point = public_key.public_numbers()
    return {"kty": "EC", "crv": "P-256", "x": b64url(_int_bytes(point.x, 32)),
            "y": b64url(_int_bytes(point.y, 32))}


def jwk_thumbprint(public_key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey) -> str:
    """RFC 7638: SHA-256 over the required members in lexicographic order, no whitespace."""
    canonical = json.dumps(public_jwk(public_key), sort_keys=True, separators=(",", ":"))
    return b64url(hashlib.sha256(canonical.encode("ascii")).digest())


@dataclass(frozen=True)
class TokenKey:
    label: str
    kid: str
    signer: TbsSigner

    @property
    def alg(self) -> str:
        return self.signer.jws_alg

    def jwk(self) -> dict[str, str]:
        return {**public_jwk(self.signer.public_key), "kid": self.kid, "alg": self.alg,
                "use": "sig"}


def token_key(auth: Authority, label: str = DEFAULT_LABEL,
              key_type: KeyType = KeyType.P256) -> TokenKey:
    """Open the token-signing key, generating it in the HSM the first time it is asked for."""
    hsm = auth.hsm
    if not hsm.has_key(label):
        try:
            hsm.generate_key(label, key_type)
        except HsmError:
            # Another process generated it between our check and our call: use theirs.
            if not hsm.has_key(label):
                raise
    key = hsm.key(label)
    descriptor = _descriptor_certificate(key, label, auth.clock.now())
    signer = TbsSigner(key, descriptor)
    return TokenKey(label=label, kid=jwk_thumbprint(signer.public_key), signer=signer)


def _descriptor_certificate(key: HsmRsaKey | HsmEcKey, label: str,
                            now: dt.datetime) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"CPS login broker {label}")])
    start = now.replace(microsecond=0) - dt.timedelta(minutes=5)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + dt.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
