"""pyHanko's ``Signer`` whose signature is made by the card's *signature* key.

pyHanko builds the CMS (signed attributes, signing-certificate-v2, unsigned time stamp); only
the raw signature over the DER of the signed attributes comes from here. The card hashes on
the host and signs DigestInfo (RSA PKCS#1 v1.5) or the hash (ECDSA), which is exactly what
pyHanko's ``sha256_rsa`` / ``sha256_ecdsa`` mechanisms expect.

The PIN is verified right before each signature, once per signature: a card's signature PIN
is per operation, and a wrong PIN counts down on the card like any other (``PinIncorrect``
with the tries left propagates unchanged).
"""

from __future__ import annotations

from asn1crypto import x509 as asn1_x509
from cryptography.hazmat.primitives.serialization import Encoding
from pyhanko.sign.signers.pdf_cms import Signer

from pki.cards.card import Card, Usage

SIGN_USAGE: Usage = "sign"


class CardSigner(Signer):
    """Signs with ``card``'s signature key; ``pin`` is presented before every signature."""

    def __init__(self, card: Card, pin: str, chain: list[asn1_x509.Certificate] | None = None
                 ) -> None:
        from pyhanko_certvalidator.registry import SimpleCertificateStore

        cert = card.certificate(SIGN_USAGE)
        signing_cert = asn1_x509.Certificate.load(cert.public_bytes(Encoding.DER))
        registry = SimpleCertificateStore.from_certs(  # type: ignore[no-untyped-call]
            [signing_cert, *(chain or [])])
        super().__init__(signing_cert=signing_cert, cert_registry=registry, embed_roots=False)
        self._card = card
        self._pin = pin
        self.signatures = 0

    async def async_sign_raw(self, data: bytes, digest_algorithm: str,
                             dry_run: bool = False) -> bytes:
        if digest_algorithm.lower() != "sha256":
            raise ValueError(f"the card signs SHA-256 only, not {digest_algorithm}")
        if dry_run:   # size estimate only (PDF placeholder): no PIN, no card operation
            cert = self.signing_cert
            assert cert is not None
            return bytes(max(256, cert.public_key.byte_size * 2 + 8))
        self._card.verify_pin(self._pin)
        signature = self._card.sign(SIGN_USAGE, data)
        self.signatures += 1
        return signature
