"""Helpers shared by tests/ca, tests/cli and tests/store: CSRs, DB snapshots, openssl."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from sqlalchemy import create_engine, func, select

from pki.config import Config
from pki.store import models

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def make_csr(key: PrivateKey, cn: str = "ignored", dns: tuple[str, ...] = ()) -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
    if dns:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(d) for d in dns]), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def tampered_csr(key: PrivateKey) -> bytes:
    """A CSR whose signature does not verify (last signature byte flipped)."""
    der = bytearray(x509.load_pem_x509_csr(make_csr(key)).public_bytes(
        serialization.Encoding.DER))
    der[-1] ^= 0x01
    return bytes(der)


TABLES = (models.CertificateAuthority, models.Professional, models.Structure, models.Card,
          models.Certificate, models.StatusEvent, models.Crl, models.AuditRecord)


def snapshot(home: Path, db_url: str | None = None) -> dict[str, Any]:
    """Row counts of every table, the audit head and certificate statuses: "nothing written"."""
    url = Config.load(home).effective_db_url(db_url)
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            out: dict[str, Any] = {t.__tablename__: conn.execute(
                select(func.count()).select_from(t)).scalar_one() for t in TABLES}
            head = conn.execute(select(models.AuditHead.seq, models.AuditHead.hash)).one()
            out["audit_head"] = tuple(head)
            out["statuses"] = sorted(tuple(r) for r in conn.execute(
                select(models.Certificate.serial, models.Certificate.status)))
            return out
    finally:
        engine.dispose()


def openssl(*args: str, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["openssl", *args], input=input, capture_output=True, check=False)


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)
