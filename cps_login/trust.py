"""The broker's trust: CA certificates read from the store's ``ca`` table (read-only).

No ``Authority`` and no CA token: a public role only needs the public half of the hierarchy.
Roots are the trust anchors, the issuing CAs candidate intermediates, and the ORGANISATIONS
CAs the issuers a mutual-TLS client must chain to.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import select

from pki.errors import ConfigError
from pki.store.db import Store
from pki.store.models import CertificateAuthority


@dataclass(frozen=True)
class CaCertificate:
    slug: str
    role: str                   # ROOT | PERSONNES | ORGANISATIONS
    certificate: x509.Certificate


@dataclass(frozen=True)
class Trust:
    cas: tuple[CaCertificate, ...]

    @property
    def anchors(self) -> list[x509.Certificate]:
        return [c.certificate for c in self.cas if c.role == "ROOT"]

    @property
    def intermediates(self) -> list[x509.Certificate]:
        return [c.certificate for c in self.cas if c.role != "ROOT"]

    @property
    def organisation_cas(self) -> list[x509.Certificate]:
        return [c.certificate for c in self.cas if c.role == "ORGANISATIONS"]

    def client_ca_pem(self) -> str:
        """Roots and ORGANISATIONS CAs: the only chains a mutual-TLS client may present."""
        return "".join(c.certificate.public_bytes(serialization.Encoding.PEM).decode()
                       for c in self.cas if c.role in ("ROOT", "ORGANISATIONS"))


def load_trust(store: Store) -> Trust:
    with store.read() as session:
        rows = session.execute(select(CertificateAuthority.slug, CertificateAuthority.role,
                                      CertificateAuthority.cert_der)
                               .order_by(CertificateAuthority.id)).all()
    cas = tuple(CaCertificate(slug, role, x509.load_der_x509_certificate(der))
                for slug, role, der in rows)
    if not any(c.role == "ROOT" for c in cas):
        raise ConfigError(f"no root CA in the store {store.url.split('@')[-1]}")
    return Trust(cas)
