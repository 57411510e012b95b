"""Tables of the OpenID Connect provider (migration 0010_oidc).

``oidc_client``: the relying services the officer registered (``cps-admin client add``). A
client secret is 32 random bytes: only its SHA-256 is kept (a slow password hash protects
guessable secrets; these are not guessable, and the token endpoint checks one per request).

``oidc_state``: the provider's short-lived shared state when no Redis is configured — login
transactions, codes, refresh tokens, CIBA requests, revoked sessions — one JSON value per key
with its expiry, changed only by compare-and-set (``cps_login.oidc.state``), so every broker
replica and worker sees one truth.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, Boolean, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from pki.store.models import Base, UtcDateTime


class OidcClient(Base):
    __tablename__ = "oidc_client"

    client_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    secret_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    redirect_uris: Mapped[str] = mapped_column(Text)              # JSON list
    public: Mapped[bool] = mapped_column(Boolean, default=False)
    ciba: Mapped[bool] = mapped_column(Boolean, default=False)
    auth_method: Mapped[str] = mapped_column(String(32))
    jwks: Mapped[str | None] = mapped_column(Text, nullable=True)   # private_key_jwt
    tls_subject_dn: Mapped[str | None] = mapped_column(String(500), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)


class OidcState(Base):
    __tablename__ = "oidc_state"
    __table_args__ = (Index("ix_oidc_state_expires", "expires_at"),)

    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    expires_at: Mapped[int] = mapped_column(BigInteger)
