"""Refresh rotation, revocation (RFC 7009), introspection (RFC 7662), RP-initiated logout,
private_key_jwt (RFC 7523) and tls_client_auth (RFC 8705) client authentication, the
officer's ``cps-admin client`` commands."""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from urllib.parse import urlencode

import jwt
import requests
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from cps_login.oidc.clients import listing
from pki.ca.authority import IssueRequest
from pki.cli.admin import main as admin
from tests.oidc.conftest import OidcServer
from tests.oidc.test_refusals import REDIRECT, exchange, get_code, token_request


def tokens_for(server: OidcServer, client_id: str, secret: str | None) -> dict[str, str]:
    verifier = secrets.token_urlsafe(48)
    answer = exchange(server, client_id, secret, get_code(server, client_id, verifier),
                      verifier)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def introspect(server: OidcServer, client_id: str, secret: str, token: str,
               hint: str | None = None) -> dict[str, object]:
    data = {"token": token, **({"token_type_hint": hint} if hint else {})}
    answer = requests.post(server.discovery()["introspection_endpoint"], data=data,
                           auth=(client_id, secret), timeout=10)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def test_refresh_rotates_is_bound_to_its_client_and_replay_ends_the_session(
        oidc: OidcServer) -> None:
    client, other = oidc.client(), oidc.client(name="Other")
    secret = str(client.client_secret)
    first = tokens_for(oidc, client.client_id, secret)
    stolen = token_request(oidc, other.client_id, str(other.client_secret),
                           grant_type="refresh_token", refresh_token=first["refresh_token"])
    assert stolen.status_code == 400 and stolen.json()["error"] == "invalid_grant"
    second = token_request(oidc, client.client_id, secret, grant_type="refresh_token",
                           refresh_token=first["refresh_token"])
    assert second.status_code == 200, second.text
    rotated = second.json()
    assert rotated["refresh_token"] != first["refresh_token"]
    assert introspect(oidc, client.client_id, secret, rotated["access_token"])["active"]
    # the old refresh token used again: refused, and the whole login session ends
    replay = token_request(oidc, client.client_id, secret, grant_type="refresh_token",
                           refresh_token=first["refresh_token"])
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    assert introspect(oidc, client.client_id, secret, rotated["access_token"]) == \
        {"active": False}
    after = token_request(oidc, client.client_id, secret, grant_type="refresh_token",
                          refresh_token=rotated["refresh_token"])
    assert after.status_code == 400


def test_a_refresh_refused_before_rotation_keeps_the_refresh_token(
        oidc: OidcServer) -> None:
    """Nothing is written before a refresh is granted: the status tier away (503, fail
    closed) or a widened scope (invalid_scope) leave the refresh token usable, and an
    unknown family, a forged secret of a live family, or garbage change nothing."""
    from cps_login.errors import RevocationUnavailable
    from cps_login.web import services_of

    client = oidc.client()
    secret = str(client.client_secret)
    first = tokens_for(oidc, client.client_id, secret)
    login = services_of(oidc.app).login
    checker = login._revocation

    def away(*_: object) -> object:
        raise RevocationUnavailable("OCSP: down; CRL: down")

    original = checker.status
    checker.status = away  # type: ignore[method-assign]
    try:
        down = token_request(oidc, client.client_id, secret, grant_type="refresh_token",
                             refresh_token=first["refresh_token"])
    finally:
        checker.status = original  # type: ignore[method-assign]
    assert down.status_code == 503 and down.json()["error"] == "revocation_unavailable"
    wider = token_request(oidc, client.client_id, secret, grant_type="refresh_token",
                          refresh_token=first["refresh_token"], scope="openid profile admin")
    assert wider.status_code == 400 and wider.json()["error"] == "invalid_scope"
    family = first["refresh_token"].split(".")[0]
    for garbage in ("", ".", "x" * 300, family, family + ".", family + ".forged",
                    "nofamily.secret"):
        refused = token_request(oidc, client.client_id, secret, grant_type="refresh_token",
                                refresh_token=garbage)
        assert refused.status_code == 400, garbage
    # the forged secret of a live family counted as a replay: the session ended. Everything
    # before it left the token as it was: a fresh session shows the 503 and the scope wrote
    # nothing.
    second = tokens_for(oidc, client.client_id, secret)
    checker.status = away  # type: ignore[method-assign]
    try:
        token_request(oidc, client.client_id, secret, grant_type="refresh_token",
                      refresh_token=second["refresh_token"])
    finally:
        checker.status = original  # type: ignore[method-assign]
    token_request(oidc, client.client_id, secret, grant_type="refresh_token",
                  refresh_token=second["refresh_token"], scope="openid admin")
    ok = token_request(oidc, client.client_id, secret, grant_type="refresh_token",
                       refresh_token=second["refresh_token"])
    assert ok.status_code == 200, ok.text


def test_introspection_and_revocation(oidc: OidcServer) -> None:
    client = oidc.client()
    secret = str(client.client_secret)
    tokens = tokens_for(oidc, client.client_id, secret)
    active = introspect(oidc, client.client_id, secret, tokens["access_token"])
    assert active["active"] is True and active["client_id"] == client.client_id
    assert active["sub"] == oidc.env.cards["alice"].national_id and active["exp"]
    refresh = introspect(oidc, client.client_id, secret, tokens["refresh_token"],
                         "refresh_token")
    assert refresh["active"] is True and refresh["token_type"] == "refresh_token"
    assert introspect(oidc, client.client_id, secret, "junk")["active"] is False
    # a public client may not introspect
    public = oidc.client(public=True)
    refused = requests.post(oidc.discovery()["introspection_endpoint"],
                            data={"token": tokens["access_token"],
                                  "client_id": public.client_id}, timeout=10)
    assert refused.status_code in (400, 401) and refused.json()["error"] == "invalid_client"
    # RFC 7009: the access token alone, then the refresh token (and with it the session)
    revoke = oidc.discovery()["revocation_endpoint"]
    answer = requests.post(revoke, data={"token": tokens["access_token"]},
                           auth=(client.client_id, secret), timeout=10)
    assert answer.status_code == 200
    assert introspect(oidc, client.client_id, secret, tokens["access_token"]) == \
        {"active": False}
    assert introspect(oidc, client.client_id, secret, tokens["refresh_token"])["active"]
    answer = requests.post(revoke, data={"token": tokens["refresh_token"],
                                         "token_type_hint": "refresh_token"},
                           auth=(client.client_id, secret), timeout=10)
    assert answer.status_code == 200
    assert introspect(oidc, client.client_id, secret, tokens["refresh_token"]) == \
        {"active": False}
    used = token_request(oidc, client.client_id, secret, grant_type="refresh_token",
                         refresh_token=tokens["refresh_token"])
    assert used.status_code == 400
    # another client cannot revoke this client's tokens
    fresh = tokens_for(oidc, client.client_id, secret)
    other = oidc.client(name="Other")
    answer = requests.post(revoke, data={"token": fresh["access_token"]},
                           auth=(other.client_id, str(other.client_secret)), timeout=10)
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_grant"
    assert introspect(oidc, client.client_id, secret, fresh["access_token"])["active"]


def test_rp_initiated_logout_ends_the_session(oidc: OidcServer) -> None:
    client = oidc.client()
    secret = str(client.client_secret)
    tokens = tokens_for(oidc, client.client_id, secret)
    query = urlencode({"id_token_hint": tokens["id_token"],
                       "post_logout_redirect_uri": REDIRECT, "state": "bye"})
    answer = requests.get(oidc.discovery()["end_session_endpoint"] + "?" + query,
                          allow_redirects=False, timeout=10)
    assert answer.status_code == 302 and answer.headers["Location"] == REDIRECT + "?state=bye"
    assert introspect(oidc, client.client_id, secret, tokens["access_token"]) == \
        {"active": False}
    refresh = token_request(oidc, client.client_id, secret, grant_type="refresh_token",
                            refresh_token=tokens["refresh_token"])
    assert refresh.status_code == 400
    # an unregistered post-logout URI: no redirect
    other = tokens_for(oidc, client.client_id, secret)
    query = urlencode({"id_token_hint": other["id_token"],
                       "post_logout_redirect_uri": "https://attacker.example/"})
    answer = requests.get(oidc.discovery()["end_session_endpoint"] + "?" + query,
                          allow_redirects=False, timeout=10)
    assert answer.status_code == 200 and "Location" not in answer.headers


def test_private_key_jwt(oidc: OidcServer) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    public = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    client = oidc.client(auth_method="private_key_jwt",
                         jwks={"keys": [{**public, "kid": "k1", "alg": "ES256"}]})
    assert client.client_secret is None
    verifier = secrets.token_urlsafe(48)
    code = get_code(oidc, client.client_id, verifier)
    endpoint = oidc.discovery()["token_endpoint"]

    def assertion(signing_key: ec.EllipticCurvePrivateKey, jti: str) -> str:
        now = int(time.time())
        return jwt.encode({"iss": client.client_id, "sub": client.client_id, "aud": endpoint,
                           "iat": now, "exp": now + 60, "jti": jti}, signing_key,
                          algorithm="ES256", headers={"kid": "k1"})

    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT,
            "code_verifier": verifier,
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"}
    forged = requests.post(endpoint, data={**form, "client_assertion": assertion(
        ec.generate_private_key(ec.SECP256R1()), "j1")}, timeout=10)
    assert forged.status_code in (400, 401) and forged.json()["error"] == "invalid_client"
    good = requests.post(endpoint, data={**form, "client_assertion": assertion(key, "j2")},
                         timeout=10)
    assert good.status_code == 200, good.text
    # the same assertion again (jti): refused
    again = requests.post(endpoint, data={**form, "client_assertion": assertion(key, "j2")},
                          timeout=10)
    assert again.status_code in (400, 401) and again.json()["error"] == "invalid_client"


def test_tls_client_auth_with_an_organisation_certificate(oidc: OidcServer) -> None:
    """The token-side checks of RFC 8705 §2.1, given the certificate the TLS layer verified
    (``cps_login.mtls`` puts it in the environ; no HTTP header can)."""
    env = oidc.env
    key = ec.generate_private_key(ec.SECP256R1())
    issued = env.auth.issue(IssueRequest(profile="org", public_key=key.public_key(),
                                         structure_id=env.structure_id,
                                         dns_names=("rs.example",)))
    env.extra_certs.append(issued.certificate)
    env.wait_ocsp(issued.serial, "good")
    subject = issued.certificate.subject.rfc4514_string()
    client = oidc.client(ciba=True, auth_method="tls_client_auth", tls_subject_dn=subject)
    other = oidc.client(ciba=True, auth_method="tls_client_auth", tls_subject_dn="CN=Other")
    der = issued.certificate.public_bytes(Encoding.DER)
    web = oidc.app.test_client()
    form = {"scope": "openid", "login_hint": env.cards["alice"].national_id}

    def start(client_id: str, cert: bytes | None) -> tuple[int, dict[str, object]]:
        overrides = {"cps_login.peer_certificate": cert} if cert else {}
        answer = web.post("/oidc/bc-authorize", data={**form, "client_id": client_id},
                          environ_overrides=overrides)
        return answer.status_code, answer.get_json()

    status, body = start(client.client_id, der)
    assert status == 200 and body["auth_req_id"], body
    status, body = start(client.client_id, None)
    assert status in (400, 401) and body["error"] == "invalid_client"
    status, body = start(other.client_id, der)       # a certificate of someone else
    assert status in (400, 401) and body["error"] == "invalid_client"
    card = env.cards["alice"].auth.public_bytes(Encoding.DER)  # not an organisation cert
    status, body = start(client.client_id, card)
    assert status in (400, 401) and body["error"] == "invalid_client"


def test_officer_client_commands(oidc: OidcServer, tmp_path: Path) -> None:
    home = str(oidc.env.home)
    runner = CliRunner()
    added = runner.invoke(admin, ["--home", home, "client", "add", "--name", "Dossier",
                                  "--redirect-uri", "https://dossier.example/cb", "--json"])
    assert added.exit_code == 0, added.output
    created = json.loads(added.output)
    assert created["client_id"].startswith("cps-") and len(created["client_secret"]) > 30
    rows = {r["client_id"]: r for r in listing(oidc.env.auth.store)}
    assert rows[created["client_id"]]["redirect_uris"] == ["https://dossier.example/cb"]
    assert created["client_secret"] not in json.dumps(rows)
    listed = runner.invoke(admin, ["--home", home, "client", "list", "--json"])
    assert created["client_id"] in listed.output and created["client_secret"] not in \
        listed.output
    bad = runner.invoke(admin, ["--home", home, "client", "add", "--name", "X",
                                "--redirect-uri", "http://evil.example/cb"])
    assert bad.exit_code != 0 and "loopback" in bad.output
    public_ciba = runner.invoke(admin, ["--home", home, "client", "add", "--name", "X",
                                        "--public", "--ciba", "--redirect-uri",
                                        "https://x.example/cb"])
    assert public_ciba.exit_code != 0
    assert len(listing(oidc.env.auth.store)) == len(rows)         # nothing written
    removed = runner.invoke(admin, ["--home", home, "client", "remove", created["client_id"]])
    assert removed.exit_code == 0, removed.output
    assert created["client_id"] not in {r["client_id"] for r in listing(oidc.env.auth.store)}
    again = runner.invoke(admin, ["--home", home, "client", "remove", created["client_id"]])
    assert again.exit_code != 0


def test_removing_a_client_ends_its_tokens(oidc: OidcServer) -> None:
    from cps_login.oidc.clients import remove

    client = oidc.client()
    tokens = tokens_for(oidc, client.client_id, str(client.client_secret))
    userinfo = oidc.discovery()["userinfo_endpoint"]
    bearer = {"Authorization": "Bearer " + tokens["access_token"]}
    assert requests.get(userinfo, headers=bearer, timeout=10).status_code == 200
    remove(oidc.env.auth.store, client.client_id)
    oidc.app.extensions["cps_login.oidc"].get().clients._cache.clear()   # not 10 s later
    refused = requests.get(userinfo, headers=bearer, timeout=10)
    assert refused.status_code == 401 and refused.json()["reason"] == "token_revoked"
    refresh = token_request(oidc, client.client_id, str(client.client_secret),
                            grant_type="refresh_token", refresh_token=tokens["refresh_token"])
    assert refresh.status_code == 401 and refresh.json()["error"] == "invalid_client"
