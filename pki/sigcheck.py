"""The one signature check: RSA PKCS#1 v1.5 or ECDSA (DER signature) over ``data``.

Used wherever a signature made by a card, a CA, an OCSP responder or a token key is checked
(login proofs, OCSP answers, JWS, the CA's check of what its HSM returned). A key of another
type, a bad signature or an unusable hash is ``False``, never an exception.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

SHA256 = hashes.SHA256()


def verify_signature(public_key: object, signature: bytes, data: bytes,
                     algorithm: hashes.HashAlgorithm | None = SHA256) -> bool:
    """True when ``signature`` over ``data`` verifies with ``public_key`` and ``algorithm``."""
    if algorithm is None:
        return False
    try:
        if isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature, data, padding.PKCS1v15(), algorithm)
        elif isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(signature, data, ec.ECDSA(algorithm))
        else:
            return False
    except (InvalidSignature, ValueError, UnsupportedAlgorithm):
        return False
    return True
