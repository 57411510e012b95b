"""Token introspection (RFC 7662) over mutual TLS, for relying services (SPEC §7).

``start_mtls(auth, host, port, app=...)`` serves the broker app's ``/introspect`` (and the
JWKS) on a TLS port that requires a client certificate (``ssl.CERT_REQUIRED``) chaining to the
home's roots. The TLS layer proves possession of the client key and builds the path; the app
then insists on an organisation certificate of an ORGANISATIONS CA with the organisation
policy and clientAuth, and checks its revocation status (``services.OrgClientChecker``). The
verified peer certificate reaches the app in the WSGI environ key ``PEER_CERT_ENVIRON``,
which no HTTP header can forge.

The server's own certificate is an organisation certificate issued by the home's
ORGANISATIONS CA for ``host`` (key in ``HOME/mtls/server.key``, 0600), made on first start.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import select
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from cps_login.web.broker import PEER_CERT_ENVIRON
from pki import ids
from pki.ca.authority import Authority, IssueRequest
from pki.config import write_private
from pki.store.models import Structure

# The operator of the broker: ASIP-Santé's SIREN (the OU of the CA names), as a structure id.
OPERATOR_SIREN = "187512751"
LOOPBACK_NAME = "mtls.localhost"
MTLS_PATHS = ("/introspect", "/.well-known/jwks.json")

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class _PeerCertHandler(WSGIRequestHandler):
    def make_environ(self) -> dict[str, Any]:
        environ: dict[str, Any] = super().make_environ()
        environ.pop("SSL_CLIENT_CERT", None)
        getpeercert = getattr(self.connection, "getpeercert", None)
        der = getpeercert(binary_form=True) if getpeercert is not None else None
        if der:
            environ[PEER_CERT_ENVIRON] = der
        return environ

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass   # the audit chain records introspections


def _only_introspection(app: WsgiApp) -> WsgiApp:
    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") not in MTLS_PATHS:
            start_response("404 Not Found", [("Content-Type", "application/json")])
            return [b'{"error":"not_found"}']
        return app(environ, start_response)

    return wrapped


def operator_structure(auth: Authority) -> str:
    """The structure id of the broker's operator, registered in the directory if needed."""
    structure_id = ids.validate_structure("SIREN", OPERATOR_SIREN)
    with auth.store.session() as session:
        found = session.execute(select(Structure.id).where(
            Structure.structure_id == structure_id)).first()
        if found is None:
            session.add(Structure(structure_id=structure_id, register="SIREN",
                                  name=auth.config.names.organisation, state="Paris (75)",
                                  created_at=dt.datetime.now(dt.UTC)))
    return structure_id


def server_credentials(auth: Authority, host: str) -> tuple[Path, Path]:
    """(certificate chain PEM, key PEM) of the TLS server, issued on first use."""
    folder = auth.config.home / "mtls"
    cert_path, key_path = folder / "server.pem", folder / "server.key"
    if cert_path.exists() and key_path.exists():
        cert = x509.load_pem_x509_certificates(cert_path.read_bytes())[0]
        if cert.not_valid_after_utc > auth.clock.now() + dt.timedelta(days=7):
            return cert_path, key_path
    key = ec.generate_private_key(ec.SECP256R1())
    issued = auth.issue(IssueRequest(profile="org", public_key=key.public_key(),
                                     structure_id=operator_structure(auth),
                                     dns_names=(_dns_name(host),)), actor="cps-login mtls")
    org_ca = auth.ca(issued.ca_slug).certificate
    write_private(key_path, key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()).decode())
    write_private(cert_path, (issued.pem + org_ca.public_bytes(serialization.Encoding.PEM)
                              ).decode(), mode=0o644)
    return cert_path, key_path


def _dns_name(host: str) -> str:
    """The SAN of the server certificate: the host name, or ``mtls.localhost`` for an address
    (the profile has DNS names only, and the linter wants a dotted name)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return host
    return LOOPBACK_NAME


def client_trust_pem(auth: Authority) -> str:
    """Roots and ORGANISATIONS CAs: only chains through them can complete the handshake."""
    return "".join(c.certificate.public_bytes(serialization.Encoding.PEM).decode()
                   for c in auth.cas() if c.role in ("ROOT", "ORGANISATIONS"))


def tls_context(auth: Authority, host: str) -> ssl.SSLContext:
    cert_path, key_path = server_credentials(auth, host)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(cert_path), str(key_path))
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cadata=client_trust_pem(auth))
    return context


class MtlsServer:
    def __init__(self, server: BaseWSGIServer) -> None:
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="mtls",
                                        daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    def start(self) -> MtlsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


def start_mtls(auth: Authority, host: str, port: int, app: WsgiApp | None = None
               ) -> Callable[[], None]:
    """Serve introspection on ``host:port`` with client certificates required; returns stop.

    ``app``: the broker app already built for the main port (share it: one set of services);
    built from ``auth`` when omitted.
    """
    return serve_mtls(auth, host, port, app).stop


def serve_mtls(auth: Authority, host: str, port: int, app: WsgiApp | None = None
               ) -> MtlsServer:
    if app is None:
        from cps_login.web import create_app

        app = create_app(auth=auth)
    server = make_server(host, port, _only_introspection(app), threaded=True,
                         request_handler=_PeerCertHandler, ssl_context=tls_context(auth, host))
    return MtlsServer(server).start()
