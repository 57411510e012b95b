"""The provider against the red team's findings (F1, F3, F4, F7, F8, F9 of the issue-14 attack
round): each test fails on the provider as it was before the fix."""

from __future__ import annotations

import secrets

import requests

from tests.oidc.conftest import OidcServer
from tests.oidc.test_ciba import broker_token, start
from tests.oidc.test_refusals import authorize_url, exchange, get_code


def rp_tokens(oidc: OidcServer) -> dict[str, str]:
    client = oidc.client(name="Agenda")
    verifier = secrets.token_urlsafe(48)
    answer = exchange(oidc, client.client_id, client.client_secret,
                      get_code(oidc, client.client_id, verifier), verifier)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def test_a_relying_services_token_neither_approves_ciba_nor_opens_patient_records(
        oidc: OidcServer) -> None:
    """F1, F8: an OIDC access token of a card login (acr eidas3, key on a card) is for its
    relying service and the provider's userinfo; it has another audience than the broker's."""
    tokens = rp_tokens(oidc)
    import jwt

    claims = jwt.decode(tokens["access_token"], options={"verify_signature": False})
    assert oidc.env.config.audience not in claims["aud"]
    bearer = {"Authorization": "Bearer " + tokens["access_token"]}
    other = oidc.client(name="Prescription", ciba=True)
    auth_req_id = start(oidc, other.client_id, str(other.client_secret),
                        oidc.env.cards["alice"]).json()["auth_req_id"]
    for method, path in (("GET", "/oidc/ciba/pending"),
                         ("POST", f"/oidc/ciba/{auth_req_id}/approve"),
                         ("GET", "/api/whoami"),
                         ("GET", "/api/patients/123456789012345/documents")):
        answer = requests.request(method, oidc.issuer + path, headers=bearer, timeout=10)
        assert answer.status_code in (401, 403), (path, answer.text)
    assert "patient.read" not in oidc.discovery()["scopes_supported"]
    # the broker's own card-login token still approves, and still opens the API
    own = {"Authorization": "Bearer " + broker_token(oidc, oidc.env.cards["alice"])}
    assert requests.get(oidc.issuer + "/api/whoami", headers=own, timeout=10).status_code == 200
    assert requests.post(f"{oidc.issuer}/oidc/ciba/{auth_req_id}/approve", headers=own,
                         timeout=10).status_code == 200


def test_one_service_cannot_fill_a_professionals_ciba_queue(oidc: OidcServer) -> None:
    """F3: at most 3 open requests per (service, professional)."""
    spammer, honest = oidc.client(ciba=True), oidc.client(ciba=True)
    card = oidc.env.new_card("ciba-queue")
    answers = [start(oidc, spammer.client_id, str(spammer.client_secret), card).status_code
               for _ in range(6)]
    assert answers == [200, 200, 200, 400, 400, 400]
    assert start(oidc, honest.client_id, str(honest.client_secret), card).status_code == 200


def test_malformed_or_oversized_authorization_requests_are_400_and_store_nothing(
        oidc: OidcServer) -> None:
    """F4 (a backslash made Authlib's error text raise: 500), F7 (a 12 KB state held with the
    transaction for 10 minutes)."""
    client = oidc.client()
    provider = oidc.app.extensions["cps_login.oidc"].get()
    before = provider.state._bytes
    for url in (authorize_url(oidc, client.client_id, "v" * 50,
                              redirect_uri="http://127.0.0.1/cb\\@attacker.example"),
                authorize_url(oidc, client.client_id, "v" * 50, state="s" * 12000)):
        answer = requests.get(url, allow_redirects=False, timeout=10)
        assert answer.status_code == 400 and "Location" not in answer.headers
    assert provider.state._bytes == before


def test_ipv6_clients_are_bounded_per_64() -> None:
    from cps_login.oidc.front import client_key as _client_key

    assert _client_key("2001:db8:1:2::1") == _client_key("2001:db8:1:2:ffff::9")
    assert _client_key("2001:db8:1:3::1") != _client_key("2001:db8:1:2::1")
    assert _client_key("192.0.2.7") == "192.0.2.7"


def test_binding_message_must_be_printable(oidc: OidcServer) -> None:
    """F9: C1 controls, DEL, bidi overrides refused; accents accepted."""
    client = oidc.client(ciba=True)
    alice = oidc.env.cards["alice"]
    for message in ("\x9b31mCode 1", "Code \u202e4321", "Code\x7f1", "a\nb"):
        answer = start(oidc, client.client_id, str(client.client_secret), alice,
                       message=message)
        assert answer.status_code == 400, message
    assert start(oidc, client.client_id, str(client.client_secret), alice,
                 message="Ordonnance n° 42 — Hôpital").status_code == 200
