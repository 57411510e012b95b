"""The patient-record API over HTTP: professionals with broker tokens, patients with password +
TOTP, every decision in the access history and the audit chain."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from sqlalchemy import select

from cps_login import totp
from pki import audit, ids
from pki.store.models import AuditRecord
from pki.store.patient_models import AccessEvent
from tests.login.conftest import Env, login_body

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def ins(nir: str) -> str:
    return nir + ids.ins_key(nir)


CHILD = ins("2150575123456")
PARENT = ins("1800575123456")
ADULT = ins("2700175123457")


class Api:
    def __init__(self, env: Env) -> None:
        self.env = env
        self.tokens: dict[str, str] = {}
        self.sessions: dict[str, str] = {}

    def pro(self, name: str, profession: int = 10) -> str:
        if name not in self.tokens:
            card = self.env.cards.get(name) or self.env.new_card(name, profession)
            self.env.wait_ocsp(card.serial, "good")
            _, ch = self.env.post("/login/challenge")
            status, body = self.env.post("/login", login_body(card.key, card.auth,
                                                              ch["challenge"], self.env.base))
            assert status == 200, body
            self.tokens[name] = body["access_token"]
        return self.tokens[name]

    def as_pro(self, name: str, method: str, path: str, body: Any = None
               ) -> tuple[int, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {self.pro(name)}"}
        if method == "GET":
            return self.env.get(path, headers)
        return self.call(method, path, body, headers)

    def as_patient(self, who: str, method: str, path: str, body: Any = None
                   ) -> tuple[int, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {self.sessions[who]}"}
        if method == "GET":
            return self.env.get(path, headers)
        return self.call(method, path, body, headers)

    def call(self, method: str, path: str, body: Any, headers: dict[str, str]
             ) -> tuple[int, dict[str, Any]]:
        from tests.login.conftest import http_call

        return http_call(self.env.url(path), method, json.dumps(body).encode(),
                         {**headers, "Content-Type": "application/json"})


@pytest.fixture(scope="module")
def api(env: Env) -> Api:
    a = Api(env)
    for name, profession in (("dr-house", 10), ("nurse", 60), ("pharma", 21), ("dr-er", 10)):
        a.pro(name, profession)
    # enrolment: the enrolling physician joins the care team; activation codes come back
    for who, given, birth, reps in ((PARENT, "Paul", "1980-05-01", []),
                                    (ADULT, "Ada", "1970-01-01", []),
                                    (CHILD, "Chloé", "2015-05-01", [PARENT])):
        status, body = a.as_pro("dr-house", "POST", "/api/patients",
                                {"ins": who, "given_name": given, "surname": "Martin",
                                 "birth_date": birth, "representatives": reps})
        assert status == 201, body
        code = body["activation_code"]
        status, body = env.post("/patient/activate", {"ins": who, "activation_code": code,
                                                      "password": "correct horse battery"})
        assert status == 200 and body["otpauth_uri"].startswith("otpauth://totp/")
        now = dt.datetime.now(dt.UTC).timestamp()
        status, body = env.post("/patient/signin", {
            "ins": who, "password": "correct horse battery",
            "totp": totp.totp(body["totp_secret"], now)})
        assert status == 200, body
        a.sessions[who] = body["session"]
    return a


def doc(api: Api, author: str, patient: str, category: str, **extra: Any) -> int:
    status, body = api.as_pro(author, "POST", f"/api/patients/{patient}/documents",
                              {"category": category, "title": f"{category} note",
                               "content": "...", **extra})
    assert status == 201, body
    return int(body["id"])


def test_invalid_ins_refused(api: Api) -> None:
    status, body = api.as_pro("dr-house", "POST", "/api/patients",
                              {"ins": CHILD[:-2] + "00", "given_name": "X", "surname": "Y",
                               "birth_date": "2000-01-01"})
    assert status == 400 and body["error"] == "invalid_identifier"


def test_care_team_reads_others_refused_then_consent(api: Api) -> None:
    report = doc(api, "dr-house", ADULT, "report")
    status, body = api.as_pro("dr-house", "GET", f"/api/patients/{ADULT}/documents/{report}")
    assert status == 200 and body["access_mode"] == "normal" and body["content"] == "..."
    status, body = api.as_pro("nurse", "GET", f"/api/patients/{ADULT}/documents/{report}")
    assert (status, body["error"]) == (403, "not_authorised")
    assert body["rule"] == "no_care_relationship"
    assert api.as_patient(ADULT, "POST", f"/patient/records/{ADULT}/controls",
                          {"change": "consent", "target": api.env.cards["nurse"].national_id}
                          )[0] == 200
    assert api.as_pro("nurse", "GET", f"/api/patients/{ADULT}/documents/{report}")[0] == 200


def test_profession_matrix_and_block(api: Api) -> None:
    mental = doc(api, "dr-house", ADULT, "mental_health")
    prescription = doc(api, "dr-house", ADULT, "prescription")
    pharma = api.env.cards["pharma"].national_id
    api.as_patient(ADULT, "POST", f"/patient/records/{ADULT}/controls",
                   {"change": "consent", "target": pharma})
    assert api.as_pro("pharma", "GET",
                      f"/api/patients/{ADULT}/documents/{prescription}")[0] == 200
    status, body = api.as_pro("pharma", "GET", f"/api/patients/{ADULT}/documents/{mental}")
    assert (status, body["rule"]) == (403, "profession_matrix")
    _, listing = api.as_pro("pharma", "GET", f"/api/patients/{ADULT}/documents")
    assert prescription in [d["id"] for d in listing["documents"]]
    assert mental not in [d["id"] for d in listing["documents"]]
    api.as_patient(ADULT, "POST", f"/patient/records/{ADULT}/controls",
                   {"change": "block", "target": pharma})
    status, body = api.as_pro("pharma", "GET",
                              f"/api/patients/{ADULT}/documents/{prescription}")
    assert (status, body["rule"]) == (403, "patient_blocked")
    api.as_patient(ADULT, "POST", f"/patient/records/{ADULT}/controls",
                   {"change": "unblock", "target": pharma})
    assert api.as_pro("pharma", "GET",
                      f"/api/patients/{ADULT}/documents/{prescription}")[0] == 200


def test_document_hidden_by_patient_visible_to_author_only(api: Api) -> None:
    d = doc(api, "dr-house", ADULT, "report")
    api.as_patient(ADULT, "POST", f"/patient/records/{ADULT}/controls",
                   {"change": "hide_document", "target": str(d)})
    assert api.as_pro("dr-house", "GET", f"/api/patients/{ADULT}/documents/{d}")[0] == 200
    status, body = api.as_pro("nurse", "GET", f"/api/patients/{ADULT}/documents/{d}")
    assert (status, body["rule"]) == (403, "hidden_by_patient")


def test_break_glass_flagged_and_opposition(api: Api) -> None:
    d = doc(api, "dr-house", ADULT, "synthesis")
    path = f"/api/patients/{ADULT}/documents/{d}"
    status, body = api.as_pro("dr-er", "GET", path)
    assert (status, body["rule"]) == (403, "no_care_relationship")
    status, body = api.as_pro("dr-er", "GET", path + "?mode=break_glass")
    assert (status, body["rule"]) == (403, "reason_required")
    status, body = api.as_pro("dr-er", "GET", path + "?mode=break_glass&reason=unconscious")
    assert status == 200 and body["access_mode"] == "break_glass"
    status, body = api.as_pro("dr-er", "GET", path + "?mode=emergency&reason=call+15")
    assert (status, body["rule"]) == (403, "not_emergency_centre")
    api.as_patient(ADULT, "POST", f"/patient/records/{ADULT}/controls",
                   {"change": "oppose_emergency"})
    status, body = api.as_pro("dr-er", "GET", path + "?mode=break_glass&reason=unconscious")
    assert (status, body["rule"]) == (403, "emergency_opposed")
    status, history = api.as_patient(ADULT, "GET", f"/patient/records/{ADULT}/history")
    assert status == 200
    alerts = history["alerts"]
    assert any(e["granted"] and e["mode"] == "break_glass" and e["reason"] == "unconscious"
               and e["profession"] == "Physician" and e["document"] == d for e in alerts)
    refused = [e for e in history["events"] if e["rule"] == "emergency_opposed"]
    assert refused and not refused[0]["granted"]
    with api.env.auth.store.read() as session:
        ev = session.execute(select(AccessEvent).where(AccessEvent.rule == "break_glass")
                             ).scalars().first()
        assert ev is not None and ev.flagged
        rec = session.execute(select(AuditRecord).where(AuditRecord.seq == ev.audit_seq)
                              ).scalar_one()
        assert rec.action == "record.access" and json.loads(rec.details)["flagged"] is True


def test_hidden_from_patient_until_date(api: Api) -> None:
    until = (dt.datetime.now(dt.UTC) + dt.timedelta(days=30)).isoformat()
    later = doc(api, "dr-house", ADULT, "lab", hidden_from_patient_until=until)
    now_doc = doc(api, "dr-house", ADULT, "lab")
    status, body = api.as_patient(ADULT, "GET", f"/patient/records/{ADULT}/documents")
    ids_seen = [x["id"] for x in body["documents"]]
    assert status == 200 and now_doc in ids_seen and later not in ids_seen
    # only the author can change it
    status, body = api.as_pro("nurse", "PUT",
                              f"/api/patients/{ADULT}/documents/{later}/visibility",
                              {"hidden_from_patient_until": None})
    assert (status, body["rule"]) == (403, "not_author")
    assert api.as_pro("dr-house", "PUT", f"/api/patients/{ADULT}/documents/{later}/visibility",
                      {"hidden_from_patient_until": None})[0] == 200
    _, body = api.as_patient(ADULT, "GET", f"/patient/records/{ADULT}/documents")
    assert later in [x["id"] for x in body["documents"]]


def test_parent_manages_child_but_not_hidden_documents(api: Api) -> None:
    open_doc = doc(api, "dr-house", CHILD, "report")
    secret = doc(api, "dr-house", CHILD, "report", hidden_from_representatives=True)
    status, body = api.as_patient(PARENT, "GET", f"/patient/records/{CHILD}/documents")
    seen = [x["id"] for x in body["documents"]]
    assert status == 200 and open_doc in seen and secret not in seen
    status, body = api.as_patient(CHILD, "GET", f"/patient/records/{CHILD}/documents")
    assert secret in [x["id"] for x in body["documents"]]
    # the parent sets the child's controls and reads the child's history
    assert api.as_patient(PARENT, "POST", f"/patient/records/{CHILD}/controls",
                          {"change": "oppose_emergency"})[0] == 200
    assert api.as_patient(PARENT, "GET", f"/patient/records/{CHILD}/history")[0] == 200
    # but nobody else's
    status, body = api.as_patient(PARENT, "GET", f"/patient/records/{ADULT}/history")
    assert (status, body["rule"]) == (403, "not_representative")


def test_patient_signin_same_answer_and_rate_limit(api: Api) -> None:
    env = api.env
    unknown = ins("1991299123456")
    answers = [env.post("/patient/signin", {"ins": who, "password": pw, "totp": "000000"})
               for who, pw in ((unknown, "whatever password"), (ADULT, "wrong password!!"),
                               ("garbage", "x"))]
    assert all(a == (401, {"error": "invalid_credentials"}) for a in answers), answers
    with env.auth.store.read() as session:
        reasons = [json.loads(r.details)["reason"] for r in session.execute(
            select(AuditRecord).where(AuditRecord.action == "patient.signin_refused")
            .order_by(AuditRecord.seq.desc()).limit(3)).scalars()]
    assert set(reasons) == {"unknown_patient", "wrong_password"}
    for _ in range(5):
        env.post("/patient/signin", {"ins": ADULT, "password": "wrong", "totp": "1"})
    status, body = env.post("/patient/signin", {"ins": ADULT, "password": "x", "totp": "1"})
    assert (status, body["error"]) == (429, "rate_limited")


def test_patient_session_required_and_tamper_evident(api: Api) -> None:
    status, body = api.env.get(f"/patient/records/{ADULT}/history")
    assert (status, body) == (401, {"error": "invalid_credentials"})
    forged = api.sessions[ADULT][:-3] + "abc"
    status, _ = api.env.get(f"/patient/records/{ADULT}/history",
                            {"Authorization": f"Bearer {forged}"})
    assert status == 401


def test_audit_chain_intact_after_all_of_it(api: Api) -> None:
    report = audit.verify(api.env.auth.store)
    assert report.ok, report.problems
