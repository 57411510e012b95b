"""Emergency-centre access follows from the situation a professional logs in for: the same
physician reads a record in the emergency mode when acting for the SAMU where the directory
places them, and is refused when acting for their other, ordinary structure."""

from __future__ import annotations

import json
from typing import Any

from pki import ids, situations
from tests.login.conftest import Env, http_call, login_body

SAMU = ids.luhn_complete("13000001")
CLINIC = ids.luhn_complete("13000002")
PATIENT = "2700175123457"
PATIENT += ids.ins_key(PATIENT)


def _login(env: Env, name: str, organisation: str | None = None) -> str:
    card = env.cards[name]
    _, ch = env.post("/login/challenge")
    extra = {"organisation": organisation} if organisation else {}
    status, body = env.post("/login", login_body(card.key, card.auth, ch["challenge"], env.base,
                                                 **extra))
    assert status == 200, body
    return str(body["access_token"])


def _call(env: Env, token: str, method: str, path: str, body: Any = None
          ) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    if method == "GET":
        return env.get(path, headers)
    return http_call(env.url(path), method, json.dumps(body).encode(), headers)


def test_emergency_mode_follows_the_chosen_situation(env: Env) -> None:
    author = env.new_card("dr-author")
    regulator = env.new_card("dr-regul")
    for card in (author, regulator):
        env.wait_ocsp(card.serial, "good")
    for number, name, emergency in ((SAMU, "SAMU 13", True), (CLINIC, "Clinique 13", False)):
        situations.add_situation(env.auth.store, situations.situation_entry(
            regulator.rpps, structure_type="FINESS", structure_number=number, name=name,
            profession=10, emergency_centre=emergency))
    writer = _login(env, "dr-author")
    status, body = _call(env, writer, "POST", "/api/patients", {
        "ins": PATIENT, "given_name": "Ada", "surname": "Urgence", "birth_date": "1970-01-01"})
    assert status == 201, body
    status, body = _call(env, writer, "POST", f"/api/patients/{PATIENT}/documents",
                         {"category": "synthesis", "title": "synthèse", "content": "..."})
    assert status == 201, body
    path = f"/api/patients/{PATIENT}/documents/{body['id']}?mode=emergency&reason=appel+15"

    status, body = _call(env, _login(env, "dr-regul", SAMU), "GET", path)
    assert status == 200 and body["access_mode"] == "emergency", body
    status, body = _call(env, _login(env, "dr-regul", "1" + CLINIC), "GET", path)
    assert (status, body["rule"]) == (403, "not_emergency_centre")
    # Two situations and none chosen: no organisation, no emergency-centre access.
    status, body = _call(env, _login(env, "dr-regul"), "GET", path)
    assert (status, body["rule"]) == (403, "not_emergency_centre")
    # Another physician cannot log in "for" the SAMU: not one of their situations.
    card = env.cards["dr-author"]
    _, ch = env.post("/login/challenge")
    status, body = env.post("/login", login_body(card.key, card.auth, ch["challenge"], env.base,
                                                 organisation="1" + SAMU))
    assert (status, body["reason"]) == (401, "unknown_organisation")
