"""A throw-away issuer for tests, the bench and demos that must not depend on the real CA.

It follows the shape of SPEC §3 (subject with title/GN+SN+CN=8+RPPS, 16-byte serial, keyUsage
per usage) but is signed by an ephemeral P-256 key: it proves nothing about the real PKI.
"""

from __future__ import annotations

import datetime
import secrets

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    PublicKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pki.cards.card import HolderData, Usage
from pki.cards.personalise import IssueCallback


class ThrowawayIssuer:
    def __init__(self, now: datetime.datetime | None = None) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.now = now or datetime.datetime.now(datetime.UTC)
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "TEST THROWAWAY CA")])
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(self.name)
            .issuer_name(self.name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self.now - datetime.timedelta(minutes=5))
            .not_valid_after(self.now + datetime.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(self.key, hashes.SHA256())
        )

    def callback(self, holder: HolderData) -> IssueCallback:
        def issue(usage: Usage, public_key: PublicKeyTypes) -> bytes:
            return self.issue(holder, usage, public_key)

        return issue

    def issue(self, holder: HolderData, usage: Usage, public_key: PublicKeyTypes) -> bytes:
        if not isinstance(public_key, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey)):
            raise TypeError("a card key is RSA or EC")
        subject = x509.Name(
            [
                x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COUNTRY_NAME, "FR")]),
                x509.RelativeDistinguishedName(
                    [x509.NameAttribute(NameOID.TITLE, holder.profession_label or "PS")]
                ),
                x509.RelativeDistinguishedName(
                    [
                        x509.NameAttribute(NameOID.GIVEN_NAME, holder.given_name),
                        x509.NameAttribute(NameOID.SURNAME, holder.surname),
                        x509.NameAttribute(NameOID.COMMON_NAME, holder.national_id),
                    ]
                ),
            ]
        )
        auth = usage == "auth"
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.name)
            .public_key(public_key)
            .serial_number(int.from_bytes(secrets.token_bytes(16), "big") >> 1 or 1)
            .not_valid_before(self.now - datetime.timedelta(minutes=5))
            .not_valid_after(self.now + datetime.timedelta(days=3 * 365))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=auth,
                    content_commitment=not auth,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
        )
        if auth:
            builder = builder.add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
            )
        from cryptography.hazmat.primitives.serialization import Encoding

        return builder.sign(self.key, hashes.SHA256()).public_bytes(Encoding.DER)
