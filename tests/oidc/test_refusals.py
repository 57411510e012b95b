"""Each refusal the issue lists, with its OAuth error, from a client that is not Authlib."""

from __future__ import annotations

import base64
import hashlib
import secrets
from urllib.parse import urlencode

import requests
from requests_oauthlib import OAuth2Session

from tests.oidc.conftest import Browser, OffsetClock, OidcServer, query_of

REDIRECT = "http://127.0.0.1/cb"


def authorize_url(server: OidcServer, client_id: str, verifier: str,
                  redirect_uri: str = REDIRECT, **extra: str) -> str:
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()
                                         ).rstrip(b"=").decode()
    params = {"response_type": "code", "client_id": client_id, "redirect_uri": redirect_uri,
              "scope": "openid", "state": "st-" + secrets.token_hex(4),
              "code_challenge": challenge, "code_challenge_method": "S256", **extra}
    return server.discovery()["authorization_endpoint"] + "?" + urlencode(params)


def get_code(server: OidcServer, client_id: str, verifier: str) -> str:
    location = Browser(server).login(authorize_url(server, client_id, verifier),
                                     server.env.cards["alice"])
    return query_of(location)["code"]


def token_request(server: OidcServer, client_id: str, secret: str | None,
                  **form: str) -> requests.Response:
    auth = (client_id, secret) if secret is not None else None
    data = dict(form) if auth else {"client_id": client_id, **form}
    return requests.post(server.discovery()["token_endpoint"], data=data, auth=auth,
                         timeout=10)


def exchange(server: OidcServer, client_id: str, secret: str | None, code: str,
             verifier: str) -> requests.Response:
    return token_request(server, client_id, secret, grant_type="authorization_code",
                         code=code, redirect_uri=REDIRECT, code_verifier=verifier)


def test_unregistered_redirect_uri_is_never_redirected_to(oidc: OidcServer) -> None:
    client = oidc.client()
    for uri in ("http://127.0.0.1/other", "http://127.0.0.1/cb/../evil",
                "https://attacker.example/cb", REDIRECT + "?x=1"):
        url = authorize_url(oidc, client.client_id, "v" * 50, redirect_uri=uri)
        answer = requests.get(url, allow_redirects=False, timeout=10)
        assert answer.status_code == 400, uri
        assert "Location" not in answer.headers
        assert "invalid_request" in answer.text
    # an unknown client: no redirect either
    url = authorize_url(oidc, "cps-unknown", "v" * 50)
    answer = requests.get(url, allow_redirects=False, timeout=10)
    assert answer.status_code == 400 and "Location" not in answer.headers
    assert "invalid_client" in answer.text


def test_code_replay_is_refused_and_revokes_the_tokens_it_gave(oidc: OidcServer) -> None:
    client = oidc.client()
    verifier = secrets.token_urlsafe(48)
    code = get_code(oidc, client.client_id, verifier)
    first = exchange(oidc, client.client_id, client.client_secret, code, verifier)
    assert first.status_code == 200, first.text
    tokens = first.json()
    userinfo = oidc.discovery()["userinfo_endpoint"]
    bearer = {"Authorization": "Bearer " + tokens["access_token"]}
    assert requests.get(userinfo, headers=bearer, timeout=10).status_code == 200
    again = exchange(oidc, client.client_id, client.client_secret, code, verifier)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    # the tokens of the first exchange are dead: userinfo, introspection, refresh
    refused = requests.get(userinfo, headers=bearer, timeout=10)
    assert refused.status_code == 401 and refused.json()["reason"] == "token_revoked"
    intro = requests.post(oidc.discovery()["introspection_endpoint"],
                          data={"token": tokens["access_token"]},
                          auth=(client.client_id, client.client_secret), timeout=10)
    assert intro.status_code == 200 and intro.json() == {"active": False}
    refresh = token_request(oidc, client.client_id, client.client_secret,
                            grant_type="refresh_token", refresh_token=tokens["refresh_token"])
    assert refresh.status_code == 400 and refresh.json()["error"] == "invalid_grant"


def test_pkce_mismatch(oidc: OidcServer) -> None:
    client = oidc.client()
    verifier = secrets.token_urlsafe(48)
    code = get_code(oidc, client.client_id, verifier)
    wrong = exchange(oidc, client.client_id, client.client_secret, code,
                     secrets.token_urlsafe(48))
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant"
    missing = token_request(oidc, client.client_id, client.client_secret,
                            grant_type="authorization_code",
                            code=get_code(oidc, client.client_id, verifier),
                            redirect_uri=REDIRECT)
    assert missing.status_code == 400 and missing.json()["error"] == "invalid_request"


def test_plain_pkce_is_refused(oidc: OidcServer) -> None:
    client = oidc.client(public=True)
    url = authorize_url(oidc, client.client_id, "v" * 50, code_challenge_method="plain")
    answer = requests.get(url, allow_redirects=False, timeout=10)
    assert answer.status_code == 302
    assert query_of(answer.headers["Location"])["error"] == "invalid_request"


def test_expired_code(oidc: OidcServer, clock: OffsetClock) -> None:
    client = oidc.client()
    verifier = secrets.token_urlsafe(48)
    code = get_code(oidc, client.client_id, verifier)
    clock.advance(61)
    late = exchange(oidc, client.client_id, client.client_secret, code, verifier)
    assert late.status_code == 400 and late.json()["error"] == "invalid_grant"


def test_wrong_client_authentication(oidc: OidcServer) -> None:
    client = oidc.client()
    other = oidc.client(name="Other")
    verifier = secrets.token_urlsafe(48)
    code = get_code(oidc, client.client_id, verifier)
    bad_secret = exchange(oidc, client.client_id, "not-the-secret", code, verifier)
    assert bad_secret.status_code == 401 and bad_secret.json()["error"] == "invalid_client"
    no_auth = exchange(oidc, client.client_id, None, code, verifier)
    assert no_auth.status_code in (400, 401) and no_auth.json()["error"] == "invalid_client"
    # another client's valid credentials do not redeem this client's code
    stolen = exchange(oidc, other.client_id, other.client_secret, code, verifier)
    assert stolen.status_code == 400 and stolen.json()["error"] == "invalid_grant"


def test_transaction_needs_the_browser_and_the_agent_key(oidc: OidcServer) -> None:
    client = oidc.client()
    url = authorize_url(oidc, client.client_id, secrets.token_urlsafe(48))
    victim_browser, attacker_browser = Browser(oidc), Browser(oidc)
    tx = attacker_browser.open_authorization(url)
    proof = victim_browser.agent(tx, oidc.env.cards["alice"])      # the victim's card
    assert proof.status_code == 200
    continue_url = proof.json()["continue"]
    without_key = continue_url.split("?")[0]
    # the attacker has the cookie but not the key the agent gave the victim's browser
    answer = attacker_browser.session.get(without_key, allow_redirects=False, timeout=10)
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_transaction"
    # the victim's browser has the key but not the cookie
    answer = victim_browser.session.get(continue_url, allow_redirects=False, timeout=10)
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_transaction"
    # both (the legitimate case) work, once
    answer = attacker_browser.session.get(continue_url, allow_redirects=False, timeout=10)
    assert answer.status_code == 302
    answer = attacker_browser.session.get(continue_url, allow_redirects=False, timeout=10)
    assert answer.status_code == 400


def test_a_proof_for_another_broker_is_refused_naming_both(oidc: OidcServer) -> None:
    client = oidc.client()
    browser = Browser(oidc)
    tx = browser.open_authorization(authorize_url(oidc, client.client_id, "v" * 50))
    challenge = requests.get(f"{oidc.issuer}/oidc/tx/{tx}/challenge", timeout=10).json()
    body = oidc.card_proof(oidc.env.cards["alice"], challenge["challenge"],
                           broker="http://127.0.0.1:1")
    refused = requests.post(f"{oidc.issuer}/oidc/tx/{tx}/proof", json=body, timeout=10)
    assert refused.status_code == 401
    assert refused.json()["error"] == "invalid_credentials"


def test_expired_transaction(oidc: OidcServer, clock: OffsetClock) -> None:
    client = oidc.client()
    browser = Browser(oidc)
    tx = browser.open_authorization(authorize_url(oidc, client.client_id, "v" * 50))
    clock.advance(301)
    answer = requests.get(f"{oidc.issuer}/oidc/tx/{tx}/challenge", timeout=10)
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_transaction"


def test_requests_oauthlib_sees_invalid_grant_on_replay(oidc: OidcServer) -> None:
    client = oidc.client()
    session = OAuth2Session(client.client_id, redirect_uri=REDIRECT, scope="openid",
                            pkce="S256")
    url, _ = session.authorization_url(oidc.discovery()["authorization_endpoint"])
    location = Browser(oidc).login(url, oidc.env.cards["alice"])
    session.fetch_token(oidc.discovery()["token_endpoint"], authorization_response=location,
                        client_secret=client.client_secret)
    try:
        session.fetch_token(oidc.discovery()["token_endpoint"],
                            authorization_response=location,
                            client_secret=client.client_secret)
    except Exception as exc:           # oauthlib's InvalidGrantError
        assert type(exc).__name__ == "InvalidGrantError"
    else:
        raise AssertionError("the code was accepted twice")


def test_a_client_removed_during_the_login_gets_no_code(oidc: OidcServer) -> None:
    from cps_login.oidc.clients import remove

    client = oidc.client()
    browser = Browser(oidc)
    tx = browser.open_authorization(authorize_url(oidc, client.client_id, "v" * 50))
    proof = browser.agent(tx, oidc.env.cards["alice"])
    remove(oidc.env.auth.store, client.client_id)
    oidc.app.extensions["cps_login.oidc"].get().clients._cache.clear()   # not 10 s later
    answer = browser.session.get(proof.json()["continue"], allow_redirects=False, timeout=10)
    assert answer.status_code in (400, 401) and "Location" not in answer.headers
    assert answer.json()["error"] == "invalid_client"


def test_transactions_are_bounded_per_address(oidc: OidcServer) -> None:
    from cps_login.ratelimit import MemoryRateLimiter

    provider = oidc.app.extensions["cps_login.oidc"].get()
    saved = provider.tx_limiter
    provider.tx_limiter = MemoryRateLimiter(oidc.clock, 3, 300)
    try:
        client = oidc.client()
        url = authorize_url(oidc, client.client_id, "v" * 50)
        web = oidc.app.test_client()
        path = url[len(oidc.issuer):]
        for _ in range(3):
            assert web.get(path, environ_base={"REMOTE_ADDR": "127.0.0.7"}).status_code == 200
        refused = web.get(path, environ_base={"REMOTE_ADDR": "127.0.0.7"})
        assert refused.status_code == 429 and refused.headers["Retry-After"]
        assert web.get(path, environ_base={"REMOTE_ADDR": "127.0.0.8"}).status_code == 200
    finally:
        provider.tx_limiter = saved
