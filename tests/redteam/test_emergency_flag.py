"""Red-team finding F11: an emergency-centre flag is one professional's, not the structure's."""

from __future__ import annotations

from pki import ids, situations
from tests.directory_situations.test_emergency_access import _call, _login
from tests.login.conftest import Env

SAMU = ids.luhn_complete("13000091")
PATIENT = "2700175123461"
PATIENT += ids.ins_key(PATIENT)


def test_another_professionals_emergency_flag_gives_no_emergency_access(env: Env) -> None:
    """F11 (MEDIUM, fixed): the emergency-centre flag is recorded per exercise SITUATION
    (this professional works for the SAMU's regulation), but access turned it into a property
    of the whole STRUCTURE:
    once one professional's situation at a FINESS is flagged, every professional with any
    situation at that FINESS (a hospital site hosting a SAMU: every ward physician) reads any
    record in the emergency mode, which bypasses consent and care-team rules."""
    author = env.new_card("rt-author")
    regulator = env.new_card("rt-regul")
    ward = env.new_card("rt-ward")
    for card in (author, regulator, ward):
        env.wait_ocsp(card.serial, "good")
    for card, flagged in ((regulator, True), (ward, False)):
        situations.add_situation(env.auth.store, situations.situation_entry(
            card.rpps, structure_type="FINESS", structure_number=SAMU, name="CHU / SAMU",
            profession=10, emergency_centre=flagged))
    writer = _login(env, "rt-author")
    status, body = _call(env, writer, "POST", "/api/patients", {
        "ins": PATIENT, "given_name": "Ada", "surname": "Urgence", "birth_date": "1970-01-01"})
    assert status == 201, body
    status, body = _call(env, writer, "POST", f"/api/patients/{PATIENT}/documents",
                         {"category": "synthesis", "title": "synthèse", "content": "..."})
    assert status == 201, body
    path = f"/api/patients/{PATIENT}/documents/{body['id']}?mode=emergency&reason=curious"
    status, body = _call(env, _login(env, "rt-regul", SAMU), "GET", path)
    assert status == 200 and body["access_mode"] == "emergency", body      # the regulator
    status, body = _call(env, _login(env, "rt-ward", SAMU), "GET", path)
    assert (status, body.get("rule")) == (403, "not_emergency_centre"), body
