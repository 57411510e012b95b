"""Stand-ins for tests, the bench and demos: a card in software and a local time-stamping
authority. They prove nothing about the real card or the real TSA role.

* ``SoftwareCard``: the ``Card`` protocol over two software keys and their certificates, with a
  4-digit PIN, 3 tries, and the signature PIN spent by each signature.
* ``LocalTsa``: pyHanko's ``DummyTimeStamper`` behind a ``pki.http`` handler for ``POST /tsa``,
  signing with a key and certificate the caller made (``tsa_certificate``: from one of our CAs,
  ``id-kp-timeStamping`` critical, so a verifier trusting our root accepts its tokens).
"""

from __future__ import annotations

import datetime as dt
import secrets
from typing import Any

from asn1crypto import cms, core, tsp
from asn1crypto import keys as asn1_keys
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pyhanko.sign.timestamps.dummy_client import DummyTimeStamper
from pyhanko_certvalidator.registry import SimpleCertificateStore

from pki.cards.card import HolderData, Usage, check_pin
from pki.cards.errors import PinIncorrect, PinLocked, SecurityStatusNotSatisfied
from pki.http import Request, Response

DER = serialization.Encoding.DER


class SoftwareCard:
    """A card in software: two keys, their certificates, one PIN with 3 tries (``Card``)."""

    def __init__(self, holder: HolderData, keys: dict[Usage, rsa.RSAPrivateKey],
                 certs: dict[Usage, x509.Certificate], pin: str = "1234") -> None:
        self._holder = holder
        self.keys = keys
        self.certs = certs
        self._pin = pin
        self.tries = 3
        self.verified = False
        self.signatures: list[Usage] = []

    def holder(self) -> HolderData:
        return self._holder

    def certificate(self, usage: Usage) -> x509.Certificate:
        return self.certs[usage]

    def pin_tries_left(self) -> int | None:
        return self.tries

    def verify_pin(self, pin: str) -> None:
        check_pin(pin)
        if self.tries == 0:
            raise PinLocked()
        if pin != self._pin:
            self.tries -= 1
            self.verified = False
            if self.tries == 0:
                raise PinLocked()
            raise PinIncorrect(self.tries)
        self.tries = 3
        self.verified = True

    def change_pin(self, old_pin: str, new_pin: str) -> None:
        raise NotImplementedError("a software card keeps its PIN")

    def unblock_pin(self, puk: str, new_pin: str) -> None:
        raise NotImplementedError("a software card has no PUK")

    def sign(self, usage: Usage, data: bytes) -> bytes:
        if not self.verified:
            raise SecurityStatusNotSatisfied("verify the PIN first")
        self.verified = usage != "sign"     # the signature PIN is per operation
        self.signatures.append(usage)
        return self.keys[usage].sign(data, padding.PKCS1v15(), hashes.SHA256())

    def close(self) -> None:
        self.verified = False


class _Stamper(DummyTimeStamper):
    """DummyTimeStamper with its key loaded once: it parses the private key's DER again for
    every token (~40 ms, the RSA consistency check), which made a 3,000-signature bench batch
    take minutes."""

    def __init__(self, key: rsa.RSAPrivateKey, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._key = key

    def _sign_tst_info(self, tst_info_data: bytes, md_algorithm: str,
                       dt_: dt.datetime) -> tuple[bytes, cms.CMSAttributes]:
        from pyhanko.sign import general as typed_general

        general: Any = typed_general       # simple_cms_attribute is untyped
        algorithm = getattr(hashes, md_algorithm.upper())()
        digest = hashes.Hash(algorithm)
        digest.update(tst_info_data)
        signed_attrs = cms.CMSAttributes([
            general.simple_cms_attribute("content_type", "tst_info"),
            general.simple_cms_attribute("signing_time",
                                         cms.Time({"utc_time": core.UTCTime(dt_)})),
            general.simple_cms_attribute("signing_certificate",
                                         general.as_signing_certificate(self.tsa_cert)),
            general.simple_cms_attribute("message_digest", digest.finalize()),
        ])
        signature = self._key.sign(signed_attrs.dump(), padding.PKCS1v15(), algorithm)
        return signature, signed_attrs


class LocalTsa:
    """pyHanko's DummyTimeStamper behind ``POST /tsa`` (a ``pki.http`` handler)."""

    def __init__(self, cert: x509.Certificate, key: rsa.RSAPrivateKey,
                 chain: list[x509.Certificate]) -> None:
        self.cert = cert
        self.stamper = _Stamper(
            key,
            tsa_cert=asn1_x509.Certificate.load(cert.public_bytes(DER)),
            tsa_key=asn1_keys.PrivateKeyInfo.load(key.private_bytes(
                DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())),
            certs_to_embed=SimpleCertificateStore.from_certs(  # type: ignore[no-untyped-call]
                [asn1_x509.Certificate.load(c.public_bytes(DER)) for c in chain]))
        self.requests = 0

    def handler(self, req: Request) -> Response | None:
        if req.path != "/tsa":
            return None
        if req.method != "POST":
            return Response(405, b"POST a time-stamp query")
        self.requests += 1
        try:
            query = tsp.TimeStampReq.load(req.body)
            answer = self.stamper.request_tsa_response(query)
        except (ValueError, TypeError, KeyError):
            return Response(400, b"bad time-stamp query")
        return Response(200, answer.dump(), "application/timestamp-reply")


def tsa_certificate(ca_cert: x509.Certificate, ca_key: CertificateIssuerPrivateKeyTypes,
                    key: rsa.RSAPrivateKey, years: int = 10) -> x509.Certificate:
    """A time-stamping certificate signed by ``ca_key`` (critical id-kp-timeStamping)."""
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ASIP-SANTE"),
                      x509.NameAttribute(NameOID.COMMON_NAME, "TEST TSA IGC-SANTE")])
    issuer_key = ca_cert.public_key()
    assert isinstance(issuer_key, rsa.RSAPublicKey)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(int.from_bytes(secrets.token_bytes(16), "big") >> 1)
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=years * 366))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, True, False, False, False, False, False,
                                         False, False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.TIME_STAMPING]),
                           critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key),
                           critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
