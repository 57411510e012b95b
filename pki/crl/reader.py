"""CRLs and CA certificates served from the store, without a CA key.

``CrlReader`` keeps a ``PublicationCache`` current from the ``crl`` table: the signer role's
``CrlService`` builds on it (and publishes), the status role runs it alone over ``StoreCas``, a
view of the ``ca`` table that needs no Authority (and so no PKCS#11 module).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from cryptography import x509
from sqlalchemy import select

from pki import urls
from pki.config import Config
from pki.crl import source
from pki.crl.cache import PublicationCache
from pki.crl.http import crl_handler
from pki.crl.scope import ROOT_ROLE, CaView, scopes
from pki.http import Handler
from pki.store.db import Store
from pki.store.models import CertificateAuthority


class StoreView(Protocol):
    """What serving CRLs needs: the config, the store, the CAs."""

    @property
    def config(self) -> Config: ...

    @property
    def store(self) -> Store: ...

    def cas(self) -> Sequence[CaView]: ...


@dataclass(frozen=True)
class CaRow:
    """A CA as the status role sees it: a row of the ``ca`` table (pki.crl.publisher.CaView)."""

    id: int
    slug: str
    role: str
    der: bytes
    certificate: x509.Certificate


class StoreCas:
    """``StoreView`` straight from the ``ca`` table; ``reload`` picks up new or re-certified
    CAs (cheap: a handful of rows)."""

    def __init__(self, config: Config, store: Store) -> None:
        self.config = config
        self.store = store
        self._cas: list[CaRow] = []
        self._lock = threading.Lock()

    def reload(self) -> bool:
        """Read the CA rows again; True when a CA was added or its certificate changed."""
        with self.store.read() as session:
            rows = session.execute(select(
                CertificateAuthority.id, CertificateAuthority.slug, CertificateAuthority.role,
                CertificateAuthority.cert_der).order_by(CertificateAuthority.id)).all()
        known = {(c.id, c.der) for c in self._cas}
        if {(r.id, bytes(r.cert_der)) for r in rows} == known:
            return False
        with self._lock:
            self._cas = [CaRow(r.id, r.slug, r.role, bytes(r.cert_der),
                               x509.load_der_x509_certificate(bytes(r.cert_der))) for r in rows]
        return True

    def cas(self) -> list[CaRow]:
        if not self._cas:
            self.reload()
        return list(self._cas)

    def by_id(self, ca_id: int) -> CaRow | None:
        return next((c for c in self.cas() if c.id == ca_id), None)


class CrlReader:
    """The newest stored CRL of every scope and every CA certificate, in a PublicationCache."""

    def __init__(self, view: StoreView, cache: PublicationCache | None = None) -> None:
        self.view = view
        self.cache = cache or PublicationCache()
        self._known: dict[int, int] = {}          # CA id -> highest CRL number in the cache

    @property
    def handler(self) -> Handler:
        return crl_handler(self.cache)

    def ready(self) -> bool:
        """True once every issuing CA's full CRLs (each partition) can be served. A root's CRL
        comes from the offline ceremony (``cps-admin root crl``), not from a running role: it
        is served when stored, and its absence is nothing a role could fix."""
        served = self.cache.snapshot
        return all(urls.crl_path(ca.slug, shard, delta=False) in served
                   for ca in self.view.cas() if ca.role != ROOT_ROLE
                   for shard in scopes(self.view.config, ca))

    def load(self) -> None:
        """CA certificates and the newest stored CRL of every scope, into the cache."""
        for ca in self.view.cas():
            self.cache.put_ca_certificate(ca.slug, ca.der)
        self._refresh()

    def _refresh(self) -> None:
        with self.view.store.read() as session:
            numbers = source.latest_numbers(session)
            for ca in self.view.cas():
                newest = numbers.get(ca.id)
                if newest is None or self._known.get(ca.id, 0) >= newest:
                    continue
                for shard in scopes(self.view.config, ca):
                    for kind in ("full", "delta"):
                        stored = source.latest(session, ca.id, kind, shard)
                        if stored is not None:
                            self.cache.put_crl(
                                urls.crl_path(ca.slug, shard, delta=kind == "delta"),
                                source.der_of(session, ca.id, stored.number),
                                stored.this_update, stored.next_update, delta=kind == "delta")
                self._known[ca.id] = newest


class StoreCrls(CrlReader):
    """The status role's CRL side: ``poll`` about once a second (a new CRL or a re-certified CA
    is served within ~1 s)."""

    def __init__(self, cas: StoreCas, cache: PublicationCache | None = None) -> None:
        super().__init__(cas, cache)
        self.cas = cas

    def poll(self) -> None:
        if self.cas.reload():
            for ca in self.cas.cas():
                self.cache.put_ca_certificate(ca.slug, ca.der)
        self._refresh()
