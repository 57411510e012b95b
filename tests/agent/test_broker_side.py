"""Broker side of issue 14 over HTTP (the tests/login environment: SoftHSM home, real OCSP):
a signature made for another broker name is told as such, a login acts for one exercise
situation, and the PSC claims follow the directory and the authenticator really used."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from cps_login.claims_psc import AuthContext, UnknownOrganisation, psc_claims
from cps_login.client import BrokerRefused, card_login
from cps_login.proof import login_message
from pki import ids, situations
from tests.login.conftest import Env, card_signature, last_login_audit, login_body
from tests.login.test_broker import challenge, validator

SAMU = ids.luhn_complete("93000001")
CABINET = ids.luhn_complete("3620000000002")


class FakeCard:
    """What card_login needs of a card, over a software key (the PIN is not checked)."""

    def __init__(self, key: PrivateKeyTypes, cert: Any) -> None:
        self.key, self.cert = key, cert

    def verify_pin(self, pin: str) -> None:
        pass

    def certificate(self, usage: str) -> Any:
        return self.cert

    def sign(self, usage: str, message: bytes) -> bytes:
        return card_signature(self.key, message)   # type: ignore[arg-type]


def test_signature_for_another_broker_name_says_both_urls(env: Env) -> None:
    card = env.cards["alice"]
    other = env.base.replace("127.0.0.1", "localhost")
    body = login_body(card.key, card.auth, challenge(env), other) | {"broker": other}
    status, answer = env.post("/login", body)
    assert (status, answer["reason"]) == (401, "wrong_issuer"), answer
    assert other in answer["message"] and repr(env.base) in answer["message"]
    assert last_login_audit(env)["reason"] == "wrong_issuer"
    # Without the URL it signed for, or with a signature that matches neither: bad_signature,
    # told as nothing more than invalid_credentials.
    for extra in ({}, {"broker": "http://elsewhere.example"}):
        body = login_body(card.key, card.auth, challenge(env), other) | extra
        status, answer = env.post("/login", body)
        assert (status, answer) == (401, {"error": "invalid_credentials"})
        assert last_login_audit(env)["reason"] == "bad_signature"


def test_cps_login_client_shows_the_issuer_mismatch(env: Env) -> None:
    card = env.cards["alice"]
    other = env.base.replace("127.0.0.1", "localhost")
    with pytest.raises(BrokerRefused) as refused:
        card_login(FakeCard(card.key, card.auth), "1234", other)   # type: ignore[arg-type]
    text = str(refused.value)
    assert "wrong_issuer" in text and other in text and env.base in text
    # The same client with the issuer URL logs in.
    outcome = card_login(FakeCard(card.key, card.auth), "1234", env.base)  # type: ignore[arg-type]
    assert validator(env).validate(outcome.access_token)["sub"] == card.national_id


def _situations(env: Env, rpps: str) -> None:
    for kind, number, name, emergency in (("FINESS", SAMU, "SAMU 93", True),
                                          ("SIRET", CABINET, "Cabinet Test", False)):
        situations.add_situation(env.auth.store, situations.situation_entry(
            rpps, structure_type=kind, structure_number=number, name=name, profession=10,
            role="FON-05" if emergency else None, emergency_centre=emergency))


def test_login_acts_for_one_exercise_situation(env: Env) -> None:
    card = env.new_card("dora")
    env.wait_ocsp(card.serial, "good")
    _situations(env, card.rpps)
    status, body = env.post("/login", login_body(card.key, card.auth, challenge(env), env.base,
                                                 organisation=SAMU))
    assert status == 200, body
    claims = validator(env).validate(body["access_token"])
    assert claims["SubjectOrganizationID"] == "1" + SAMU
    assert claims["SubjectOrganization"] == "SAMU 93"
    assert (claims["acr"], claims["cps_key_location"]) == ("eidas3", "card")
    # Two structures and none chosen: no SubjectOrganizationID at all.
    status, body = env.post("/login", login_body(card.key, card.auth, challenge(env), env.base))
    assert status == 200 and "SubjectOrganizationID" not in validator(env).validate(
        body["access_token"])
    status, body = env.post("/login", login_body(card.key, card.auth, challenge(env), env.base,
                                                 organisation_id="1" + ids.luhn_complete(
                                                     "75000009")))
    assert (status, body["reason"]) == (401, "unknown_organisation")


def test_psc_claims_from_the_directory(env: Env) -> None:
    card = env.new_card("emma")
    _situations(env, card.rpps)
    auth = AuthContext.for_key_location("card", 1_700_000_000)
    with env.auth.store.read() as session:
        claims = psc_claims(session, card.rpps, organisation="3" + CABINET, auth=auth)
        national = psc_claims(session, card.national_id, organisation=None, auth=auth)
        with pytest.raises(UnknownOrganisation):
            psc_claims(session, card.rpps, organisation="1999999999", auth=auth)
    assert claims["SubjectNameID"] == card.national_id == claims["preferred_username"]
    assert (claims["given_name"], claims["family_name"]) == ("emma", "Test")
    assert (claims["SubjectOrganizationID"], claims["SubjectOrganization"]) == (
        "3" + CABINET, "Cabinet Test")
    assert (claims["acr"], claims["amr"], claims["auth_time"]) == (
        "eidas3", ["hwk", "pin"], 1_700_000_000)
    [exercice] = claims["SubjectRefPro"]["exercices"]
    assert exercice["codeProfession"] == "10"
    activities = {a["identifiantStructure"]: a for a in exercice["activities"]}
    assert activities["1" + SAMU]["numeroFinessSite"] == SAMU
    assert activities["1" + SAMU]["codeRole"] == "FON-05"
    assert activities["1" + SAMU]["centreRegulationUrgences"] is True
    assert activities["3" + CABINET]["numeroSiretSite"] == CABINET
    assert activities["3" + CABINET]["raisonSocialeSite"] == "Cabinet Test"
    assert "SubjectOrganizationID" not in national        # two structures, none chosen


def test_software_key_never_gets_the_card_level() -> None:
    soft = AuthContext.for_key_location("software", 1)
    assert (soft.acr, soft.amr) == ("eidas1", ("swk",))
    with pytest.raises(ValueError, match="software key authenticates at acr eidas1"):
        AuthContext("software", 1, "eidas3", ("hwk", "pin"), "APPPRIP3")
    with pytest.raises(ValueError, match="key location"):
        AuthContext.for_key_location("cloud", 1)
    assert AuthContext.from_token_claims({"auth_time": 5}).acr == "eidas1"   # unknown: lowest


def test_login_message_binds_the_broker_name() -> None:
    assert login_message(b"\0" * 32, "http://a") != login_message(b"\0" * 32, "http://b")
