"""Relying services (OAuth clients) registered by the officer, as Authlib sees them.

``register`` / ``listing`` / ``remove`` back ``cps-admin client add|list|remove``;
``ClientRegistry`` is what the provider asks (cached briefly: the token endpoint asks on every
request). A confidential client authenticates with one method, chosen at registration:

* ``client_secret_basic`` — the default; the secret is shown once and only its SHA-256 kept;
* ``private_key_jwt`` — a signed assertion (RFC 7523) checked with the client's JWKS;
* ``tls_client_auth`` — RFC 8705: the organisation certificate the TLS layer verified, whose
  subject DN is the registered one (the mutual-TLS port of the broker role).

A public client (``--public``: a native or browser app) has no secret and must use PKCE S256.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import delete, select

from cps_login.oidc.models import OidcClient
from pki.errors import InvalidInput, NotFound
from pki.store.db import Store

AUTH_METHODS = ("client_secret_basic", "private_key_jwt", "tls_client_auth")
CIBA_GRANT = "urn:openid:params:grant-type:ciba"
# Identity scopes only: an OIDC access token is for the relying service and the provider's
# userinfo, never for the patient-record API (that takes the broker's own card-login token).
SCOPES = ("openid", "profile", "scope_all", "offline_access")


def secret_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def check_redirect_uri(uri: str) -> str:
    """An absolute http(s) URI without fragment (RFC 6749 §3.1.2); http only for loopback."""
    parts = urlsplit(uri)
    if parts.scheme not in ("https", "http") or not parts.hostname or parts.fragment:
        raise InvalidInput(f"redirect URI {uri!r}: an absolute https URI without fragment")
    if parts.scheme == "http" and parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise InvalidInput(f"redirect URI {uri!r}: http is for loopback addresses only")
    return uri


@dataclass(frozen=True)
class Client:
    """Authlib's ClientMixin over one ``oidc_client`` row (immutable: re-read to refresh)."""

    client_id: str
    name: str
    secret_sha256: str | None
    redirect_uris: tuple[str, ...]
    public: bool
    ciba: bool
    auth_method: str
    jwks: dict[str, Any] | None
    tls_subject_dn: str | None

    @classmethod
    def of(cls, row: OidcClient) -> Client:
        return cls(row.client_id, row.name, row.secret_sha256,
                   tuple(json.loads(row.redirect_uris)), row.public, row.ciba,
                   row.auth_method, json.loads(row.jwks) if row.jwks else None,
                   row.tls_subject_dn)

    # --- authlib.oauth2.rfc6749.ClientMixin
    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str | None:
        return self.redirect_uris[0] if len(self.redirect_uris) == 1 else None

    def get_allowed_scope(self, scope: str | None) -> str:
        wanted = (scope or "openid").split()
        return " ".join(s for s in wanted if s in SCOPES)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.redirect_uris       # exact match, never a prefix

    def check_client_secret(self, client_secret: str) -> bool:
        if self.secret_sha256 is None:
            return False
        return hmac.compare_digest(self.secret_sha256, secret_digest(client_secret))

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        if self.public:
            # a public client has no secret: it authenticates by its id where it must be able
            # to act without one (its tokens; revoking its own refresh token at sign-out)
            return method == "none" and endpoint in ("token", "revocation")
        return method == self.auth_method or (
            method == "client_assertion_jwt" and self.auth_method == "private_key_jwt")

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        if grant_type == CIBA_GRANT:
            return self.ciba and not self.public
        return grant_type in ("authorization_code", "refresh_token")

    @property
    def client_metadata(self) -> dict[str, Any]:
        """What RP-initiated logout reads: post-logout redirects go to a registered redirect
        URI only."""
        return {"post_logout_redirect_uris": list(self.redirect_uris)}

    @property
    def token_endpoint_auth_method(self) -> str:
        return "none" if self.public else self.auth_method


@dataclass(frozen=True)
class Registered:
    client_id: str
    client_secret: str | None
    client: Client


def register(store: Store, *, name: str, redirect_uris: list[str], public: bool = False,
             ciba: bool = False, auth_method: str = "client_secret_basic",
             jwks: dict[str, Any] | None = None, tls_subject_dn: str | None = None,
             now: dt.datetime | None = None) -> Registered:
    """Add a client; bad input raises InvalidInput and writes nothing."""
    name = name.strip()
    if not name or len(name) > 200:
        raise InvalidInput("client name: 1 to 200 characters")
    if not redirect_uris and not ciba:
        raise InvalidInput("at least one --redirect-uri (or --ciba for a back-channel client)")
    uris = [check_redirect_uri(u) for u in redirect_uris]
    if auth_method not in AUTH_METHODS:
        raise InvalidInput(f"auth method {auth_method!r}: one of {', '.join(AUTH_METHODS)}")
    if public and (ciba or auth_method != "client_secret_basic"):
        raise InvalidInput("a public client has no credentials: no --ciba, no auth method")
    if auth_method == "private_key_jwt" and not (jwks and isinstance(jwks.get("keys"), list)):
        raise InvalidInput("private_key_jwt needs the client's public keys (--jwks FILE)")
    if auth_method == "tls_client_auth" and not tls_subject_dn:
        raise InvalidInput("tls_client_auth needs the organisation certificate's subject "
                           "(--tls-subject DN)")
    client_id = "cps-" + secrets.token_hex(8)
    secret = None if public or auth_method != "client_secret_basic" else secrets.token_urlsafe(32)
    row = OidcClient(client_id=client_id, name=name,
                     secret_sha256=secret_digest(secret) if secret else None,
                     redirect_uris=json.dumps(uris), public=public, ciba=ciba,
                     auth_method=auth_method, jwks=json.dumps(jwks) if jwks else None,
                     tls_subject_dn=tls_subject_dn, created_at=now or dt.datetime.now(dt.UTC))
    with store.session() as session:
        session.add(row)
        client = Client.of(row)
    return Registered(client_id, secret, client)


def listing(store: Store) -> list[dict[str, Any]]:
    with store.read() as session:
        rows = session.execute(select(OidcClient).order_by(OidcClient.created_at)).scalars()
        return [{"client_id": r.client_id, "name": r.name,
                 "redirect_uris": json.loads(r.redirect_uris),
                 "type": "public" if r.public else "confidential", "ciba": r.ciba,
                 "auth_method": "none" if r.public else r.auth_method,
                 "created_at": r.created_at.isoformat()} for r in rows]


def remove(store: Store, client_id: str) -> None:
    with store.session() as session:
        done = session.execute(delete(OidcClient).where(OidcClient.client_id == client_id))
        if getattr(done, "rowcount", 0) != 1:
            raise NotFound(f"no client {client_id!r}")


class ClientRegistry:
    """``query_client`` for Authlib: rows cached ``ttl`` seconds (a removed client is refused
    within that delay by a replica that saw it)."""

    def __init__(self, store: Store, ttl: float = 10.0) -> None:
        self._store = store
        self._ttl = ttl
        self._cache: dict[str, tuple[float, Client | None]] = {}
        self._lock = threading.Lock()

    def query(self, client_id: object) -> Client | None:
        if not isinstance(client_id, str) or not 0 < len(client_id) <= 64:
            return None
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(client_id)
        if hit is not None and hit[0] > now:
            return hit[1]
        with self._store.read() as session:
            row = session.get(OidcClient, client_id)
            client = Client.of(row) if row is not None else None
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[client_id] = (now + self._ttl, client)
        return client
