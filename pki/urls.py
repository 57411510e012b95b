"""Every public URL the PKI embeds in certificates and CRLs, built in one place."""

from __future__ import annotations


def ca_slug(common_name: str) -> str:
    """`AC IGC-SANTE FORT PERSONNES` -> `ac-igc-sante-fort-personnes` (CONTRACT.md)."""
    return "-".join(common_name.lower().split())


def crl_path(slug: str, shard: int | None = None, *, delta: bool = False) -> str:
    name = slug if shard is None else f"{slug}-p{shard}"
    return f"/crl/{name}{'-delta' if delta else ''}.crl"


def crl_url(base: str, slug: str, shard: int | None = None, *, delta: bool = False) -> str:
    return base.rstrip("/") + crl_path(slug, shard, delta=delta)


def ocsp_url(base: str) -> str:
    return base.rstrip("/") + "/ocsp"


def ca_cert_path(slug: str) -> str:
    return f"/ca/{slug}.crt"


def ca_cert_url(base: str, slug: str) -> str:
    return base.rstrip("/") + ca_cert_path(slug)


def shard_of(serial: int, shards: int) -> int | None:
    """The CRL partition of a certificate; None when the CA publishes one classic CRL."""
    return None if shards <= 1 else serial % shards
