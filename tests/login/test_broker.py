"""Broker end to end over HTTP against the real OCSP responder and CRLs of a SoftHSM home.

Each refusal is checked three ways: the HTTP status and body (generic where it must be), and
the precise internal reason in the audit chain.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from cps_login.config import LoginConfig
from cps_login.revocation import FetchError
from cps_login.services import build_broker_services
from cps_login.tokens import TokenValidator
from cps_login.web import create_broker_app, services_of
from pki import audit
from pki.ca import lifecycle
from pki.clock import FixedClock
from tests.login.conftest import Env, Foreign, der, last_login_audit, login_body

GENERIC = {"error": "invalid_credentials"}


def challenge(env: Env) -> str:
    status, body = env.post("/login/challenge")
    assert status == 200 and body["broker"] == env.base
    assert len(base64.b64decode(body["challenge"])) == 32
    return str(body["challenge"])


def login(env: Env, name: str, **extra: Any) -> tuple[int, dict[str, Any]]:
    card = env.cards[name]
    return env.post("/login", login_body(card.key, card.auth, challenge(env), env.base, **extra))


def validator(env: Env, audience: str | None = None, clock: Any = None) -> TokenValidator:
    status, jwks = env.get("/.well-known/jwks.json")
    assert status == 200
    return TokenValidator(jwks, issuer=env.base, audience=audience or env.config.audience,
                          clock=clock or FixedClock(dt.datetime.now(dt.UTC)))


# --- success ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["alice", "ecdsa"])
def test_good_login_issues_rfc9068_token(env: Env, name: str) -> None:
    status, body = login(env, name)
    assert status == 200, body
    assert body["token_type"] == "Bearer" and body["expires_in"] == 120
    token = body["access_token"]
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert header["typ"] == "at+jwt" and header["alg"] == "ES256"
    claims = validator(env).validate(token)
    card = env.cards[name]
    assert claims["sub"] == claims["SubjectNameID"] == card.national_id
    assert claims["SubjectRole"] == ["10"]
    assert claims["Palier_Authentification"] == "APPPRIP3" and claims["acr"] == "eidas3"
    assert claims["exp"] - claims["iat"] == 120 and claims["aud"] == env.config.audience
    assert claims["iss"] == env.base and claims["jti"] and claims["client_id"] == "cps-login"
    assert "SubjectOrganizationID" not in claims
    rec = last_login_audit(env)
    assert rec["action"] == "login.success" and rec["target"] == card.national_id
    assert rec["revocation_source"] == "ocsp" and rec["jti"] == claims["jti"]


def test_token_key_lives_in_the_broker_token_and_kid_is_its_thumbprint(env: Env) -> None:
    from cps_login.token_key import jwk_thumbprint, open_broker_token, token_key
    from pki.clock import SYSTEM_CLOCK

    hsm = open_broker_token(env.auth.config)
    try:
        assert hsm.token_label == "CPS-BROKER" and hsm.labels() == ["token:broker"]
        key = token_key(hsm, SYSTEM_CLOCK)
    finally:
        hsm.close()
    assert not env.auth.hsm.has_key("token:broker")     # never in the CA token
    _, jwks = env.get("/.well-known/jwks.json")
    assert [k["kid"] for k in jwks["keys"]] == [jwk_thumbprint(key.signer.public_key)]
    assert "d" not in jwks["keys"][0]
    signer = services_of(env.broker_app).tokens.key.signer
    assert signer.public_key.public_numbers() == key.signer.public_key.public_numbers()


def test_organisation_claim_when_the_professional_practises_there(env: Env) -> None:
    card = env.new_card("bob")
    env.add_activity(card)
    env.wait_ocsp(card.serial, "good")
    status, body = login(env, "bob")
    assert status == 200, body
    claims = validator(env).validate(body["access_token"])
    assert claims["SubjectOrganizationID"] == env.structure_id
    status, body = login(env, "bob", organisation_id="1999999999")
    assert (status, body) == (401, {**GENERIC, "reason": "unknown_organisation"})


# --- refusals -----------------------------------------------------------------------------

def test_revoked_card_refused_with_reason(env: Env) -> None:
    assert login(env, "revoked")[0] == 200
    lifecycle.revoke(env.auth, env.cards["revoked"].serial, "keyCompromise")
    env.wait_ocsp(env.cards["revoked"].serial, "revoked")
    status, body = login(env, "revoked")
    assert (status, body) == (401, {**GENERIC, "reason": "revoked"})
    assert last_login_audit(env)["reason"] == "revoked"


def test_card_on_hold_refused_then_released(env: Env) -> None:
    serial = env.cards["held"].serial
    lifecycle.hold(env.auth, serial)
    env.wait_ocsp(serial, "hold")
    assert login(env, "held") == (401, {**GENERIC, "reason": "hold"})
    assert last_login_audit(env)["reason"] == "hold"
    lifecycle.release(env.auth, serial)
    env.wait_ocsp(serial, "good")
    assert login(env, "held")[0] == 200


def _broker(env: Env, clock: Any = None, fetcher: Any = None, **overrides: Any) -> Any:
    config = LoginConfig.from_home(env.home, **overrides)
    services = build_broker_services(config, clock=clock or FixedClock(dt.datetime.now(dt.UTC)),
                                     fetcher=fetcher)
    return create_broker_app(config, services=services).test_client(), services


def _login_via(client: Any, card: Any, broker: str, **extra: Any) -> Any:
    ch = client.post("/login/challenge").get_json()["challenge"]
    return client.post("/login", json=login_body(card.key, card.auth, ch, broker, **extra))


def test_expired_certificate_refused(env: Env) -> None:
    card = env.cards["alice"]
    later = FixedClock(card.auth.not_valid_after_utc + dt.timedelta(days=1))
    client, _ = _broker(env, clock=later)
    resp = _login_via(client, card, env.base)
    assert (resp.status_code, resp.get_json()) == (401, {**GENERIC, "reason": "expired"})
    assert last_login_audit(env)["reason"] == "expired"


def test_certificate_of_another_ca_refused_generically(env: Env, foreign: Foreign) -> None:
    status, body = env.post("/login", login_body(foreign.key, foreign.cert, challenge(env),
                                                 env.base))
    assert (status, body) == (401, GENERIC)
    assert last_login_audit(env)["reason"] == "other_ca"
    # sending the other CA along as "chain" changes nothing: only the home's roots anchor
    body2 = login_body(foreign.key, foreign.cert, challenge(env), env.base,
                       chain=[base64.b64encode(der(foreign.ca)).decode()])
    assert env.post("/login", body2) == (401, GENERIC)


def test_wrong_signature_looks_like_unknown_certificate(env: Env) -> None:
    card = env.cards["alice"]
    stranger = rsa.generate_private_key(65537, 2048)
    status, body = env.post("/login", login_body(stranger, card.auth, challenge(env), env.base))
    assert (status, body) == (401, GENERIC)
    assert last_login_audit(env)["reason"] == "bad_signature"
    # signed for another broker: same answer
    status, body = env.post("/login", login_body(card.key, card.auth, challenge(env),
                                                 "https://evil.example"))
    assert (status, body) == (401, GENERIC)


def test_signature_certificate_refused_for_login(env: Env) -> None:
    card = env.cards["alice"]
    status, body = env.post("/login", login_body(card.sign_key, card.sign, challenge(env),
                                                 env.base))
    assert (status, body) == (401, {**GENERIC, "reason": "wrong_usage"})
    assert last_login_audit(env)["reason"] == "wrong_usage"


def test_replayed_challenge_refused(env: Env) -> None:
    card = env.cards["alice"]
    body = login_body(card.key, card.auth, challenge(env), env.base)
    assert env.post("/login", body)[0] == 200
    assert env.post("/login", body) == (401, {"error": "invalid_challenge"})
    assert last_login_audit(env)["reason"] == "challenge_replayed"
    body["challenge"] = base64.b64encode(b"\x01" * 32).decode()
    assert env.post("/login", body) == (401, {"error": "invalid_challenge"})
    assert last_login_audit(env)["reason"] == "challenge_unknown"


def test_expired_challenge_refused(env: Env) -> None:
    clock = FixedClock(dt.datetime.now(dt.UTC))
    client, _ = _broker(env, clock=clock)
    card = env.cards["alice"]
    ch = client.post("/login/challenge").get_json()["challenge"]
    clock.advance(dt.timedelta(seconds=61))
    resp = client.post("/login", json=login_body(card.key, card.auth, ch, env.base))
    assert (resp.status_code, resp.get_json()) == (401, {"error": "invalid_challenge"})
    assert last_login_audit(env)["reason"] == "challenge_expired"


def test_malformed_login_refused_and_audited(env: Env) -> None:
    assert env.post("/login", {"certificate": "%%%"}) == (401, GENERIC)
    assert last_login_audit(env)["reason"] == "malformed"


# --- revocation sources -------------------------------------------------------------------

class DeadFetcher:
    def post(self, url: str, body: bytes, content_type: str, timeout: float) -> bytes:
        raise FetchError(f"{url}: connection refused")

    def get(self, url: str, timeout: float) -> bytes:
        raise FetchError(f"{url}: connection refused")


def test_ocsp_unreachable_falls_back_to_crl(env: Env) -> None:
    revoked = env.cards["crl-revoked"]
    lifecycle.revoke(env.auth, revoked.serial, "superseded")
    env.publish_crls()
    # OCSP pointed at a closed port; the CRL distribution point is the live server.
    client, _ = _broker(env, clock=FixedClock(dt.datetime.now(dt.UTC)),
                        ocsp_url="http://127.0.0.1:9/ocsp", revocation_timeout_seconds=0.5)
    resp = _login_via(client, env.cards["crl-good"], env.base)
    assert resp.status_code == 200, resp.get_json()
    rec = last_login_audit(env)
    assert rec["revocation_source"] == "crl" and "ocsp_problem" in rec
    resp = _login_via(client, revoked, env.base)
    assert (resp.status_code, resp.get_json()) == (401, {**GENERIC, "reason": "revoked"})
    assert last_login_audit(env)["revocation_source"] == "crl"


def test_both_unreachable_fails_closed(env: Env) -> None:
    client, _ = _broker(env, fetcher=DeadFetcher())
    resp = _login_via(client, env.cards["alice"], env.base)
    assert (resp.status_code, resp.get_json()) == (503, {"error": "revocation_unavailable"})
    rec = last_login_audit(env)
    assert rec["action"] == "login.refused" and rec["reason"] == "revocation_unavailable"


def test_forged_ocsp_answer_is_not_trusted(env: Env) -> None:
    """An answer signed by a key that is not the issuer's is "OCSP unavailable", never good."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509 import ocsp

    rogue = rsa.generate_private_key(65537, 2048)
    issuer = env.auth.issuing_ca("PERSONNES").certificate
    now = dt.datetime.now(dt.UTC)
    # Same name as the issuing CA, another key; offered as a "delegated responder" too.
    rogue_cert = (x509.CertificateBuilder().subject_name(issuer.subject)
                  .issuer_name(issuer.subject).public_key(rogue.public_key()).serial_number(7)
                  .not_valid_before(now - dt.timedelta(hours=1))
                  .not_valid_after(now + dt.timedelta(days=1))
                  .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]),
                                 critical=False)
                  .sign(rogue, hashes.SHA256()))

    class Forger:
        def post(self, url: str, body: bytes, content_type: str, timeout: float) -> bytes:
            resp = (ocsp.OCSPResponseBuilder()
                    .add_response(env.cards["alice"].auth, issuer, hashes.SHA1(),
                                  ocsp.OCSPCertStatus.GOOD, now, now + dt.timedelta(hours=1),
                                  None, None)
                    .responder_id(ocsp.OCSPResponderEncoding.NAME, rogue_cert)
                    .certificates([rogue_cert])
                    .sign(rogue, hashes.SHA256()))
            return resp.public_bytes(serialization.Encoding.DER)

        def get(self, url: str, timeout: float) -> bytes:
            raise FetchError("no CRL")

    client, _ = _broker(env, fetcher=Forger())
    resp = _login_via(client, env.cards["alice"], env.base)
    assert resp.status_code == 503
    assert "not signed by the issuer" in last_login_audit(env)["detail"]


# --- tokens --------------------------------------------------------------------------------

def _token(env: Env) -> str:
    status, body = login(env, "alice")
    assert status == 200
    return str(body["access_token"])


def _reason(v: TokenValidator, token: str) -> str:
    from cps_login.errors import TokenInvalid

    with pytest.raises(TokenInvalid) as info:
        v.validate(token)
    return info.value.reason


def test_tampered_token_refused(env: Env) -> None:
    token = _token(env)
    head, payload, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["SubjectRole"] = ["21"]
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    assert _reason(validator(env), f"{head}.{forged}.{sig}") == "token_bad_signature"
    assert _reason(validator(env), f"{head}.{payload}.{sig[:-4]}AAAA") == "token_bad_signature"
    status, body = env.get("/api/whoami", {"Authorization": f"Bearer {head}.{forged}.{sig}"})
    assert (status, body) == (401, {"error": "invalid_token", "reason": "token_bad_signature"})


def test_expired_token_refused(env: Env) -> None:
    token = _token(env)
    later = FixedClock(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=130))
    assert _reason(validator(env, clock=later), token) == "token_expired"
    assert validator(env).validate(token)["sub"] == env.cards["alice"].national_id


def test_other_audience_token_refused(env: Env) -> None:
    token = _token(env)
    assert _reason(validator(env, audience="https://other.example/api"), token) \
        == "token_wrong_audience"


def test_wrong_type_and_unknown_key_refused(env: Env) -> None:
    token = _token(env)
    _, payload, sig = token.split(".")
    for header, reason in (({"alg": "ES256", "typ": "JWT"}, "token_wrong_type"),
                           ({"alg": "ES256", "typ": "at+jwt", "kid": "nope"},
                            "token_unknown_key"),
                           ({"alg": "none", "typ": "at+jwt"}, "token_unknown_key")):
        h = base64.urlsafe_b64encode(json.dumps(header).encode()).rstrip(b"=").decode()
        assert _reason(validator(env), f"{h}.{payload}.{sig}") == reason


def test_every_login_is_in_a_valid_audit_chain(env: Env) -> None:
    report = audit.verify(env.auth.store)
    assert report.ok, report.problems
    assert report.records > 10
