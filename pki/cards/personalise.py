"""Card personalisation for the issuing side (``cps-admin card issue``).

The card generates both key pairs itself; only the public keys leave it, the CA (through the
``issue`` callback) certifies them, and the certificates, holder data, PIN and a fresh random
PUK are written back. The PUK is returned exactly once, for the PIN mailer.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from pki.cards.card import PUK_LENGTH, USAGES, HolderData, KeyType, Usage, check_pin

IssueCallback = Callable[[Usage, PublicKeyTypes], bytes]


class PersonalisableCard(Protocol):
    """What a blank card (or blank PKCS#11 token) must offer to be personalised."""

    def generate_key_pair(self, usage: Usage, key_type: KeyType) -> PublicKeyTypes: ...

    def write_certificate(self, usage: Usage, der: bytes) -> None: ...

    def write_holder(self, holder: HolderData) -> None: ...

    def set_credentials(self, pin: str, puk: str) -> None: ...

    def finish_personalisation(self) -> None: ...


@dataclass(frozen=True)
class PersonalisationResult:
    puk: str
    certificates: dict[Usage, x509.Certificate]

    def __repr__(self) -> str:  # keep the PUK out of logs and tracebacks
        serials = {u: f"{c.serial_number:x}" for u, c in self.certificates.items()}
        return f"PersonalisationResult(puk=<hidden>, serials={serials})"


def random_puk() -> str:
    return "".join(secrets.choice("0123456789") for _ in range(PUK_LENGTH))


def _spki(key: PublicKeyTypes) -> bytes:
    return key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def personalise(
    card: PersonalisableCard,
    holder: HolderData,
    issue: IssueCallback,
    pin: str,
    key_type: KeyType = "rsa2048",
) -> PersonalisationResult:
    """Generate keys on ``card``, have ``issue`` certify them, write everything, lock the card.

    ``issue(usage, public_key)`` returns the certificate DER; it must certify exactly the key
    the card generated (checked here, so a CA bug cannot produce an unusable card).
    """
    check_pin(pin)
    certificates: dict[Usage, x509.Certificate] = {}
    for usage in USAGES:
        public_key = card.generate_key_pair(usage, key_type)
        der = issue(usage, public_key)
        cert = x509.load_der_x509_certificate(der)
        if _spki(cert.public_key()) != _spki(public_key):
            raise ValueError(f"{usage} certificate does not certify the key generated on the card")
        card.write_certificate(usage, der)
        certificates[usage] = cert
    card.write_holder(holder)
    puk = random_puk()
    card.set_credentials(pin, puk)
    card.finish_personalisation()
    return PersonalisationResult(puk=puk, certificates=certificates)
