"""What a CA publishes, without the publisher: roles and partitions (scopes).

Kept apart from pki.crl.publisher so that serving CRLs (pki.crl.reader, the status role) loads
neither the CRL builder nor the linter.
"""

from __future__ import annotations

from typing import Protocol

from cryptography import x509

from pki.config import Config

ROOT_ROLE = "ROOT"


class CaView(Protocol):
    """What the publisher needs to know of a CA (pki.ca.authority.CaInfo provides it)."""

    @property
    def id(self) -> int: ...

    @property
    def slug(self) -> str: ...

    @property
    def role(self) -> str: ...

    @property
    def der(self) -> bytes: ...

    @property
    def certificate(self) -> x509.Certificate: ...


def scopes(config: Config, ca: CaView) -> list[int | None]:
    """The scopes a CA publishes: ``[None]`` for one classic CRL; with N partitions, the
    complete CRL (``None``, at ``/crl/<slug>.crl``, for relying parties that fetch the CA's
    whole list) and then partitions ``0..N-1`` (what its certificates' CDPs name)."""
    if ca.role == ROOT_ROLE or config.crl.shards <= 1:
        return [None]
    return [None, *range(config.crl.shards)]
