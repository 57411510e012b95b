"""Introspection over mutual TLS with an organisation certificate of the home's ORGANISATIONS CA."""

from __future__ import annotations

import http.client
import json
import ssl
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cps_login.mtls import LOOPBACK_NAME, MtlsServer, serve_mtls
from pki.ca import lifecycle
from pki.ca.authority import IssueRequest
from tests.login.conftest import Env, free_port, login_body


@pytest.fixture(scope="module")
def mtls(env: Env) -> Iterator[MtlsServer]:
    server = serve_mtls(env.auth, "127.0.0.1", free_port(), app=env.app)
    try:
        yield server
    finally:
        server.stop()


def _pem(cert: object) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)  # type: ignore[attr-defined]


def org_client(env: Env, tmp: Path, name: str, profile: str = "org") -> tuple[Path, Path, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    if profile == "org":
        issued = env.auth.issue(IssueRequest(profile="org", public_key=key.public_key(),
                                             structure_id=env.structure_id,
                                             dns_names=(f"{name}.example",)))
    else:
        card = env.new_card(name, key_type="ec")
        key = card.key  # type: ignore[assignment]
        issued_cert = card.auth
        ca = env.auth.issuing_ca("PERSONNES").certificate
        cert_path = tmp / f"{name}.pem"
        cert_path.write_bytes(_pem(issued_cert) + _pem(ca))
        key_path = tmp / f"{name}.key"
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        return cert_path, key_path, f"{issued_cert.serial_number:X}"
    ca = env.auth.ca(issued.ca_slug).certificate
    cert_path = tmp / f"{name}.pem"
    cert_path.write_bytes(issued.pem + _pem(ca))
    key_path = tmp / f"{name}.key"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    env.extra_certs.append(issued.certificate)
    env.wait_ocsp(issued.serial, "good")   # the responder has picked the new certificate up
    return cert_path, key_path, issued.serial


class Conn(http.client.HTTPSConnection):
    """To 127.0.0.1, checking the server certificate against its name ``mtls.localhost``."""

    def connect(self) -> None:
        import socket

        sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        self.sock = self._ctx.wrap_socket(sock, server_hostname=LOOPBACK_NAME)

    def __init__(self, port: int, ctx: ssl.SSLContext) -> None:
        super().__init__("127.0.0.1", port, context=ctx, timeout=10)
        self._ctx = ctx


def introspect(env: Env, server: MtlsServer, token: str,
               client: tuple[Path, Path] | None) -> tuple[int, dict[str, object]]:
    root = env.auth.cas()[0].certificate
    ctx = ssl.create_default_context(cadata=_pem(root).decode())
    if client is not None:
        ctx.load_cert_chain(str(client[0]), str(client[1]))
    conn = Conn(server.port, ctx)
    try:
        conn.request("POST", "/introspect", body=urllib.parse.urlencode({"token": token}),
                     headers={"Content-Type": "application/x-www-form-urlencoded"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def _token(env: Env) -> str:
    card = env.cards["alice"]
    _, ch = env.post("/login/challenge")
    status, body = env.post("/login", login_body(card.key, card.auth, ch["challenge"], env.base))
    assert status == 200
    return str(body["access_token"])


def test_introspection_with_an_organisation_certificate(env: Env, mtls: MtlsServer,
                                                        tmp_path: Path) -> None:
    cert, key, _ = org_client(env, tmp_path, "relying")
    token = _token(env)
    status, body = introspect(env, mtls, token, (cert, key))
    assert status == 200 and body["active"] is True
    assert body["sub"] == env.cards["alice"].national_id and body["token_type"] == "Bearer"
    status, body = introspect(env, mtls, token[:-6] + "AAAAAA", (cert, key))
    assert (status, body) == (200, {"active": False})


def test_no_client_certificate_no_handshake(env: Env, mtls: MtlsServer) -> None:
    with pytest.raises((ssl.SSLError, ConnectionError)):
        introspect(env, mtls, "x", None)


def test_card_certificate_is_not_an_organisation(env: Env, mtls: MtlsServer,
                                                 tmp_path: Path) -> None:
    cert, key, serial = org_client(env, tmp_path, "dora", profile="auth")
    env.wait_ocsp(serial, "good")
    status, body = introspect(env, mtls, _token(env), (cert, key))
    assert (status, body) == (401, {"error": "invalid_credentials"})


def test_revoked_organisation_certificate_refused(env: Env, mtls: MtlsServer,
                                                  tmp_path: Path) -> None:
    cert, key, serial = org_client(env, tmp_path, "gone")
    lifecycle.revoke(env.auth, serial, "cessationOfOperation")
    env.wait_ocsp(serial, "revoked")
    status, body = introspect(env, mtls, _token(env), (cert, key))
    assert (status, body) == (401, {"error": "invalid_credentials"})


def test_only_introspection_on_the_mtls_port(env: Env, mtls: MtlsServer, tmp_path: Path) -> None:
    cert, key, _ = org_client(env, tmp_path, "nosy")
    root = env.auth.cas()[0].certificate
    ctx = ssl.create_default_context(cadata=_pem(root).decode())
    ctx.load_cert_chain(str(cert), str(key))
    conn = Conn(mtls.port, ctx)
    conn.request("GET", "/api/whoami")
    assert conn.getresponse().status == 404
    conn.close()


def test_introspection_refused_on_the_plain_port(env: Env) -> None:
    status, body = env.post("/introspect", form={"token": "x"},
                            headers={"SSL-Client-Cert": "forged"})
    assert (status, body) == (401, {"error": "invalid_credentials"})
