"""Delegated OCSP responder certificates (RFC 6960 §4.2.2.2), one per issuing CA.

The responder key is generated in the HSM, its certificate is short-lived (``ocsp.
responder_validity_days``) and carries id-kp-OCSPSigning and id-pkix-ocsp-nocheck, so relying
parties do not ask for its own status. It is renewed (new key, new certificate) once fewer than
``ocsp.responder_renew_before_days`` remain. The certificate is linted with a throw-away
signature first; only a clean lint reaches the CA key, through the TbsSigner seam.
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from sqlalchemy import select

from pki import audit
from pki.ca.lint import lint_certificate
from pki.clock import Clock, utc_seconds
from pki.config import Config
from pki.errors import PkiError
from pki.hsm import Hsm, KeyType
from pki.ocsp import der
from pki.signer import TbsSigner, throwaway_key
from pki.store.db import Store
from pki.store.models import Certificate

PROFILE = "ocsp"


class CaLike(Protocol):
    @property
    def id(self) -> int: ...
    @property
    def slug(self) -> str: ...
    @property
    def certificate(self) -> x509.Certificate: ...


class AuthorityLike(Protocol):
    """What this module needs from pki.ca.authority.Authority."""

    @property
    def config(self) -> Config: ...
    @property
    def store(self) -> Store: ...
    @property
    def clock(self) -> Clock: ...
    @property
    def hsm(self) -> Hsm: ...
    def signer(self, slug: str) -> TbsSigner: ...


class ResponderLintError(PkiError):
    code = "ocsp_responder_lint"
    http_status = 500


@dataclass(frozen=True)
class Responder:
    ca_slug: str
    signer: TbsSigner          # the responder's key in the HSM, with its certificate
    der: bytes
    not_after: dt.datetime


def key_label(slug: str, serial_hex: str) -> str:
    return f"ocsp:{slug}:{serial_hex}"


def responder_key_type(config: Config) -> KeyType:
    # P-256 by default: responses are ~5x smaller and sign ~10x faster than RSA-2048 in SoftHSM
    # (see pki/ocsp/README.md); ``ocsp.responder_key_type`` overrides when the config has it.
    return KeyType.parse(str(getattr(config.ocsp, "responder_key_type", "p256")))


def current(auth: AuthorityLike, ca: CaLike) -> Responder | None:
    """The newest responder certificate of ``ca`` that is still valid now, if any."""
    now = auth.clock.now()
    with auth.store.session() as session:
        row = session.execute(
            select(Certificate).where(Certificate.ca_id == ca.id,
                                      Certificate.profile == PROFILE,
                                      Certificate.status == "active",
                                      Certificate.not_after > now)
            .order_by(Certificate.not_after.desc()).limit(1)).scalar_one_or_none()
    if row is None:
        return None
    cert = x509.load_der_x509_certificate(row.der)
    key = auth.hsm.key(key_label(ca.slug, row.serial))
    return Responder(ca.slug, TbsSigner(key, cert), row.der, row.not_after)


def needs_renewal(auth: AuthorityLike, responder: Responder | None) -> bool:
    if responder is None:
        return True
    margin = dt.timedelta(days=auth.config.ocsp.responder_renew_before_days)
    return responder.not_after - auth.clock.now() <= margin


def ensure(auth: AuthorityLike, ca: CaLike, *, key_type: KeyType | None = None) -> Responder:
    """The CA's responder, issuing (or renewing) it first when needed."""
    responder = current(auth, ca)
    if needs_renewal(auth, responder):
        responder = issue(auth, ca, key_type=key_type)
    assert responder is not None
    return responder


def issue(auth: AuthorityLike, ca: CaLike, *, key_type: KeyType | None = None) -> Responder:
    """A new responder key in the HSM and its certificate, signed by the CA, stored, audited."""
    key_type = key_type or responder_key_type(auth.config)
    serial = secrets.randbits(127) | (1 << 120)      # positive, 16 octets, 120+ random bits
    serial_hex = f"{serial:X}"
    if len(serial_hex) % 2:
        serial_hex = "0" + serial_hex
    label = key_label(ca.slug, serial_hex)
    key = auth.hsm.generate_key(label, key_type)
    ca_signer = auth.signer(ca.slug)
    now = utc_seconds(auth.clock.now())
    not_after = now + dt.timedelta(days=auth.config.ocsp.responder_validity_days)
    builder = _builder(ca.certificate, key.public_key(), serial, now, not_after)
    draft = builder.sign(throwaway_key(ca_signer.public_key), hashes.SHA256())
    findings = lint_certificate(draft.public_bytes(serialization.Encoding.DER))
    if findings:
        auth.hsm.destroy_key(label)
        raise ResponderLintError("OCSP responder certificate failed lint: " + "; ".join(findings))
    tbs = draft.tbs_certificate_bytes
    signature = ca_signer.sign(tbs)
    der = _certificate_der(tbs, ca_signer.algorithm_identifier, signature)
    cert = x509.load_der_x509_certificate(der)
    with auth.store.session() as session:
        session.add(Certificate(
            serial=serial_hex, ca_id=ca.id, profile=PROFILE,
            subject=cert.subject.rfc4514_string(), not_before=now, not_after=not_after,
            status="active", der=der, created_at=auth.clock.now(), shard=0))
        audit.append(session, "ocsp.responder.issue", ca.slug,
                     {"serial": serial_hex, "key_label": label, "key_type": key_type.value,
                      "not_after": not_after.isoformat()}, clock=auth.clock)
    return Responder(ca.slug, TbsSigner(key, cert), der, not_after)


def _certificate_der(tbs: bytes, algorithm: bytes, signature: bytes) -> bytes:
    return der.seq(tbs, algorithm, der.tlv(der.BIT_STRING, b"\x00" + signature))


def _builder(ca_cert: x509.Certificate, public_key: object, serial: int, not_before: dt.datetime,
             not_after: dt.datetime) -> x509.CertificateBuilder:
    subject_attrs = [a for a in ca_cert.subject if a.oid != NameOID.COMMON_NAME]
    cn = ca_cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    base = str(cn[0].value) if cn else "AC"
    subject = x509.Name([*subject_attrs,
                         x509.NameAttribute(NameOID.COMMON_NAME, f"{base} OCSP")])
    ski = x509.SubjectKeyIdentifier.from_public_key(public_key)  # type: ignore[arg-type]
    try:
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
            ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value)
    except x509.ExtensionNotFound:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(
            ca_cert.public_key())  # type: ignore[arg-type]
    return (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(ca_cert.subject)
            .public_key(public_key)  # type: ignore[arg-type]
            .serial_number(serial).not_valid_before(not_before).not_valid_after(not_after)
            .add_extension(aki, critical=False)
            .add_extension(ski, critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]),
                           critical=False)
            .add_extension(x509.OCSPNoCheck(), critical=False))
