"""The patient space's own content through the patients' JSON API (/patient, Bearer session):
the same services and rules as the pages — replies, uploads, health data, shares — with bad
input refused (nothing stored) and another record refused by its rule."""

from __future__ import annotations

import base64
import datetime as dt
from typing import Any

import pytest
from sqlalchemy import func, select

from pki.store.patient_models import HealthEntry, PatientUpload, ProfileShare
from tests.login.conftest import Env, env  # noqa: F401 - fixture
from tests.pages.conftest import PASSWORD, Patient, World, world  # noqa: F401 - fixture
from tests.patient_space.conftest import png
from tests.patient_space.test_api import raw_get

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def session_of(env: Env, patient: Patient) -> str:  # noqa: F811
    status, body = env.post("/patient/signin", {"ins": patient.ins, "password": PASSWORD,
                                                "totp": patient.code()})
    assert status == 200, body
    return str(body["session"])


def rows(env: Env, model: type) -> int:  # noqa: F811
    with env.auth.store.read() as session:
        return int(session.execute(select(func.count()).select_from(model)).scalar_one())


def call(env: Env, session: str, method: str, path: str, body: Any = None  # noqa: F811
         ) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {session}"}
    return env.get(path, headers) if method == "GET" else env.post(path, body, headers)


def test_patient_api_for_the_new_content(env: Env, world: World) -> None:  # noqa: F811
    doctor = world.token("PortailMed")
    patient = world.enrol(doctor, "Ines", dt.date(1991, 4, 4))
    other = world.enrol(doctor, "Autre", dt.date(1991, 4, 5))
    me = session_of(env, patient)
    base = f"/patient/records/{patient.ins}"
    status, body = world.api(doctor, "POST", f"/api/patients/{patient.ins}/messages",
                             {"subject": "Suivi", "body": "Comment allez-vous ?"})
    conv = body["conversation"]
    assert call(env, me, "POST", f"{base}/messages/{conv}", {"body": "Bien, merci."})[0] == 201
    status, body = call(env, me, "GET", f"{base}/messages")
    assert [m["body"] for m in body["conversations"][0]["messages"]] == [
        "Comment allez-vous ?", "Bien, merci."]

    image = png()
    status, body = call(env, me, "POST", f"{base}/uploads", {
        "title": "Photo", "file": {"filename": "photo.png",
                                   "data": base64.b64encode(image).decode()}})
    assert status == 201, body
    status, media_type, data = raw_get(env, f"{base}/uploads/{body['id']}", me)
    assert (status, media_type, data) == (200, "image/png", image)

    status, body = call(env, me, "POST", f"{base}/health", {
        "kind": "measure", "name": "blood_pressure", "date": dt.date.today().isoformat(),
        "value": 128, "value2": 82})
    assert status == 201, body
    assert call(env, me, "GET", f"{base}/health")[1]["entries"][0]["unit"] == "mmHg"

    nid = world.api(doctor, "GET", "/api/whoami")[1]["national_id"]
    status, body = call(env, me, "POST", f"{base}/shares", {"professional": nid, "days": 1})
    assert status == 201, body
    assert call(env, me, "POST", f"{base}/shares/{body['id']}/revoke")[0] == 200
    assert call(env, me, "GET", f"{base}/shares")[1]["shares"][0]["active"] is False

    # another adult's record: refused by its rule, nothing stored
    before = rows(env, HealthEntry)
    status, body = call(env, me, "POST", f"/patient/records/{other.ins}/health", {
        "kind": "allergy", "name": "Latex", "date": dt.date.today().isoformat()})
    assert (status, body.get("rule")) == (403, "not_representative")
    assert rows(env, HealthEntry) == before


@pytest.mark.parametrize(("path", "body", "message"), [
    ("health", {"kind": "measure", "name": "temperature", "date": "2026-01-01", "value": 48},
     "outside the plausible range 30–44 °C"),
    ("health", {"kind": "measure", "name": "weight", "date": "2026-01-01", "value": "lourd"},
     "value must be a number"),
    ("health", {"kind": "allergy", "name": "Latex", "date": "01/02/2026"}, "YYYY-MM-DD"),
    ("uploads", {"title": "x", "file": {"filename": "x.pdf", "data": "%%%"}}, "base64"),
    ("uploads", {"title": "x", "file": {"filename": "x.png",
                                        "data": base64.b64encode(b"GIF89a....").decode()}},
     "only PDF, PNG and JPEG"),
    ("uploads", {"title": "x"}, "file is required"),
    ("shares", {"professional": "810003456786", "days": "7"}, "whole number"),
    ("shares", {"professional": "810003456786", "days": 0}, "1 to 365 days"),
])
def test_bad_input_over_the_patient_api(env: Env, world: World, path: str,  # noqa: F811
                                        body: dict[str, Any], message: str) -> None:
    patient = world.enrol(world.token("PortailMed"), "Ugo", dt.date(1977, 7, 7))
    me = session_of(env, patient)
    before = (rows(env, HealthEntry), rows(env, PatientUpload), rows(env, ProfileShare))
    status, answer = call(env, me, "POST", f"/patient/records/{patient.ins}/{path}", body)
    assert status == 400 and message in answer.get("message", ""), answer
    assert (rows(env, HealthEntry), rows(env, PatientUpload), rows(env, ProfileShare)) == before
