"""What the CA hands to the publishers (pki.crl, pki.ocsp, the token issuer): a signer of
to-be-signed DER, never a key. ``throwaway`` signers produce a signature of the right shape
without the HSM, for linting an object before the real key signs it (the Boulder practice).
"""

from __future__ import annotations

import hashlib

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from pki.hsm import HsmEcKey, HsmRsaKey

# AlgorithmIdentifier DER: sha256WithRSAEncryption (NULL parameters, RFC 4055) and
# ecdsa-with-SHA256 (parameters absent, RFC 5758).
SHA256_RSA_ALG = bytes.fromhex("300d06092a864886f70d01010b0500")
SHA256_ECDSA_ALG = bytes.fromhex("300a06082a8648ce3d040302")


class TbsSigner:
    """Signs DER to-be-signed structures (TBSCertList, ResponseData, JWS input) in the HSM."""

    def __init__(self, key: HsmRsaKey | HsmEcKey, certificate: x509.Certificate) -> None:
        self._key = key
        self.certificate = certificate

    @property
    def public_key(self) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
        return self._key.public_key()

    @property
    def is_rsa(self) -> bool:
        return isinstance(self._key, HsmRsaKey)

    @property
    def algorithm_identifier(self) -> bytes:
        """DER AlgorithmIdentifier for the signatureAlgorithm fields."""
        return SHA256_RSA_ALG if self.is_rsa else SHA256_ECDSA_ALG

    @property
    def jws_alg(self) -> str:
        return "RS256" if self.is_rsa else "ES256"

    @property
    def signature_size(self) -> int:
        return self._key.key_size // 8

    def sign(self, tbs: bytes) -> bytes:
        """The signature value over ``tbs`` (PKCS#1 v1.5 or DER ECDSA), computed in the HSM."""
        if isinstance(self._key, HsmRsaKey):
            return self._key.sign(tbs, padding.PKCS1v15(), hashes.SHA256())
        return self._key.sign(tbs, ec.ECDSA(hashes.SHA256()))

    def sign_jws(self, signing_input: bytes) -> bytes:
        """A JWS signature (RS256: PKCS#1 v1.5; ES256: r || s, RFC 7518 §3.4) over the JWS
        signing input, computed in the HSM."""
        if isinstance(self._key, HsmRsaKey):
            return self._key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        return self._key.sign_raw(signing_input)

    def throwaway_sign(self, tbs: bytes) -> bytes:
        """A signature of the real shape that no HSM produced: for linting before signing."""
        return throwaway_signature(self.public_key, tbs)

    def sign_prehashed_sha256(self, digest: bytes) -> bytes:
        if isinstance(self._key, HsmRsaKey):
            return self._key.sign(digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))
        return self._key.sign(digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))


def throwaway_signature(public_key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey,
                        tbs: bytes) -> bytes:
    seed = hashlib.sha256(tbs).digest()
    if isinstance(public_key, rsa.RSAPublicKey):
        size = public_key.key_size // 8
        return (b"\x00" + (seed * (size // 32 + 1)))[:size]
    order_bytes = (public_key.curve.key_size + 7) // 8
    r = int.from_bytes(seed[:order_bytes], "big") >> 1 or 1
    return utils.encode_dss_signature(r, r)


class ThrowawayRsaKey(rsa.RSAPrivateKey):
    """Stands in for an HSM key in cryptography's builders when only the TBS matters (lint)."""

    def __init__(self, public: rsa.RSAPublicKey) -> None:
        self._public = public

    def sign(self, data: bytes | bytearray | memoryview, padding: padding.AsymmetricPadding,
             algorithm: hashes.HashAlgorithm | utils.Prehashed | utils.NoDigestInfo) -> bytes:
        return throwaway_signature(self._public, bytes(data))

    def public_key(self) -> rsa.RSAPublicKey:
        return self._public

    @property
    def key_size(self) -> int:
        return self._public.key_size

    def decrypt(self, ciphertext: bytes, padding: padding.AsymmetricPadding) -> bytes:
        raise NotImplementedError

    def private_numbers(self) -> rsa.RSAPrivateNumbers:
        raise NotImplementedError

    def private_bytes(self, *args: object, **kwargs: object) -> bytes:
        raise NotImplementedError

    def __copy__(self) -> ThrowawayRsaKey:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> ThrowawayRsaKey:
        return self


class ThrowawayEcKey(ec.EllipticCurvePrivateKey):
    def __init__(self, public: ec.EllipticCurvePublicKey) -> None:
        self._public = public

    def sign(self, data: bytes | bytearray | memoryview,
             signature_algorithm: ec.EllipticCurveSignatureAlgorithm) -> bytes:
        return throwaway_signature(self._public, bytes(data))

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._public

    @property
    def curve(self) -> ec.EllipticCurve:
        return self._public.curve

    @property
    def key_size(self) -> int:
        return self._public.key_size

    def exchange(self, algorithm: ec.ECDH, peer_public_key: ec.EllipticCurvePublicKey) -> bytes:
        raise NotImplementedError

    def private_numbers(self) -> ec.EllipticCurvePrivateNumbers:
        raise NotImplementedError

    def private_bytes(self, *args: object, **kwargs: object) -> bytes:
        raise NotImplementedError

    def __copy__(self) -> ThrowawayEcKey:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> ThrowawayEcKey:
        return self


def throwaway_key(public: rsa.RSAPublicKey | ec.EllipticCurvePublicKey
                  ) -> ThrowawayRsaKey | ThrowawayEcKey:
    if isinstance(public, rsa.RSAPublicKey):
        return ThrowawayRsaKey(public)
    return ThrowawayEcKey(public)
