"""CIBA poll mode with plain requests + PyJWT: start, approve with a card login, poll."""

from __future__ import annotations

import base64

import jwt
import pytest
import requests

from pki.ca import lifecycle
from tests.login.conftest import SoftCard
from tests.oidc.conftest import OffsetClock, OidcServer


def card_login(server: OidcServer, card: SoftCard) -> requests.Response:
    """What ``cps-login approve`` does first: an ordinary card login at the broker."""
    challenge = requests.post(server.issuer + "/login/challenge", timeout=10).json()
    return requests.post(server.issuer + "/login",
                         json=server.card_proof(card, challenge["challenge"]), timeout=30)


def broker_token(server: OidcServer, card: SoftCard) -> str:
    answer = card_login(server, card)
    assert answer.status_code == 200, answer.text
    return str(answer.json()["access_token"])


def start(server: OidcServer, client_id: str, secret: str, card: SoftCard,
          message: str = "Code 4711") -> requests.Response:
    return requests.post(server.discovery()["backchannel_authentication_endpoint"],
                         data={"scope": "openid", "login_hint": card.national_id,
                               "binding_message": message},
                         auth=(client_id, secret), timeout=10)


def poll(server: OidcServer, client_id: str, secret: str, auth_req_id: str
         ) -> requests.Response:
    return requests.post(server.discovery()["token_endpoint"],
                         data={"grant_type": "urn:openid:params:grant-type:ciba",
                               "auth_req_id": auth_req_id},
                         auth=(client_id, secret), timeout=10)


def test_ciba_pending_slow_down_approve_tokens_once(oidc: OidcServer,
                                                   clock: OffsetClock) -> None:
    client = oidc.client(name="Messagerie", ciba=True)
    alice = oidc.env.cards["alice"]
    started = start(oidc, client.client_id, str(client.client_secret), alice)
    assert started.status_code == 200, started.text
    auth_req_id = started.json()["auth_req_id"]
    assert started.json()["interval"] == 5 and started.json()["expires_in"] > 0
    secret = str(client.client_secret)
    assert poll(oidc, client.client_id, secret, auth_req_id).json()["error"] == \
        "authorization_pending"
    assert poll(oidc, client.client_id, secret, auth_req_id).json()["error"] == "slow_down"
    clock.advance(11)
    assert poll(oidc, client.client_id, secret, auth_req_id).json()["error"] == \
        "authorization_pending"
    # the professional: card login, sees the request and its binding message, approves
    bearer = {"Authorization": "Bearer " + broker_token(oidc, alice)}
    pending = requests.get(oidc.issuer + "/oidc/ciba/pending", headers=bearer, timeout=10)
    assert pending.status_code == 200, pending.text
    mine = [p for p in pending.json() if p["auth_req_id"] == auth_req_id]
    assert mine and mine[0]["binding_message"] == "Code 4711"
    assert mine[0]["client_name"] == "Messagerie"
    approved = requests.post(f"{oidc.issuer}/oidc/ciba/{auth_req_id}/approve", headers=bearer,
                             timeout=10)
    assert approved.status_code == 200, approved.text
    clock.advance(20)
    tokens = poll(oidc, client.client_id, secret, auth_req_id)
    assert tokens.status_code == 200, tokens.text
    discovery = oidc.discovery()
    key = jwt.PyJWKClient(discovery["jwks_uri"]).get_signing_key_from_jwt(
        tokens.json()["id_token"])
    claims = jwt.decode(tokens.json()["id_token"], key.key, algorithms=["ES256"],
                        audience=client.client_id, issuer=oidc.issuer,
                        leeway=60)     # the server clock was moved 31 s ahead
    assert claims["sub"] == alice.national_id and claims["acr"] == "eidas3"
    # an auth_req_id works once
    replay = poll(oidc, client.client_id, secret, auth_req_id)
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"


def test_ciba_denied_and_expired(oidc: OidcServer, clock: OffsetClock) -> None:
    client = oidc.client(ciba=True)
    alice = oidc.env.cards["alice"]
    secret = str(client.client_secret)
    denied_id = start(oidc, client.client_id, secret, alice).json()["auth_req_id"]
    bearer = {"Authorization": "Bearer " + broker_token(oidc, alice)}
    assert requests.post(f"{oidc.issuer}/oidc/ciba/{denied_id}/deny", headers=bearer,
                         timeout=10).status_code == 200
    assert poll(oidc, client.client_id, secret, denied_id).json()["error"] == "access_denied"
    late_id = start(oidc, client.client_id, secret, alice).json()["auth_req_id"]
    clock.advance(301)
    assert poll(oidc, client.client_id, secret, late_id).json()["error"] == "expired_token"
    stale = requests.post(f"{oidc.issuer}/oidc/ciba/{late_id}/approve", headers=bearer,
                          timeout=10)
    assert stale.status_code == 401          # the broker token itself lived 120 s
    fresh = {"Authorization": "Bearer " + broker_token(oidc, alice)}
    late = requests.post(f"{oidc.issuer}/oidc/ciba/{late_id}/approve", headers=fresh,
                         timeout=10)
    assert late.status_code == 404 and late.json()["error"] == "not_pending"


def test_ciba_refusals(oidc: OidcServer) -> None:
    alice = oidc.env.cards["alice"]
    plain = oidc.client()                  # not registered for CIBA
    answer = start(oidc, plain.client_id, str(plain.client_secret), alice)
    assert answer.status_code in (400, 401) and answer.json()["error"] == "unauthorized_client"
    client = oidc.client(ciba=True)
    secret = str(client.client_secret)
    wrong = start(oidc, client.client_id, "wrong", alice)
    assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_client"
    unknown = requests.post(oidc.discovery()["backchannel_authentication_endpoint"],
                            data={"scope": "openid", "login_hint": "810999999999"},
                            auth=(client.client_id, secret), timeout=10)
    assert unknown.status_code == 400 and unknown.json()["error"] == "unknown_user_id"
    auth_req_id = start(oidc, client.client_id, secret, alice).json()["auth_req_id"]
    # another professional cannot see or approve it
    bob = oidc.env.new_card("ciba-bob")
    oidc.env.wait_ocsp(bob.serial, "good")
    bob_bearer = {"Authorization": "Bearer " + broker_token(oidc, bob)}
    seen = requests.get(oidc.issuer + "/oidc/ciba/pending", headers=bob_bearer, timeout=10)
    assert all(p["auth_req_id"] != auth_req_id for p in seen.json())
    assert requests.post(f"{oidc.issuer}/oidc/ciba/{auth_req_id}/approve",
                         headers=bob_bearer, timeout=10).status_code == 404
    # another client cannot poll it
    other = oidc.client(ciba=True)
    stolen = poll(oidc, other.client_id, str(other.client_secret), auth_req_id)
    assert stolen.status_code == 400 and stolen.json()["error"] == "invalid_grant"


def test_a_revoked_card_cannot_approve(oidc: OidcServer) -> None:
    card = oidc.env.new_card("ciba-revoked")
    oidc.env.wait_ocsp(card.serial, "good")
    client = oidc.client(ciba=True)
    auth_req_id = start(oidc, client.client_id, str(client.client_secret),
                        card).json()["auth_req_id"]
    lifecycle.revoke(oidc.env.auth, card.serial, "keyCompromise")
    oidc.env.wait_ocsp(card.serial, "revoked")
    refused = card_login(oidc, card)
    assert refused.status_code == 401 and refused.json()["reason"] == "revoked"
    no_token = requests.post(f"{oidc.issuer}/oidc/ciba/{auth_req_id}/approve", timeout=10)
    assert no_token.status_code == 401
    assert poll(oidc, client.client_id, str(client.client_secret),
                auth_req_id).json()["error"] == "authorization_pending"


def test_a_card_revoked_after_its_login_cannot_approve(oidc: OidcServer) -> None:
    """``cps-login approve`` logs in, then shows each request and waits for the holder's
    answer: a card revoked in between is refused at the approval itself (checked live, as a
    refresh checks it), with or without the certificate in the body; nothing is approved."""
    from cryptography.hazmat.primitives.serialization import Encoding

    from tests.redteam.test_oidc_round4 import _new_card

    card = _new_card(oidc, "ciba-revoked-late")
    client = oidc.client(ciba=True)
    secret = str(client.client_secret)
    auth_req_id = start(oidc, client.client_id, secret, card).json()["auth_req_id"]
    bearer = {"Authorization": "Bearer " + broker_token(oidc, card)}
    lifecycle.revoke(oidc.env.auth, card.serial, "keyCompromise")
    oidc.env.wait_ocsp(card.serial, "revoked")
    certificate = base64.b64encode(card.auth.public_bytes(Encoding.DER)).decode()
    for body in ({"certificate": certificate}, None):
        refused = requests.post(f"{oidc.issuer}/oidc/ciba/{auth_req_id}/approve",
                                headers=bearer, json=body, timeout=10)
        assert refused.status_code == 401, refused.text
        assert refused.json()["reason"] == "revoked"
    assert poll(oidc, client.client_id, secret, auth_req_id).json()["error"] == \
        "authorization_pending"
    # the holder may still say no (nothing is granted by a denial)
    assert requests.post(f"{oidc.issuer}/oidc/ciba/{auth_req_id}/deny", headers=bearer,
                         timeout=10).status_code == 200


def test_a_ciba_session_refreshes_only_while_the_approving_card_is_good(
        oidc: OidcServer) -> None:
    """The approval carries the card's certificate (``cps-login approve`` sends it): the
    session's refresh token is checked against it at every refresh — here on a broker that
    never saw the card log in (its certificate cache emptied, as another replica's)."""
    from cryptography.hazmat.primitives.serialization import Encoding

    from cps_login.approve import Pending, decide
    from cps_login.client import BrokerRefused
    from cps_login.web import services_of
    from pki.bytelru import ByteLru
    from tests.redteam.test_oidc_round4 import _new_card

    card = _new_card(oidc, "ciba-refresh")
    client = oidc.client(name="Messagerie", ciba=True)
    secret = str(client.client_secret)
    login = services_of(oidc.app).login

    def approved_tokens(certificate: bytes | None) -> dict[str, str]:
        auth_req_id = start(oidc, client.client_id, secret, card).json()["auth_req_id"]
        token = broker_token(oidc, card)
        login._known = ByteLru(1 << 20)                  # another replica approves
        decide(oidc.issuer, token, Pending(auth_req_id, "", "", "", None), True,
               certificate=certificate)
        answer = poll(oidc, client.client_id, secret, auth_req_id)
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    # a certificate that is not the one the broker token is bound to, on a replica that did
    # not see the card log in: nothing to check the card against, the approval is refused
    other = oidc.env.cards["alice"].auth.public_bytes(Encoding.DER)
    with pytest.raises(BrokerRefused, match="certificate_required"):
        approved_tokens(other)
    tokens = approved_tokens(card.auth.public_bytes(Encoding.DER))
    refreshed = requests.post(oidc.discovery()["token_endpoint"], auth=(client.client_id, secret),
                              data={"grant_type": "refresh_token",
                                    "refresh_token": tokens["refresh_token"]}, timeout=10)
    assert refreshed.status_code == 200, refreshed.text
    lifecycle.revoke(oidc.env.auth, card.serial, "keyCompromise")
    oidc.env.wait_ocsp(card.serial, "revoked")
    after = requests.post(oidc.discovery()["token_endpoint"], auth=(client.client_id, secret),
                          data={"grant_type": "refresh_token",
                                "refresh_token": refreshed.json()["refresh_token"]},
                          timeout=10)
    assert after.status_code == 400 and after.json()["error"] == "invalid_grant", after.text
