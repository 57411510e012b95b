"""Token introspection (RFC 7662) over mutual TLS, for relying services (SPEC §7).

The broker role serves ``/introspect`` (and the JWKS) on its mutual-TLS port with gunicorn over
TLS (``cps_login.roles``): client certificate required (``ssl.CERT_REQUIRED``), chaining to
the home's roots through an ORGANISATIONS CA (``ca_certs`` = that chain, from the store). The
TLS layer proves possession of the client key and builds the path; the app then insists on an
organisation certificate of an ORGANISATIONS CA with the organisation policy and clientAuth,
and checks its revocation status (``services.OrgClientChecker``). The verified peer
certificate is read from the TLS socket gunicorn hands the app (``environ["gunicorn.socket"]``)
and put in the WSGI environ key ``PEER_CERT_ENVIRON``, which no HTTP header can forge.

The server's own certificate and key are issued by the security officer
(``cps-admin broker tls-cert --host H``, an organisation certificate of the operator) into
``secrets/broker-tls.crt`` (chain) and ``secrets/broker-tls.key`` (0600): the broker holds no
CA and cannot issue it itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from cps_login.trust import Trust
from cps_login.web.broker import PEER_CERT_ENVIRON
from pki.config import BROKER_TLS_CERT_FILE, BROKER_TLS_KEY_FILE, write_private
from pki.errors import ConfigError

# The OpenID Connect endpoints where a client may authenticate with its organisation
# certificate (tls_client_auth, RFC 8705) are served here too.
MTLS_PATHS = ("/introspect", "/.well-known/jwks.json", "/health", "/oidc/token",
              "/oidc/introspect", "/oidc/revoke", "/oidc/bc-authorize")
TLS_CERT_FILE = BROKER_TLS_CERT_FILE
TLS_KEY_FILE = BROKER_TLS_KEY_FILE
CLIENT_CAS_FILE = "run/broker-client-cas.pem"

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def tls_files(home: Path) -> tuple[Path, Path]:
    """(certificate chain PEM, key PEM) of the mutual-TLS server; ConfigError when missing."""
    cert, key = home / TLS_CERT_FILE, home / TLS_KEY_FILE
    for path in (cert, key):
        if not path.is_file():
            raise ConfigError(f"{path} is missing: run `cps-admin broker tls-cert --host HOST` "
                              f"first (the officer issues the broker's TLS certificate)")
    return cert, key


def client_cas_file(home: Path, trust: Trust) -> Path:
    """Write the roots + ORGANISATIONS CAs (PEM) the TLS layer accepts client chains to."""
    path = home / CLIENT_CAS_FILE
    write_private(path, trust.client_ca_pem(), mode=0o644)
    return path


def peer_certificate(environ: dict[str, Any]) -> bytes | None:
    """DER of the client certificate the TLS handshake verified, from gunicorn's socket."""
    sock = environ.get("gunicorn.socket")
    getpeercert = getattr(sock, "getpeercert", None)
    if getpeercert is None:
        return None
    der = getpeercert(binary_form=True)
    return bytes(der) if der else None


def introspection_only(app: WsgiApp) -> WsgiApp:
    """The broker app as the mutual-TLS port shows it: introspection, JWKS and health only,
    with the verified client certificate in ``PEER_CERT_ENVIRON``."""
    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        environ.pop(PEER_CERT_ENVIRON, None)
        if environ.get("PATH_INFO") not in MTLS_PATHS:
            start_response("404 Not Found", [("Content-Type", "application/json")])
            return [b'{"error":"not_found"}']
        der = peer_certificate(environ)
        if der is not None:
            environ[PEER_CERT_ENVIRON] = der
        return app(environ, start_response)

    return wrapped
