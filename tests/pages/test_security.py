"""The pages' defences, through Flask's test client on the live home: CSRF, another patient's
record, guessed document ids (refused without leaking, and audited), cookies, headers, the
sign-in answer for unknown and wrong credentials, the rate limit, the session secret file."""

from __future__ import annotations

import datetime as dt
import json
import re
import statistics
import time
from dataclasses import dataclass

import pytest
from sqlalchemy import select

from pki import audit
from pki.store.models import AuditRecord
from pki.store.patient_models import AccessEvent
from tests.pages.conftest import PASSWORD, Browserless, Patient, World, csrf_of, new_ins

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@dataclass(frozen=True)
class Cast:
    ada: Patient
    bob: Patient
    ada_doc: int
    bob_doc: int
    ada_hidden: int
    token: str


@pytest.fixture(scope="module")
def cast(world: World) -> Cast:
    token = world.token("dr-pages")
    ada = world.enrol(token, "Ada", dt.date(1970, 1, 1))
    bob = world.enrol(token, "Bob", dt.date(1975, 2, 2), surname="Durand")
    ada_doc = world.document(token, ada.ins, "Compte rendu Ada")
    bob_doc = world.document(token, bob.ins, "Compte rendu Bob")
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(days=30)).isoformat()
    ada_hidden = world.document(token, ada.ins, "Résultats à annoncer", "lab",
                                hidden_from_patient_until=later)
    return Cast(ada, bob, ada_doc, bob_doc, ada_hidden, token)


@pytest.fixture(scope="module")
def ada_in(world: World, cast: Cast) -> Browserless:
    """One browser signed in as Ada for the module (a TOTP step signs in only once)."""
    client = Browserless(world.env)
    answer = client.sign_in(cast.ada)
    assert answer.status_code == 303
    assert answer.headers["Location"].endswith(f"/espace/records/{cast.ada.ins}/history")
    return client


def audit_rows(world: World, action: str, since: int) -> list[AuditRecord]:
    with world.env.auth.store.read() as session:
        return list(session.execute(select(AuditRecord).where(
            AuditRecord.action == action, AuditRecord.seq > since)
            .order_by(AuditRecord.seq)).scalars())


def head(world: World) -> int:
    with world.env.auth.store.read() as session:
        return int(session.execute(select(AuditRecord.seq).order_by(
            AuditRecord.seq.desc()).limit(1)).scalar_one())


def chain_ok(world: World) -> None:
    report = audit.verify(world.env.auth.store)
    assert not report.problems, report.problems


def test_signin_then_history_page(ada_in: Browserless, cast: Cast) -> None:
    ada = cast.ada
    page = ada_in.get(f"/espace/records/{ada.ins}/history")
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and '<html lang="fr">' in html
    assert "Historique des accès" in html and "Compte rendu Ada" in html
    assert "Test" in html    # the professional's surname


def test_cookie_and_security_headers(browserless: Browserless) -> None:
    answer = browserless.get("/espace/signin")
    cookie = answer.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie            # plain http on loopback ("auto")
    csp = answer.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp
    assert answer.headers["X-Frame-Options"] == "DENY"
    assert answer.headers["Cache-Control"] == "no-store"
    html = answer.get_data(as_text=True)
    assert "<script" not in html and " style=" not in html      # nothing CSP would block
    assert re.search(r"\son[a-z]+=", html) is None                # no inline handlers


def test_secure_cookie_over_tls(browserless: Browserless) -> None:
    answer = browserless.client.get("/espace/signin", base_url="https://localhost")
    cookie = answer.headers["Set-Cookie"]
    assert cookie.startswith("__Host-cps-espace=") and "Secure" in cookie
    assert "Strict-Transport-Security" in answer.headers


def test_forged_csrf_refused_and_audited(world: World, browserless: Browserless,
                                         ada_in: Browserless, cast: Cast) -> None:
    ada = cast.ada
    since = head(world)
    # on sign-in: a token that is not this browser session's
    other = Browserless(world.env)
    answer = browserless.post("/espace/signin", {"csrf": other.csrf(), "ins": ada.ins,
                                                 "password": PASSWORD, "totp": "000000"})
    assert answer.status_code == 403
    # on a control, signed in: missing, forged, and another session's token
    path = f"/espace/records/{ada.ins}/controls"
    before = ada_in.get(path).get_data(as_text=True)
    for forged in ("", "x" * 43, other.csrf()):
        answer = ada_in.post(path, {"csrf": forged, "change": "oppose_emergency"})
        assert answer.status_code == 403
        assert "Le formulaire a expiré" in answer.get_data(as_text=True)
    assert ada_in.get(path).get_data(as_text=True).count("M&#39;opposer") == \
        before.count("M&#39;opposer")         # nothing changed
    refused = audit_rows(world, "page.refused", since)
    assert [json.loads(r.details)["reason"] for r in refused] == ["csrf_token"] * 4
    assert refused[0].actor == "anonymous" and refused[-1].actor == ada.ins
    chain_ok(world)


def test_other_patients_record_refused_and_audited(world: World, ada_in: Browserless,
                                                   cast: Cast) -> None:
    ada, bob = cast.ada, cast.bob
    browserless = ada_in
    since = head(world)
    nobody = new_ins(dt.date(1990, 3, 3))
    answers = []
    for url in (f"/espace/records/{bob.ins}/history", f"/espace/records/{nobody}/history",
                f"/espace/records/{bob.ins}/controls"):
        answer = browserless.get(url)
        assert answer.status_code == 403
        answers.append(answer.get_data(as_text=True).replace(bob.ins, "?")
                       .replace(nobody, "?"))
    assert answers[0] == answers[1]          # an existing and a made-up INS look the same
    assert "Bob" not in answers[0] and "Durand" not in answers[0]
    csrf = csrf_of(browserless.get(f"/espace/records/{ada.ins}/controls").get_data(as_text=True))
    answer = browserless.post(f"/espace/records/{bob.ins}/controls",
                              {"csrf": csrf, "change": "oppose_emergency"})
    assert answer.status_code == 403
    # the service recorded the refusals on Bob's record; the made-up INS is in the chain
    with world.env.auth.store.read() as session:
        events = list(session.execute(select(AccessEvent).where(
            AccessEvent.actor_id == ada.ins, AccessEvent.granted.is_(False))).scalars())
    assert len([e for e in events if e.rule == "not_representative"]) >= 3
    refused = audit_rows(world, "record.refused", since)
    assert {r.target for r in refused} == {bob.ins} and all(r.actor == ada.ins for r in refused)
    page_refused = audit_rows(world, "page.refused", since)
    assert [(r.target, json.loads(r.details)["reason"]) for r in page_refused] == \
        [(nobody, "unknown_record")]
    chain_ok(world)


def test_guessed_document_ids_refused_and_audited(world: World, ada_in: Browserless,
                                                  cast: Cast) -> None:
    ada = cast.ada
    browserless = ada_in
    path = f"/espace/records/{ada.ins}/controls"
    html = browserless.get(path).get_data(as_text=True)
    assert "Résultats à annoncer" not in html       # hidden from the patient until announced
    csrf = csrf_of(html)
    since = head(world)
    bodies = []
    for guess in (cast.bob_doc, cast.ada_hidden, 999_999, "abc"):
        answer = browserless.post(path, {"csrf": csrf, "change": "hide_document",
                                         "target": str(guess)})
        assert answer.status_code == 404
        bodies.append(answer.get_data(as_text=True))
    assert len(set(bodies)) == 1 and "Compte rendu Bob" not in bodies[0]
    refused = audit_rows(world, "page.refused", since)
    assert [json.loads(r.details)["document"] for r in refused] == \
        [str(cast.bob_doc), str(cast.ada_hidden), "999999", "abc"]
    assert all(json.loads(r.details)["reason"] == "unknown_document" for r in refused)
    # nothing was hidden: the other record's document is untouched
    status, body = world.api(cast.token, "GET",
                             f"/api/patients/{cast.bob.ins}/documents/{cast.bob_doc}")
    assert status == 200 and body["hidden_by_patient"] is False
    # and Ada's own document can be hidden and shown
    answer = browserless.post(path, {"csrf": csrf, "change": "hide_document",
                                     "target": str(cast.ada_doc)})
    assert answer.status_code == 303 and answer.headers["Location"].endswith("done=hide_document")
    assert "Masqué" in browserless.get(path).get_data(as_text=True)
    chain_ok(world)


def test_signin_same_answer_for_unknown_and_wrong(world: World,
                                                  cast: Cast) -> None:
    ada = cast.ada
    unknown = new_ins(dt.date(1960, 6, 6))
    timings: dict[str, list[float]] = {"unknown": [], "wrong": []}
    pages: dict[str, set[str]] = {"unknown": set(), "wrong": set()}
    for _ in range(3):
        for kind, ins in (("unknown", unknown), ("wrong", ada.ins)):
            client = Browserless(world.env)     # own client address: no rate limit here
            csrf = client.csrf()
            started = time.perf_counter()
            answer = client.post("/espace/signin", {"csrf": csrf, "ins": ins,
                                                    "password": "not the password",
                                                    "totp": "123456"})
            timings[kind].append(time.perf_counter() - started)
            assert answer.status_code == 401
            pages[kind].add(answer.get_data(as_text=True).replace(csrf, "").replace(ins, ""))
    assert pages["unknown"] == pages["wrong"] and len(pages["unknown"]) == 1
    # the unknown INS still pays for an argon2 verification (generous bound: loaded CI)
    assert statistics.median(timings["unknown"]) > 0.3 * statistics.median(timings["wrong"])


def test_signin_rate_limited(world: World, cast: Cast) -> None:
    """Failures from one client back that client off (the page says so) and no one else:
    the patient from their own address still signs in (issue 13, item 10)."""
    bob = cast.bob
    client = Browserless(world.env)
    limit = world.env.config.signin_max_attempts
    statuses = []
    for _ in range(limit):
        statuses.append(client.post("/espace/signin", {
            "csrf": client.csrf(), "ins": bob.ins, "password": "x", "totp": "000000"}
        ).status_code)
    assert statuses == [401] * limit
    answer = client.post("/espace/signin", {"csrf": client.csrf(), "ins": bob.ins,
                                            "password": PASSWORD, "totp": bob.code()})
    assert answer.status_code == 429 and int(answer.headers["Retry-After"]) > 0
    assert "Trop de tentatives" in answer.get_data(as_text=True)
    assert Browserless(world.env).sign_in(bob).status_code == 303


def test_session_secret_file_is_private(world: World) -> None:
    path = world.env.home / "secrets" / "pages-session.key"
    assert path.exists() and path.stat().st_mode & 0o777 == 0o600
    assert len(bytes.fromhex(path.read_text().strip())) >= 32


def test_signed_out_pages_redirect_and_signout_clears(world: World, browserless: Browserless,
                                                      cast: Cast) -> None:
    ada = world.enrol(cast.token, "Carole", dt.date(1988, 8, 8))
    answer = browserless.get(f"/espace/records/{ada.ins}/history")
    assert answer.status_code == 303 and "/espace/signin" in answer.headers["Location"]
    assert browserless.sign_in(ada).status_code == 303
    csrf = csrf_of(browserless.get(f"/espace/records/{ada.ins}/history").get_data(as_text=True))
    assert browserless.post("/espace/signout", {"csrf": csrf}).status_code == 303
    assert browserless.get(f"/espace/records/{ada.ins}/history").status_code == 303


def test_language_from_accept_language_and_switch(browserless: Browserless) -> None:
    html = browserless.get("/espace/signin", headers={"Accept-Language": "en-GB,en;q=0.8"}
                           ).get_data(as_text=True)
    assert '<html lang="en">' in html and "Sign in" in html
    html = browserless.get("/espace/signin", headers={"Accept-Language": "de"}
                           ).get_data(as_text=True)
    assert '<html lang="fr">' in html                      # French by default
    answer = browserless.get("/espace/lang/en?next=/espace/signin")
    assert answer.status_code == 303 and answer.headers["Location"].endswith("/espace/signin")
    assert '<html lang="en">' in browserless.get("/espace/signin").get_data(as_text=True)
    evil = browserless.get("/espace/lang/fr?next=//evil.example/")
    assert evil.headers["Location"].endswith("/espace/")   # no open redirect
