"""Offline root ceremonies: the only code that opens the root token (``secrets/root.pin``).

The roots' keys live in their own token (``HsmConfig.root_token_label``); no running role opens
it, so what a root signs — its issuing CAs' certificates and its CRL (the ARL) — is signed here,
by ``cps-admin init`` and the ``cps-admin root`` commands (docs/roles.md):

* ``sign_ca``: a new certificate for an issuing CA's existing key (re-certification: new serial,
  validity from now, same subject and key), linted before the root key signs it;
* ``publish_root_crls``: each root's full CRL, stored where the status tier serves CRLs from.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pki import audit, urls
from pki.ca import profiles
from pki.ca.authority import Authority, CaInfo, PublicKey
from pki.ca.issuer import lint_then_sign
from pki.clock import SYSTEM_CLOCK, Clock, utc_seconds
from pki.config import Config, default_home, write_private
from pki.crl import publisher
from pki.crl.publisher import ROOT_ROLE, PublishedCrl
from pki.errors import HsmError, InvalidInput, NotFound
from pki.hsm import Hsm
from pki.signer import TbsSigner
from pki.store.db import Store
from pki.store.models import CertificateAuthority

ACTOR = "cps-admin root"


def issuing_builder(config: Config, subject: x509.Name, root: x509.Certificate, root_slug: str,
                    public_key: PublicKey, *, not_before: dt.datetime) -> x509.CertificateBuilder:
    """An issuing CA certificate under ``root`` (pathLen 0), ending no later than the root."""
    days = min(config.profiles.ca_validity_days - 1,
               (root.not_valid_after_utc - not_before) // dt.timedelta(days=1))
    if days < 1:
        raise InvalidInput(f"root {root_slug} expires {root.not_valid_after_utc:%Y-%m-%d}: "
                           f"too soon to certify an issuing CA under it")
    root_key = root.public_key()
    assert isinstance(root_key, PublicKey)
    return profiles.ca_builder(subject, root.subject, public_key, root_key,
                               not_before=not_before, days=days, path_length=0,
                               aia_base=config.base_url, issuer_slug=root_slug,
                               crl_url=urls.crl_url(config.base_url, root_slug))


def ca_pem(der: bytes) -> str:
    return x509.load_der_x509_certificate(der).public_bytes(
        serialization.Encoding.PEM).decode("ascii")


class RootCeremony:
    """The roots of a home during a ceremony; what ``pki.crl.publisher`` needs for root CRLs.

    ``signer`` signs with a root key only. The CA token (``authority.hsm``) is opened only by
    ``sign_ca``, to check that the CA key it certifies is there.
    """

    def __init__(self, authority: Authority, root_hsm: Hsm | None = None) -> None:
        self.authority = authority
        self._root_hsm = root_hsm
        self._own_root_hsm = root_hsm is None

    @classmethod
    def open(cls, home: Path | None = None, db_url: str | None = None,
             clock: Clock = SYSTEM_CLOCK) -> RootCeremony:
        return cls(Authority.open(home or default_home(), db_url, clock))

    # --- what the CRL publisher reads -------------------------------------------------
    @property
    def config(self) -> Config:
        # publish_full dates a full CRL with crl.validity_hours; a root's lives root_validity_days.
        cfg = self.authority.config
        return dataclasses.replace(cfg, crl=dataclasses.replace(
            cfg.crl, validity_hours=cfg.crl.root_validity_days * 24))

    @property
    def store(self) -> Store:
        return self.authority.store

    @property
    def clock(self) -> Clock:
        return self.authority.clock

    def cas(self) -> Sequence[CaInfo]:
        return self.authority.cas()

    def ca(self, slug: str) -> CaInfo:
        return self.authority.ca(slug)

    def signer(self, slug: str) -> TbsSigner:
        ca = self.ca(slug)
        if ca.role != ROOT_ROLE:
            raise InvalidInput(f"{slug} is not a root CA; its key is not in the root token")
        return TbsSigner(self.root_hsm.key(ca.key_label), ca.certificate)

    # --- tokens ------------------------------------------------------------------------
    @property
    def root_hsm(self) -> Hsm:
        if self._root_hsm is None:
            c = self.authority.config
            self._root_hsm = Hsm(c.hsm.module, c.hsm.root_token_label,
                                 c.read_secret(c.hsm.root_pin_file), c.softhsm_conf_path())
        return self._root_hsm

    def close_root(self) -> None:
        """Close the root token session this ceremony opened (not one it was given)."""
        if self._own_root_hsm and self._root_hsm is not None:
            self._root_hsm.close()
            self._root_hsm = None

    def close(self) -> None:
        self.close_root()
        self.authority.close()

    def issuing_ca(self, name: str) -> CaInfo:
        """An issuing CA by slug or common name (any case)."""
        wanted = name.strip().lower()
        for ca in self.authority.issuing_cas():
            if wanted in (ca.slug, ca.name.lower(), urls.ca_slug(ca.name)):
                return ca
        known = ", ".join(c.slug for c in self.authority.issuing_cas())
        raise NotFound(f"no issuing CA {name!r}; known: {known}")


@dataclass(frozen=True)
class Recertified:
    slug: str
    serial: str
    previous_serial: str
    not_before: dt.datetime
    not_after: dt.datetime
    pem_path: Path
    der: bytes = dataclasses.field(repr=False)

    def summary(self) -> dict[str, str]:
        return {"ca": self.slug, "serial": self.serial, "previous_serial": self.previous_serial,
                "not_before": self.not_before.isoformat(),
                "not_after": self.not_after.isoformat(), "pem": str(self.pem_path)}


def sign_ca(ceremony: RootCeremony, name: str) -> Recertified:
    """Re-certify the issuing CA ``name``: its current key, a new certificate from its root."""
    auth = ceremony.authority
    ca = ceremony.issuing_ca(name)
    if ca.parent_id is None:
        raise InvalidInput(f"{ca.slug} has no parent root CA")
    root = auth.ca_by_id(ca.parent_id)
    public_key = ca.certificate.public_key()
    assert isinstance(public_key, PublicKey)
    # The key being certified must be the one in the CA token: certifying a key nobody holds
    # would leave the CA unable to sign under its new certificate.
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if auth.hsm.key(ca.key_label).public_key().public_bytes(*spki) != \
            public_key.public_bytes(*spki):
        raise HsmError(f"key {ca.key_label!r} in token {auth.hsm.token_label!r} does not match "
                       f"the certificate of {ca.slug}")
    root_key = ceremony.root_hsm.key(root.key_label)
    now = utc_seconds(auth.clock.now())
    cert = lint_then_sign(issuing_builder(auth.config, ca.certificate.subject, root.certificate,
                                          root.slug, public_key, not_before=now),
                          root_key, f"issuing CA {ca.name}")
    der = cert.public_bytes(serialization.Encoding.DER)
    pem_path = auth.config.path(f"ca/{ca.slug}.pem")
    with auth.store.session() as session:
        row = session.get(CertificateAuthority, ca.id)
        if row is None:
            raise NotFound(f"CA {ca.slug} vanished from the store")
        row.cert_der = der
        row.not_before = cert.not_valid_before_utc
        row.not_after = cert.not_valid_after_utc
        audit.append(session, "ca.certify", ca.slug, {
            "issuer": root.slug, "serial": f"{cert.serial_number:X}",
            "sha256": hashlib.sha256(der).hexdigest(),
            "previous_serial": f"{ca.certificate.serial_number:X}",
            "previous_sha256": hashlib.sha256(ca.der).hexdigest()}, actor=ACTOR, clock=auth.clock)
        session.flush()
        # Last inside the transaction: a failed write rolls the store back with it.
        write_private(pem_path, ca_pem(der), mode=0o644)
    auth.invalidate_cache()
    return Recertified(ca.slug, f"{cert.serial_number:X}", f"{ca.certificate.serial_number:X}",
                       cert.not_valid_before_utc, cert.not_valid_after_utc, pem_path, der)


def publish_root_crls(ceremony: RootCeremony) -> list[PublishedCrl]:
    """Each root's full CRL (the ARL), signed with the root key and stored."""
    roots = [ca for ca in ceremony.cas() if ca.role == ROOT_ROLE]
    for ca in roots:    # every root key found before any CRL is stored: all or nothing
        ceremony.signer(ca.slug)
    out: list[PublishedCrl] = []
    for ca in roots:
        out += publisher.publish_full(ceremony, ca.slug)
    return out
