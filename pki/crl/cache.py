"""The bytes the HTTP layer serves: an immutable snapshot per URL path, swapped atomically.

Publishers ``put`` new resources; request handlers read ``snapshot`` once per request and never
touch the store, the HSM or a lock on the way.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from cryptography import x509

from pki import urls

CRL_TYPE = "application/pkix-crl"
CERT_TYPE = "application/pkix-cert"
# Full CRLs change on schedule: let shared caches keep them a few minutes. Deltas carry the
# latest revocations: caches must revalidate every time (cheap, with the ETag).
FULL_CACHE_CONTROL = "public, max-age=300, no-transform"
DELTA_CACHE_CONTROL = "public, max-age=0, must-revalidate, no-transform"
CERT_CACHE_CONTROL = "public, max-age=86400, no-transform"


@dataclass(frozen=True)
class Resource:
    body: bytes
    content_type: str
    etag: str                          # quoted strong validator
    last_modified: dt.datetime         # whole seconds, UTC
    cache_control: str
    expires: dt.datetime | None = None

    @classmethod
    def of(cls, body: bytes, content_type: str, last_modified: dt.datetime, cache_control: str,
           expires: dt.datetime | None = None) -> Resource:
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        return cls(body, content_type, etag, last_modified.astimezone(dt.UTC).replace(
            microsecond=0), cache_control, expires)

    @classmethod
    def crl(cls, der: bytes, this_update: dt.datetime, next_update: dt.datetime, *,
            delta: bool) -> Resource:
        return cls.of(der, CRL_TYPE, this_update,
                      DELTA_CACHE_CONTROL if delta else FULL_CACHE_CONTROL, next_update)

    @classmethod
    def certificate(cls, der: bytes) -> Resource:
        cert = x509.load_der_x509_certificate(der)
        return cls.of(der, CERT_TYPE, cert.not_valid_before_utc, CERT_CACHE_CONTROL)


class PublicationCache:
    """Latest DER per URL path. Writers serialise on a lock; readers take the current snapshot."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._snapshot: Mapping[str, Resource] = MappingProxyType({})

    @property
    def snapshot(self) -> Mapping[str, Resource]:
        return self._snapshot

    def put_many(self, items: Iterable[tuple[str, Resource]]) -> None:
        with self._lock:
            new = dict(self._snapshot)
            new.update(items)
            self._snapshot = MappingProxyType(new)

    def put(self, path: str, resource: Resource) -> None:
        self.put_many([(path, resource)])

    def put_ca_certificate(self, slug: str, der: bytes) -> None:
        self.put(urls.ca_cert_path(slug), Resource.certificate(der))

    def put_crl(self, path: str, der: bytes, this_update: dt.datetime,
                next_update: dt.datetime, *, delta: bool) -> None:
        self.put(path, Resource.crl(der, this_update, next_update, delta=delta))
