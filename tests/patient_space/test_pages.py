"""The patient space's content pages through the Flask test client on the live home: forms
with CSRF, French dates, bad input refused with a clear message and nothing stored, reads in
the access history."""

from __future__ import annotations

import datetime as dt
import html
import io
import re
from typing import Any

import pytest
from sqlalchemy import func, select

from cps_login.patient_checks import today_in_france
from cps_login.web import services_of
from pki.store.models import AuditRecord
from pki.store.patient_models import AccessEvent, HealthEntry, PatientUpload, ProfileShare
from tests.login.conftest import Env, env  # noqa: F401 - fixture
from tests.pages.conftest import Browserless, Patient, World, csrf_of, world  # noqa: F401
from tests.patient_space.conftest import pdf, png

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def count(env: Env, model: type, **where: Any) -> int:  # noqa: F811
    with env.auth.store.read() as session:
        query = select(func.count()).select_from(model)
        for name, value in where.items():
            query = query.where(getattr(model, name) == value)
        return int(session.execute(query).scalar_one())


@pytest.fixture
def signed_in(env: Env, world: World) -> tuple[Browserless, Patient, str]:  # noqa: F811
    token = world.token("Pages")
    patient = world.enrol(token, "Pia", dt.date(1982, 2, 2))
    browser = Browserless(env)
    assert browser.sign_in(patient).status_code == 303
    return browser, patient, token


def text(response: Any) -> str:
    return html.unescape(response.get_data(as_text=True))


def test_every_new_page_renders_in_french_and_english(signed_in: Any) -> None:
    browser, patient, _ = signed_in
    for page, heading in (("documents", "Documents"), ("health", "Mes données de santé"),
                          ("messages", "Messagerie sécurisée"), ("shares", "Partager mon profil")):
        response = browser.get(f"/espace/records/{patient.ins}/{page}")
        assert response.status_code == 200 and f"<h1>{heading}</h1>" in text(response), page
    browser.get("/espace/lang/en")
    response = browser.get(f"/espace/records/{patient.ins}/health")
    assert "<h1>My health data</h1>" in text(response)
    assert 'placeholder="yyyy-mm-dd"' in text(response)


def test_french_date_fields_are_dd_mm_yyyy(signed_in: Any, env: Env) -> None:  # noqa: F811
    browser, patient, _ = signed_in
    page = text(browser.get(f"/espace/records/{patient.ins}/health"))
    assert 'placeholder="jj/mm/aaaa"' in page and 'type="date"' not in page
    today = today_in_france(dt.datetime.now(dt.UTC)).strftime("%d/%m/%Y")
    assert f'value="{today}"' in page
    response = browser.post(f"/espace/records/{patient.ins}/health", {
        "csrf": csrf_of(page), "kind": "vaccination", "name": "ROR", "date": "03/02/2020"})
    assert response.status_code == 303
    page = text(browser.get(f"/espace/records/{patient.ins}/health"))
    assert "ROR</strong> · 03/02/2020" in page
    # the history filter takes and shows French dates too
    history = text(browser.get(f"/espace/records/{patient.ins}/history?from=01/01/2020"))
    assert 'value="01/01/2020"' in history and 'type="date"' not in history


def test_measure_out_of_range_is_refused_and_nothing_stored(signed_in: Any,
                                                            env: Env) -> None:  # noqa: F811
    browser, patient, _ = signed_in
    csrf = browser.csrf(f"/espace/records/{patient.ins}/health")
    before = count(env, HealthEntry)
    response = browser.post(f"/espace/records/{patient.ins}/health", {
        "csrf": csrf, "kind": "measure", "measure": "weight", "value": "950",
        "date": dt.date.today().strftime("%d/%m/%Y")})
    assert response.status_code == 400
    assert "poids 950 kg est hors de l'intervalle plausible 0.3–400 kg" in text(response)
    assert "Refusé, rien n'a été enregistré" in text(response)
    response = browser.post(f"/espace/records/{patient.ins}/health", {
        "csrf": csrf, "kind": "measure", "measure": "weight", "value": "70",
        "date": "31/02/2024"})
    assert response.status_code == 400 and "date invalide (format jj/mm/aaaa)" in text(response)
    assert count(env, HealthEntry) == before


def test_upload_then_view_and_download_in_the_history(signed_in: Any,
                                                      env: Env) -> None:  # noqa: F811
    browser, patient, _ = signed_in
    csrf = browser.csrf(f"/espace/records/{patient.ins}/documents")
    sent = pdf()
    response = browser.post(f"/espace/records/{patient.ins}/documents", {
        "csrf": csrf, "title": "Ordonnance scannée", "file": (io.BytesIO(sent), "scan.pdf")})
    assert response.status_code == 303
    page = text(browser.get(f"/espace/records/{patient.ins}/documents"))
    upload_id = int(re.search(r"/uploads/(\d+)\"", page).group(1))  # type: ignore[union-attr]
    view = browser.get(f"/espace/records/{patient.ins}/uploads/{upload_id}/file")
    assert view.status_code == 200 and view.data == sent
    assert view.headers["Content-Disposition"].startswith("inline")
    assert view.headers["Content-Security-Policy"].startswith("default-src 'none'")
    assert view.headers["X-Content-Type-Options"] == "nosniff"
    download = browser.get(f"/espace/records/{patient.ins}/uploads/{upload_id}/file?download=1")
    assert download.headers["Content-Disposition"].startswith("attachment")
    with env.auth.store.read() as session:
        actions = [e.action for e in session.execute(select(AccessEvent).where(
            AccessEvent.subject == f"upload:{upload_id}")).scalars()]
    assert actions == ["view", "download"]


@pytest.mark.parametrize(("name", "data", "message"), [
    ("photo.pdf", png(), "le fichier s'appelle « photo.pdf » mais son contenu est image/png"),
    ("run.pdf", b"#!/bin/sh\n", "seuls les fichiers PDF, PNG et JPEG sont acceptés"),
])
def test_disguised_upload_is_refused(signed_in: Any, env: Env, name: str, data: bytes,  # noqa: F811
                                     message: str) -> None:
    browser, patient, _ = signed_in
    csrf = browser.csrf(f"/espace/records/{patient.ins}/documents")
    before = count(env, PatientUpload)
    response = browser.post(f"/espace/records/{patient.ins}/documents", {
        "csrf": csrf, "title": "x", "file": (io.BytesIO(data), name)})
    assert response.status_code == 400 and message in text(response)
    assert count(env, PatientUpload) == before


def test_oversized_upload_is_refused(signed_in: Any, env: Env) -> None:  # noqa: F811
    browser, patient, _ = signed_in
    csrf = browser.csrf(f"/espace/records/{patient.ins}/documents")
    before = count(env, PatientUpload)
    big = b"%PDF-1.7\n" + b"0" * (5 * 1024 * 1024)
    response = browser.post(f"/espace/records/{patient.ins}/documents", {
        "csrf": csrf, "title": "x", "file": (io.BytesIO(big), "big.pdf")})
    assert response.status_code == 413 and "trop volumineux" in text(response)
    assert count(env, PatientUpload) == before


@pytest.mark.parametrize(("page", "form"), [
    ("documents", {"title": "x"}),
    ("health", {"kind": "allergy", "name": "Latex", "date": "01/01/2020"}),
    ("shares", {"target": "810003456786", "days": "1"}),
    ("messages/1", {"body": "forged"}),
    ("controls", {"change": "consent", "target": "810003456786"}),
])
def test_forged_forms_are_refused_and_audited(signed_in: Any, env: Env, page: str,  # noqa: F811
                                              form: dict[str, str]) -> None:
    browser, patient, _ = signed_in
    before = (count(env, HealthEntry), count(env, ProfileShare), count(env, PatientUpload))
    for csrf in (None, "forged-token"):
        data = dict(form) if csrf is None else {**form, "csrf": csrf}
        response = browser.post(f"/espace/records/{patient.ins}/{page}", data)
        assert response.status_code == 403
        assert "Le formulaire a expiré ou n'est pas valide" in text(response)
    assert (count(env, HealthEntry), count(env, ProfileShare), count(env, PatientUpload)) == before
    with env.auth.store.read() as session:
        last = session.execute(select(AuditRecord).order_by(AuditRecord.seq.desc())).scalars(
        ).first()
    assert last is not None and last.action == "page.refused" and "csrf_token" in last.details


def test_consent_from_the_page_is_audited(signed_in: Any, env: Env, world: World  # noqa: F811
                                         ) -> None:
    browser, patient, _ = signed_in
    outsider = world.token("Consenti", 60)
    nid = world.api(outsider, "GET", "/api/whoami")[1]["national_id"]
    assert world.api(outsider, "GET", f"/api/patients/{patient.ins}/documents")[0] == 403
    csrf = browser.csrf(f"/espace/records/{patient.ins}/controls")
    response = browser.post(f"/espace/records/{patient.ins}/controls",
                            {"csrf": csrf, "change": "consent", "target": nid})
    assert response.status_code == 303
    assert world.api(outsider, "GET", f"/api/patients/{patient.ins}/documents")[0] == 200
    response = browser.post(f"/espace/records/{patient.ins}/controls",
                            {"csrf": csrf, "change": "withdraw_consent", "target": nid})
    assert response.status_code == 303
    assert world.api(outsider, "GET", f"/api/patients/{patient.ins}/documents")[0] == 403
    assert count(env, AuditRecord, action="patient.consent") >= 1
    assert count(env, AuditRecord, action="patient.withdraw_consent") >= 1


def test_reply_to_another_records_conversation_is_refused(
        signed_in: Any, env: Env, world: World) -> None:  # noqa: F811
    browser, patient, token = signed_in
    other = world.enrol(token, "Autre", dt.date(1979, 9, 9))
    status, body = world.api(token, "POST", f"/api/patients/{other.ins}/messages",
                             {"subject": "Privé", "body": "Pour l'autre patient"})
    assert status == 201
    conv = body["conversation"]
    csrf = browser.csrf(f"/espace/records/{patient.ins}/messages")
    space = services_of(env.patient_app).space
    before = len(space.conversations(space_actor(other), other.ins)[0]["messages"])
    for ins in (patient.ins, other.ins):     # own record: not found; other record: refused
        response = browser.post(f"/espace/records/{ins}/messages/{conv}",
                                {"csrf": csrf, "body": "intrusion"})
        assert response.status_code in (403, 404)
    assert len(space.conversations(space_actor(other), other.ins)[0]["messages"]) == before


def space_actor(patient: Patient) -> Any:
    from cps_login.access import Actor

    return Actor("patient", patient.ins)


def test_hide_a_document_from_one_professional_from_the_page(
        signed_in: Any, env: Env, world: World) -> None:  # noqa: F811
    browser, patient, token = signed_in
    nurse = world.token("Infirmière", 60)
    nid = world.api(nurse, "GET", "/api/whoami")[1]["national_id"]
    doc = world.document(token, patient.ins, "Bilan biologique", "lab")
    csrf = browser.csrf(f"/espace/records/{patient.ins}/controls")
    browser.post(f"/espace/records/{patient.ins}/controls",
                 {"csrf": csrf, "change": "consent", "target": nid})
    assert world.api(nurse, "GET", f"/api/patients/{patient.ins}/documents/{doc}")[0] == 200
    page = text(browser.get(f"/espace/records/{patient.ins}/documents"))
    response = browser.post(f"/espace/records/{patient.ins}/documents/visibility", {
        "csrf": csrf_of(page), "kind": "document", "doc": str(doc), "change": "hide_from",
        "target": nid})
    assert response.status_code == 303
    status, body = world.api(nurse, "GET", f"/api/patients/{patient.ins}/documents/{doc}")
    assert (status, body.get("rule")) == (403, "hidden_from_professional")
    assert world.api(token, "GET", f"/api/patients/{patient.ins}/documents/{doc}")[0] == 200
    page = text(browser.get(f"/espace/records/{patient.ins}/documents"))
    assert "Masqué à Infirmière Test." in page
    # a document id of another record, or made up: refused and audited, nothing changed
    for bad in ("999999", "abc"):
        response = browser.post(f"/espace/records/{patient.ins}/documents/visibility", {
            "csrf": csrf_of(page), "kind": "document", "doc": bad, "change": "show_to",
            "target": nid})
        assert response.status_code == 404
    browser.post(f"/espace/records/{patient.ins}/documents/visibility", {
        "csrf": csrf_of(page), "kind": "document", "doc": str(doc), "change": "show_to",
        "target": nid})
    assert world.api(nurse, "GET", f"/api/patients/{patient.ins}/documents/{doc}")[0] == 200
    # the professional's read of the patient's own document names it in the timeline
    csrf = csrf_of(page)
    browser.post(f"/espace/records/{patient.ins}/documents", {
        "csrf": csrf, "title": "Radio du genou", "file": (io.BytesIO(png()), "genou.png")})
    up = world.api(token, "GET", f"/api/patients/{patient.ins}/uploads")[1]["uploads"][0]["id"]
    services_of(env.patient_app).space.read_upload(
        space_actor_pro(world, token), patient.ins, up, download=True)
    history = text(browser.get(f"/espace/records/{patient.ins}/history"))
    assert "a consulté vos documents" in history
    # the patient reads the professional's document in the page, then downloads it
    page = text(browser.get(f"/espace/records/{patient.ins}/documents/{doc}"))
    assert "<h1>Bilan biologique</h1>" in page
    download = browser.get(f"/espace/records/{patient.ins}/documents/{doc}?download=1")
    assert download.headers["Content-Disposition"].startswith("attachment")
    with env.auth.store.read() as session:
        reads = [e.action for e in session.execute(select(AccessEvent).where(
            AccessEvent.document_id == doc, AccessEvent.actor_id == patient.ins)).scalars()]
    assert reads == ["view", "download"]
    assert "a téléchargé un document : Radio du genou" in re.sub(r"<[^>]+>", "", history)


def test_a_parent_acts_on_the_childs_record_not_on_an_adult_childs(
        env: Env, world: World) -> None:  # noqa: F811
    token = world.token("Pédiatre2")
    parent = world.enrol(token, "Paule", dt.date(1980, 5, 1))
    today = dt.date.today()
    child = world.enrol(token, "Lou", today.replace(year=today.year - 8), reps=(parent.ins,))
    adult = world.enrol(token, "Max", today.replace(year=today.year - 25), reps=(parent.ins,))
    status, body = world.api(token, "POST", f"/api/patients/{child.ins}/messages",
                             {"subject": "Vaccins de Lou", "body": "Le rappel est à faire."})
    assert status == 201
    browser = Browserless(env)
    assert browser.sign_in(parent).status_code == 303
    page = text(browser.get(f"/espace/records/{child.ins}/messages"))
    assert "Vaccins de Lou" in page and "profil enfant" in page
    response = browser.post(f"/espace/records/{child.ins}/messages/{body['conversation']}",
                            {"csrf": csrf_of(page), "body": "Rendez-vous pris, merci."})
    assert response.status_code == 303
    response = browser.post(f"/espace/records/{child.ins}/health", {
        "csrf": csrf_of(page), "kind": "measure", "measure": "height", "value": "128",
        "date": today.strftime("%d/%m/%Y")})
    assert response.status_code == 303
    status, read = world.api(token, "GET", f"/api/patients/{child.ins}/messages")
    assert read["conversations"][0]["messages"][-1]["author_id"] == parent.ins
    status, health = world.api(token, "GET", f"/api/patients/{child.ins}/health")
    assert health["entries"][0]["written_by"] == parent.ins
    for path in ("documents", "health", "messages", "shares"):
        response = browser.get(f"/espace/records/{adult.ins}/{path}")
        assert response.status_code == 403, path
    before = count(env, HealthEntry)
    response = browser.post(f"/espace/records/{adult.ins}/health", {
        "csrf": csrf_of(page), "kind": "allergy", "name": "Latex",
        "date": today.strftime("%d/%m/%Y")})
    assert response.status_code == 403 and count(env, HealthEntry) == before


def space_actor_pro(world: World, token: str) -> Any:  # noqa: F811
    from cps_login.access import Actor

    me = world.api(token, "GET", "/api/whoami")[1]
    return Actor("professional", me["national_id"], me["profession_code"])


def test_every_refusal_is_said_in_both_languages() -> None:
    import string

    from cps_login.pages.i18n import CATALOGUE
    from cps_login.patient_checks import REFUSALS

    def fields(text: str) -> set[str]:
        return {f for _, f, _, _ in string.Formatter().parse(text) if f}

    for key, english in REFUSALS.items():
        entry = CATALOGUE[f"invalid.{key}"]
        assert fields(entry["fr"]) == fields(entry["en"]) == fields(english), key
