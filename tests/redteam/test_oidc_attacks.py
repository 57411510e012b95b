"""OIDC provider attacked by a malicious relying service and a hostile client."""

from __future__ import annotations

import base64
import json
import secrets

import requests

from tests.oidc.conftest import Browser, OidcServer, query_of
from tests.oidc.test_refusals import REDIRECT, authorize_url, exchange, get_code


def _tokens(oidc: OidcServer) -> tuple[object, dict[str, str]]:
    client = oidc.client(name="Agenda (malicious RP)")
    verifier = secrets.token_urlsafe(48)
    code = get_code(oidc, client.client_id, verifier)
    answer = exchange(oidc, client.client_id, client.client_secret, code, verifier)
    assert answer.status_code == 200, answer.text
    return client, answer.json()




def test_redirect_uri_variants_never_redirect(oidc: OidcServer) -> None:
    client = oidc.client()
    for uri in ("http://127.0.0.1/cb/", "http://127.0.0.1/CB", "http://127.0.0.1:80/cb",
                "http://127.0.0.1/cb#x", "http://127.0.0.1/cb%2f..%2fevil",
                "http://127.0.0.1@attacker.example/cb", "HTTP://127.0.0.1/cb",
                "//attacker.example/cb"):
        url = authorize_url(oidc, client.client_id, "v" * 50, redirect_uri=uri)
        answer = requests.get(url, allow_redirects=False, timeout=10)
        assert "Location" not in answer.headers, uri
        assert answer.status_code == 400, uri


def test_duplicated_parameters_are_refused(oidc: OidcServer) -> None:
    client = oidc.client()
    url = authorize_url(oidc, client.client_id, "v" * 50) + \
        "&redirect_uri=https%3A%2F%2Fattacker.example%2Fcb"
    answer = requests.get(url, allow_redirects=False, timeout=10)
    assert answer.status_code == 400 and "attacker" not in answer.headers.get("Location", "")


def test_pkce_downgrade_and_code_theft_by_another_client(oidc: OidcServer) -> None:
    client = oidc.client()
    thief = oidc.client(name="Thief")
    verifier = secrets.token_urlsafe(48)
    code = get_code(oidc, client.client_id, verifier)
    # another client cannot redeem it (and does not burn it)
    stolen = exchange(oidc, thief.client_id, thief.client_secret, code, verifier)
    assert stolen.status_code == 400 and stolen.json()["error"] == "invalid_grant"
    # no verifier / wrong verifier: refused
    no_verifier = requests.post(oidc.discovery()["token_endpoint"],
                                data={"grant_type": "authorization_code", "code": code,
                                      "redirect_uri": REDIRECT},
                                auth=(client.client_id, client.client_secret), timeout=10)
    assert no_verifier.status_code == 400


def test_plain_pkce_method_refused(oidc: OidcServer) -> None:
    client = oidc.client(public=True)
    url = authorize_url(oidc, client.client_id, "v" * 50, code_challenge_method="plain")
    answer = requests.get(url, allow_redirects=False, timeout=10)
    assert answer.status_code in (302, 400)
    assert "code=" not in answer.headers.get("Location", "")
    assert "cps-oidc-browser" not in answer.headers.get("Set-Cookie", "")


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_forged_tokens_alg_none_and_hs256_with_public_key(oidc: OidcServer) -> None:
    import hashlib
    import hmac

    _rp, tokens = _tokens(oidc)
    header, payload, _sig = tokens["access_token"].split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["sub"] = "8" + "9" * 11
    userinfo = oidc.discovery()["userinfo_endpoint"]
    none_token = _b64({"alg": "none", "typ": "at+jwt"}) + "." + _b64(claims) + "."
    assert requests.get(userinfo, headers={"Authorization": "Bearer " + none_token},
                        timeout=10).status_code == 401
    jwks = requests.get(oidc.discovery()["jwks_uri"], timeout=10).content
    head = json.loads(base64.urlsafe_b64decode(header + "=="))
    signing = _b64({**head, "alg": "HS256"}) + "." + _b64(claims)
    mac = hmac.new(jwks, signing.encode(), hashlib.sha256).digest()
    forged = signing + "." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
    assert requests.get(userinfo, headers={"Authorization": "Bearer " + forged},
                        timeout=10).status_code == 401


def test_id_token_is_not_an_access_token(oidc: OidcServer) -> None:
    _rp, tokens = _tokens(oidc)
    userinfo = oidc.discovery()["userinfo_endpoint"]
    answer = requests.get(userinfo, headers={"Authorization": "Bearer " + tokens["id_token"]},
                          timeout=10)
    assert answer.status_code == 401




def test_tx_of_another_browser_cannot_be_continued(oidc: OidcServer) -> None:
    client = oidc.client()
    attacker = Browser(oidc)
    tx = attacker.open_authorization(authorize_url(oidc, client.client_id, "v" * 50))
    proof = attacker.agent(tx, oidc.env.cards["alice"])       # the victim's agent proves it
    assert proof.status_code == 200
    # the attacker has the cookie but not the key the victim's browser got
    cont = proof.json()["continue"].split("?k=")[0]
    for k in ("", "x" * 32):
        answer = attacker.session.get(cont + ("?k=" + k if k else ""), allow_redirects=False,
                                      timeout=10)
        assert answer.status_code in (400, 403, 404) and "code=" not in \
            answer.headers.get("Location", "")
    # the victim's browser has the key but not the cookie
    victim = requests.get(proof.json()["continue"], allow_redirects=False, timeout=10)
    assert victim.status_code in (400, 403) and "Location" not in victim.headers
    # and the proven login still belongs to nobody: the attacker's cookie + the real key
    # would work, which is the designed boundary (key never leaves the victim's browser)
    assert query_of(proof.json()["continue"])["k"]


def test_logout_never_redirects_to_an_unregistered_uri(oidc: OidcServer) -> None:
    client = oidc.client()
    _rp, tokens = _tokens(oidc)
    logout = oidc.discovery()["end_session_endpoint"]
    for params in ({"post_logout_redirect_uri": "https://attacker.example/"},
                   {"post_logout_redirect_uri": "https://attacker.example/",
                    "client_id": client.client_id},
                   {"post_logout_redirect_uri": "https://attacker.example/",
                    "id_token_hint": tokens["id_token"]},
                   {"post_logout_redirect_uri": REDIRECT + "/../../evil",
                    "id_token_hint": tokens["id_token"]},
                   {"post_logout_redirect_uri": "https://attacker.example/",
                    "id_token_hint": "e30.e30."}):
        answer = requests.get(logout, params=params, allow_redirects=False, timeout=10)
        assert answer.status_code < 500, params
        assert "attacker" not in answer.headers.get("Location", "") and \
            "evil" not in answer.headers.get("Location", ""), params


def test_a_forged_id_token_hint_ends_no_session(oidc: OidcServer) -> None:
    _rp, tokens = _tokens(oidc)
    _header, payload, _sig = tokens["id_token"].split(".")
    forged = _b64({"alg": "none"}) + "." + payload + "."
    logout = oidc.discovery()["end_session_endpoint"]
    requests.get(logout, params={"id_token_hint": forged}, allow_redirects=False, timeout=10)
    userinfo = requests.get(oidc.discovery()["userinfo_endpoint"], timeout=10,
                            headers={"Authorization": "Bearer " + tokens["access_token"]})
    assert userinfo.status_code == 200, userinfo.text


def test_refresh_cannot_widen_the_scope_and_introspection_is_per_client(
        oidc: OidcServer) -> None:
    from tests.oidc.test_refusals import token_request

    client = oidc.client()
    verifier = secrets.token_urlsafe(48)
    code = get_code(oidc, client.client_id, verifier)
    tokens = exchange(oidc, client.client_id, client.client_secret, code, verifier).json()
    assert tokens["scope"].split() == ["openid"]
    wider = token_request(oidc, client.client_id, client.client_secret,
                          grant_type="refresh_token", refresh_token=tokens["refresh_token"],
                          scope="openid patient.read scope_all")
    assert wider.status_code == 400, wider.text
    # a public client cannot introspect; another confidential client may only see "active"
    public = oidc.client(name="SPA", public=True)
    answer = requests.post(oidc.discovery()["introspection_endpoint"],
                           data={"token": tokens["access_token"], "client_id": public.client_id},
                           timeout=10)
    assert answer.status_code in (400, 401, 403) or answer.json().get("active") is False
