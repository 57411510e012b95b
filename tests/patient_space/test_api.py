"""The professionals' side of the patient space over HTTP (broker tokens from software cards):
messages, the patient's documents and health data, shared summaries — each refused call with
its rule, each decision in the access history, bad input refused with nothing stored."""

from __future__ import annotations

import base64
import datetime as dt
import urllib.error
import urllib.request
from typing import Any

import pytest
from sqlalchemy import func, select

from cps_login.access import Actor
from cps_login.patient_checks import HealthInput
from cps_login.web import services_of
from pki.store.patient_models import AccessEvent, Conversation, Message
from tests.login.conftest import Env, env  # noqa: F401 - fixture
from tests.pages.conftest import World, world  # noqa: F401 - fixture
from tests.patient_space.conftest import pdf, png

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def space(env: Env) -> Any:  # noqa: F811
    return services_of(env.patient_app).space


def raw_get(env: Env, path: str, token: str) -> tuple[int, str, bytes]:  # noqa: F811
    req = urllib.request.Request(env.url(path), headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read()


def rows(env: Env, model: type) -> int:  # noqa: F811
    with env.auth.store.read() as session:
        return int(session.execute(select(func.count()).select_from(model)).scalar_one())


def test_messages_over_the_api(env: Env, world: World) -> None:  # noqa: F811
    doctor = world.token("Messagerie")
    patient = world.enrol(doctor, "Mona", dt.date(1990, 3, 3))
    sent = pdf()
    status, body = world.api(doctor, "POST", f"/api/patients/{patient.ins}/messages", {
        "subject": "Résultats", "body": "Tout va bien.",
        "attachment": {"filename": "cr.pdf", "data": base64.b64encode(sent).decode()}})
    assert status == 201, body
    conv = body["conversation"]
    space(env).send(Actor("patient", patient.ins), patient.ins, conv, "Merci")
    status, body = world.api(doctor, "GET", f"/api/patients/{patient.ins}/messages")
    assert status == 200
    [conversation] = body["conversations"]
    assert [m["body"] for m in conversation["messages"]] == ["Tout va bien.", "Merci"]
    attachment_of = conversation["messages"][0]["id"]
    status, media_type, data = raw_get(
        env, f"/api/patients/{patient.ins}/messages/attachments/{attachment_of}", doctor)
    assert (status, media_type, data) == (200, "application/pdf", sent)


def test_outsider_cannot_open_and_bad_messages_are_refused(env: Env, world: World  # noqa: F811
                                                           ) -> None:
    doctor = world.token("Equipe")
    outsider = world.token("Dehors")
    patient = world.enrol(doctor, "Omar", dt.date(1970, 1, 1))
    before = (rows(env, Conversation), rows(env, Message))
    status, body = world.api(outsider, "POST", f"/api/patients/{patient.ins}/messages",
                             {"subject": "Bonjour", "body": "Je ne suis pas de l'équipe"})
    assert (status, body.get("rule")) == (403, "not_care_team")
    with env.auth.store.read() as session:
        last = session.execute(select(AccessEvent).order_by(AccessEvent.id.desc())).scalars(
        ).first()
    assert last is not None and (last.action, last.granted, last.rule) == (
        "open_conversation", False, "not_care_team")
    for bad, message in (
            ({"subject": "", "body": "x"}, "subject is required"),
            ({"subject": "s", "body": "x", "attachment": {"filename": "a.pdf", "data": "!!"}},
             "base64"),
            ({"subject": "s", "body": "x", "attachment": {
                "filename": "scan.pdf", "data": base64.b64encode(png()).decode()}},
             "content is image/png")):
        status, body = world.api(doctor, "POST", f"/api/patients/{patient.ins}/messages", bad)
        assert status == 400 and message in body["message"], body
    status, body = world.api(doctor, "POST", "/api/patients/123/messages",
                             {"subject": "s", "body": "x"})
    assert status == 400
    assert (rows(env, Conversation), rows(env, Message)) == before


def test_patient_content_and_share_over_the_api(env: Env, world: World) -> None:  # noqa: F811
    doctor = world.token("Lecteur")
    other = world.token("Partage", 60)
    patient = world.enrol(doctor, "Nora", dt.date(1988, 8, 8))
    up = space(env).upload(patient.ins, patient.ins, "Photo de la plaie", "plaie.png", png())
    space(env).add_health(patient.ins, patient.ins,
                          HealthInput("vaccination", "Grippe", dt.date.today()))
    status, body = world.api(doctor, "GET", f"/api/patients/{patient.ins}/uploads")
    assert status == 200 and body["uploads"][0]["written_by_patient"]
    status, media_type, data = raw_get(env, f"/api/patients/{patient.ins}/uploads/{up}", doctor)
    assert (status, media_type, data) == (200, "image/png", png())
    status, body = world.api(doctor, "GET", f"/api/patients/{patient.ins}/health")
    assert status == 200 and body["entries"][0]["name"] == "Grippe"
    status, body = world.api(other, "GET", f"/api/patients/{patient.ins}/health")
    assert (status, body.get("rule")) == (403, "no_care_relationship")
    status, body = world.api(other, "GET", f"/api/patients/{patient.ins}/summary")
    assert (status, body.get("rule")) == (403, "not_shared")
    nid = world.api(other, "GET", "/api/whoami")[1]["national_id"]
    share = space(env).share(patient.ins, patient.ins, nid, 1)
    status, body = world.api(other, "GET", f"/api/patients/{patient.ins}/summary")
    assert status == 200 and body["vaccinations"][0]["name"] == "Grippe"
    space(env).revoke_share(patient.ins, patient.ins, share)
    status, body = world.api(other, "GET", f"/api/patients/{patient.ins}/summary")
    assert (status, body.get("rule")) == (403, "not_shared")


def test_openapi_lists_the_new_paths(env: Env) -> None:  # noqa: F811
    status, spec = env.get("/openapi.json")
    assert status == 200
    for path in ("/api/patients/{ins}/messages", "/api/patients/{ins}/uploads",
                 "/api/patients/{ins}/health", "/api/patients/{ins}/summary"):
        assert path in spec["paths"], path
