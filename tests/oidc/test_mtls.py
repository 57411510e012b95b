"""tls_client_auth (RFC 8705) for real: the broker role as a process, its mutual-TLS port
(gunicorn over TLS, client certificate chained to an ORGANISATIONS CA) serving the provider's
client-authenticated endpoints; the relying service's organisation certificate is its
credential, matched against the subject DN the officer registered."""

from __future__ import annotations

import json
import urllib.parse
from pathlib import Path

from cryptography import x509

from cps_login.oidc.clients import register
from tests.login.conftest import Env
from tests.login.roleproc import RoleProcess
from tests.login.test_mtls import Conn, _context, broker, org_client  # noqa: F401


def post(env: Env, port: int, path: str, form: dict[str, str],
         client: tuple[Path, Path]) -> tuple[int, dict[str, object]]:
    conn = Conn(port, _context(env, client))
    try:
        conn.request("POST", path, body=urllib.parse.urlencode(form),
                     headers={"Content-Type": "application/x-www-form-urlencoded"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def test_tls_client_auth_over_mutual_tls(env: Env, broker: tuple[RoleProcess, int],  # noqa: F811
                                         tmp_path: Path) -> None:
    _, port = broker
    cert_path, key_path, _ = org_client(env, tmp_path, "dossier")
    cert = x509.load_pem_x509_certificates(cert_path.read_bytes())[0]
    mine = register(env.auth.store, name="Dossier", redirect_uris=[], ciba=True,
                    auth_method="tls_client_auth", tls_subject_dn=cert.subject.rfc4514_string())
    theirs = register(env.auth.store, name="Other", redirect_uris=[], ciba=True,
                      auth_method="tls_client_auth", tls_subject_dn="CN=Someone else,O=X")
    form = {"scope": "openid", "login_hint": env.cards["alice"].national_id,
            "binding_message": "mTLS"}
    status, body = post(env, port, "/oidc/bc-authorize", {**form, "client_id": mine.client_id},
                        (cert_path, key_path))
    assert status == 200, body
    assert body["auth_req_id"] and body["interval"] == 5
    status, body = post(env, port, "/oidc/bc-authorize",
                        {**form, "client_id": theirs.client_id}, (cert_path, key_path))
    assert status in (400, 401) and body["error"] == "invalid_client"
    # a card's certificate passes the TLS layer (same roots) but is no organisation's
    card_cert, card_key, _ = org_client(env, tmp_path, "carla", profile="auth")
    status, body = post(env, port, "/oidc/bc-authorize", {**form, "client_id": mine.client_id},
                        (card_cert, card_key))
    assert status in (400, 401) and body["error"] == "invalid_client"
