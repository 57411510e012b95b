"""The broker role as a process (gunicorn) with introspection over mutual TLS.

The officer issues the TLS server certificate (``cps-admin broker tls-cert``); the broker
process (``python -m cps_login.roles broker``) serves the login on its plain port and
``/introspect`` on its mutual-TLS port (gunicorn over TLS, client certificate required,
ORGANISATIONS CA chain), asking the test's status server for revocation.
"""

from __future__ import annotations

import http.client
import json
import signal
import socket
import ssl
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from pki.ca import lifecycle
from pki.ca.authority import IssueRequest
from pki.cli.broker import LOOPBACK_NAME
from tests.login.conftest import Env, free_port, http_call, login_body
from tests.login.roleproc import ROOT, RoleProcess, start_role


def admin(env: Env, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pki.cli.admin", "--home", str(env.home),
                           *args], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          check=False)


@pytest.fixture(scope="module")
def broker(env: Env) -> Iterator[tuple[RoleProcess, int]]:
    mtls_port = free_port()
    # Without the officer's TLS certificate the broker refuses to start, in one line.
    refused = subprocess.run([sys.executable, "-m", "cps_login.roles", "broker", "--home",
                              str(env.home), "--port", str(free_port()), "--mtls-port",
                              str(mtls_port)], cwd=ROOT, capture_output=True, text=True,
                             timeout=60, check=False)
    assert refused.returncode == 1
    assert refused.stderr.count("\n") == 1 and "broker tls-cert" in refused.stderr
    bad = admin(env, "broker", "tls-cert", "--host", "no_dots")
    assert bad.returncode == 1 and bad.stderr.startswith("error: --host")
    assert bad.stderr.count("\n") == 1 and not (env.home / "secrets/broker-tls.key").exists()
    done = admin(env, "broker", "tls-cert", "--host", "127.0.0.1")
    assert done.returncode == 0, done.stderr
    key = env.home / "secrets" / "broker-tls.key"
    assert key.stat().st_mode & 0o777 == 0o600
    process = start_role("broker", env.home, free_port(), "--mtls-port", str(mtls_port))
    try:
        yield process, mtls_port
    finally:
        process.stop()


def _pem(cert: object) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)  # type: ignore[attr-defined]


def org_client(env: Env, tmp: Path, name: str, profile: str = "org") -> tuple[Path, Path, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    if profile == "org":
        issued = env.auth.issue(IssueRequest(profile="org", public_key=key.public_key(),
                                             structure_id=env.structure_id,
                                             dns_names=(f"{name}.example",)))
        cert, ca, serial = issued.certificate, env.auth.ca(issued.ca_slug).certificate, \
            issued.serial
        env.extra_certs.append(cert)
    else:
        card = env.new_card(name, key_type="ec")
        key = card.key  # type: ignore[assignment]
        cert, ca, serial = card.auth, env.auth.issuing_ca("PERSONNES").certificate, card.serial
    cert_path = tmp / f"{name}.pem"
    cert_path.write_bytes(_pem(cert) + _pem(ca))
    key_path = tmp / f"{name}.key"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    env.wait_ocsp(serial, "good")   # the responder has picked the new certificate up
    return cert_path, key_path, serial


class Conn(http.client.HTTPSConnection):
    """To 127.0.0.1, checking the server certificate against its name ``mtls.localhost``."""

    def connect(self) -> None:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        self.sock = self._ctx.wrap_socket(sock, server_hostname=LOOPBACK_NAME)

    def __init__(self, port: int, ctx: ssl.SSLContext) -> None:
        super().__init__("127.0.0.1", port, context=ctx, timeout=10)
        self._ctx = ctx


def _context(env: Env, client: tuple[Path, Path] | None) -> ssl.SSLContext:
    root = env.auth.cas()[0].certificate
    ctx = ssl.create_default_context(cadata=_pem(root).decode())
    if client is not None:
        ctx.load_cert_chain(str(client[0]), str(client[1]))
    return ctx


def introspect(env: Env, port: int, token: str,
               client: tuple[Path, Path] | None) -> tuple[int, dict[str, object]]:
    conn = Conn(port, _context(env, client))
    try:
        conn.request("POST", "/introspect", body=urllib.parse.urlencode({"token": token}),
                     headers={"Content-Type": "application/x-www-form-urlencoded"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def _token(env: Env, process: RoleProcess) -> str:
    """A login against the broker PROCESS (its own token, OCSP from the status server)."""
    card = env.cards["alice"]
    _, ch = http_call(process.url + "/login/challenge", "POST", None, {})
    body = json.dumps(login_body(card.key, card.auth, ch["challenge"], env.base)).encode()
    status, answer = http_call(process.url + "/login", "POST", body,
                               {"Content-Type": "application/json"})
    assert status == 200, answer
    return str(answer["access_token"])


def test_first_line_says_what_the_broker_holds(broker: tuple[RoleProcess, int]) -> None:
    process, _ = broker
    assert process.first_line == (f"broker pid {process.proc.pid}: holds broker token "
                                  f"CPS-BROKER only (signs access tokens, no CA key)")


def test_introspection_with_an_organisation_certificate(env: Env, broker: tuple[RoleProcess, int],
                                                        tmp_path: Path) -> None:
    process, port = broker
    cert, key, _ = org_client(env, tmp_path, "relying")
    token = _token(env, process)
    status, body = introspect(env, port, token, (cert, key))
    assert status == 200 and body["active"] is True
    assert body["sub"] == env.cards["alice"].national_id and body["token_type"] == "Bearer"
    status, body = introspect(env, port, token[:-6] + "AAAAAA", (cert, key))
    assert (status, body) == (200, {"active": False})


def test_no_client_certificate_no_handshake(env: Env, broker: tuple[RoleProcess, int]) -> None:
    with pytest.raises((ssl.SSLError, ConnectionError)):
        introspect(env, broker[1], "x", None)


def test_card_certificate_is_not_an_organisation(env: Env, broker: tuple[RoleProcess, int],
                                                 tmp_path: Path) -> None:
    cert, key, _ = org_client(env, tmp_path, "dora", profile="auth")
    status, body = introspect(env, broker[1], _token(env, broker[0]), (cert, key))
    assert (status, body) == (401, {"error": "invalid_credentials"})


def test_revoked_organisation_certificate_refused(env: Env, broker: tuple[RoleProcess, int],
                                                  tmp_path: Path) -> None:
    cert, key, serial = org_client(env, tmp_path, "gone")
    lifecycle.revoke(env.auth, serial, "cessationOfOperation")
    env.wait_ocsp(serial, "revoked")
    status, body = introspect(env, broker[1], _token(env, broker[0]), (cert, key))
    assert (status, body) == (401, {"error": "invalid_credentials"})


def test_only_introspection_on_the_mtls_port(env: Env, broker: tuple[RoleProcess, int],
                                             tmp_path: Path) -> None:
    cert, key, _ = org_client(env, tmp_path, "nosy")
    conn = Conn(broker[1], _context(env, (cert, key)))
    conn.request("POST", "/login/challenge")
    assert conn.getresponse().status == 404
    conn.close()


def test_introspection_refused_on_the_plain_port(broker: tuple[RoleProcess, int]) -> None:
    status, body = http_call(broker[0].url + "/introspect", "POST", b"token=x",
                             {"Content-Type": "application/x-www-form-urlencoded",
                              "SSL-Client-Cert": "forged"})
    assert (status, body) == (401, {"error": "invalid_credentials"})


def test_sigterm_stops_the_broker_and_its_mtls_server(env: Env) -> None:
    """Its own process (the module's broker keeps serving the tests above)."""
    mtls_port = free_port()
    process = start_role("broker", env.home, free_port(), "--mtls-port", str(mtls_port))
    children = process.descendants()
    assert len(children) >= 3          # a worker, the mTLS arbiter and its worker
    assert process.stop(signal.SIGTERM) == 0
    for pid in children:
        assert not Path(f"/proc/{pid}").exists() or \
            Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", mtls_port), timeout=2).close()
