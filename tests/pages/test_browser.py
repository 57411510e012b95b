"""The patient space in headless Chromium (Playwright, Debian's /usr/bin/chromium).

The story: a physician logs in with a CPS card — the software card in vpcd's virtual reader,
through the real pcscd, with ``cps-login login`` — opens a patient's record and reads a
document; an emergency physician breaks the glass. The patient signs in through the page (with
JavaScript off), sees both accesses in the timeline (the emergency one highlighted), blocks the
physician, and the physician's next card login and read are refused — the refusal shows in the
timeline. Then: keyboard-only sign-in, basic accessibility checks, a parent on a child's
profile, English. ``CPS_SCREENSHOTS=1`` saves the pages to docs/screenshots.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from pki.ca.authority import IssueRequest
from pki.cards.card import HolderData
from pki.cards.pcsc import PcscCard, wait_for_card
from pki.cards.personalise import personalise
from pki.cards.sim import SimulatedCard
from tests.cards.conftest import pcscd  # noqa: F401 - fixture
from tests.login.conftest import Env
from tests.pages.conftest import PASSWORD, Patient, World, shoot

pytestmark = [pytest.mark.browser, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

READER = "Virtual PCD 00 00"
PIN = "4321"
CLI = str(Path(sys.executable).with_name("cps-login"))

A11Y_JS = """() => {
  const problems = [];
  if (!document.documentElement.lang) problems.push('html without lang');
  if (document.querySelectorAll('main').length !== 1) problems.push('not one <main>');
  if (!document.querySelector('header')) problems.push('no <header>');
  if (!document.querySelector('h1')) problems.push('no <h1>');
  for (const el of document.querySelectorAll('input, select, textarea')) {
    if (el.type === 'hidden') continue;
    const labelled = (el.id && document.querySelector(`label[for="${el.id}"]`))
      || el.closest('label') || el.getAttribute('aria-label');
    if (!labelled) problems.push('unlabelled ' + el.outerHTML);
  }
  for (const el of document.querySelectorAll('button, a')) {
    if (!el.textContent.trim() && !el.getAttribute('aria-label'))
      problems.push('nameless ' + el.outerHTML);
  }
  const ids = [...document.querySelectorAll('[id]')].map(e => e.id);
  if (new Set(ids).size !== ids.length) problems.push('duplicate ids');
  return problems;
}"""


@pytest.fixture
def card(env: Env, pcscd: object, tmp_path: Path) -> Iterator[tuple[str, Path]]:  # noqa: F811
    """A CPS card personalised through pcscd for "Carla Test"; yields (national id, PIN file)."""
    rpps = env.new_card("Carla").rpps      # the directory entry (its software keys unused)
    sim = SimulatedCard(tmp_path / "card.json")
    sim.insert()
    wait_for_card(READER, present=True)
    with PcscCard.open(READER) as pc:
        result = personalise(pc, HolderData(rpps, "Carla", "Test", 10, "Médecin"),
                             lambda usage, key: env.auth.issue(IssueRequest(
                                 profile=usage, public_key=key, rpps=rpps)).der,  # type: ignore[arg-type]
                             PIN)
    cert: x509.Certificate = result.certificates["auth"]
    env.extra_certs.append(cert)
    env.wait_ocsp(f"{cert.serial_number:X}", "good")
    pin_file = tmp_path / "pin"
    pin_file.write_text(PIN)
    try:
        yield "8" + rpps, pin_file
    finally:
        sim.remove()
        wait_for_card(READER, present=False)


def card_login(env: Env, pin_file: Path) -> str:
    """``cps-login login`` with the card in the virtual reader: the access token."""
    proc = subprocess.run([CLI, "login", "--broker", env.base, "--reader", READER,
                           "--pin-file", str(pin_file), "--json"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return str(json.loads(proc.stdout)["access_token"])


def sign_in(page: Any, patient: Patient, shot: str | None = None) -> None:
    page.goto("/espace/")
    assert page.url.endswith("/espace/signin")
    if shot:
        shoot(page, shot)
    page.get_by_label(re.compile("INS")).fill(patient.ins)
    page.get_by_label("Mot de passe").fill(PASSWORD)
    page.get_by_label(re.compile("Code à usage unique")).fill(patient.code())
    page.get_by_role("button", name="Se connecter").click()
    page.wait_for_url(re.compile(r"/espace/records/\d{15}/history"))


def entries(page: Any, text: str) -> Any:
    return page.locator("ol.timeline > li", has_text=text)


def test_patient_blocks_a_card_professional_and_sees_the_refusal(
        env: Env, world: World, card: tuple[str, Path], chromium: Any) -> None:
    carla_id, pin_file = card
    token = card_login(env, pin_file)
    louise = world.enrol(token, "Louise", dt.date(1985, 5, 12), surname="Bernard")
    report = world.document(token, louise.ins, "Compte rendu de consultation du 23/11")
    world.document(token, louise.ins, "Ordonnance", "prescription")
    assert world.api(token, "GET", f"/api/patients/{louise.ins}/documents/{report}")[0] == 200
    er = world.token("Urgentiste")
    status, body = world.api(er, "GET", f"/api/patients/{louise.ins}/documents/{report}"
                             "?mode=break_glass&reason=Patiente+inconsciente+aux+urgences")
    assert status == 200 and body["access_mode"] == "break_glass"

    # JavaScript off: every page is plain HTML forms
    context = chromium.new_context(base_url=env.base, locale="fr-FR", java_script_enabled=False,
                                   viewport={"width": 1100, "height": 900})
    context.set_default_timeout(60_000)
    page = context.new_page()
    try:
        sign_in(page, louise, shot="signin")
        assert page.locator("html").get_attribute("lang") == "fr"
        carla = entries(page, "Carla Test")
        assert carla.count() >= 2          # listed the record (enrol/write/read), read
        read = carla.filter(has_text="Compte rendu de consultation du 23/11").first
        assert "Médecin" in read.inner_text() and "Accès normal" in read.inner_text()
        emergency = page.locator("ol.timeline > li.emergency")
        assert emergency.count() == 1
        text = emergency.inner_text()
        assert "Urgentiste" in text and "bris de glace" in text
        assert "Patiente inconsciente aux urgences" in text
        assert page.get_by_role("status").filter(has_text="accès en urgence").count() == 1
        shoot(page, "history-emergency")

        # filters: by professional, by period
        page.get_by_label("Professionnel").select_option(label="Urgentiste Test")
        page.get_by_role("button", name="Appliquer").click()
        assert entries(page, "Carla Test").count() == 0 and entries(page, "Urgentiste").count()
        tomorrow = (dt.date.today() + dt.timedelta(days=2)).isoformat()
        page.goto(f"/espace/records/{louise.ins}/history?from={tomorrow}")
        assert page.get_by_text("Aucun accès pour ces critères.").is_visible()
        page.goto(f"/espace/records/{louise.ins}/history")

        # block the card professional from the timeline
        carla.first.get_by_role("button", name=re.compile("Bloquer ce professionnel")).click()
        assert page.get_by_role("status").filter(
            has_text="Le professionnel est bloqué.").is_visible()
        assert entries(page, "Carla Test").first.get_by_text("Bloqué").is_visible()

        # the professional's next card login and read are refused...
        token = card_login(env, pin_file)
        status, body = world.api(token, "GET", f"/api/patients/{louise.ins}/documents/{report}")
        assert (status, body.get("rule")) == (403, "patient_blocked")
        # ...and the patient sees the refusal
        page.reload()
        refused = page.locator("ol.timeline > li.refused", has_text="Carla Test")
        assert refused.count() == 1
        assert "Accès refusé" in refused.inner_text()
        assert "vous avez bloqué ce professionnel" in refused.inner_text()
        shoot(page, "history-refused")

        page.get_by_role("link", name="Confidentialité").click()
        assert page.get_by_role("heading", name="Professionnels bloqués").is_visible()
        blocked = page.locator("section", has_text="Professionnels bloqués").locator(
            "ul.pros li", has_text="Carla Test")
        assert blocked.get_by_role("button", name=re.compile("Débloquer")).count() == 1
        page.get_by_role("button", name="M'opposer aux accès en urgence").click()
        assert page.get_by_text("Vous vous opposez aux accès en urgence à ce dossier.").is_visible()
        shoot(page, "controls")
        # unblock again: the physician reads again
        blocked.get_by_role("button", name=re.compile("Débloquer")).click()
        assert page.get_by_role("status").filter(has_text="débloqué").is_visible()
    finally:
        context.close()
    assert world.api(token, "GET", f"/api/patients/{louise.ins}/documents/{report}")[0] == 200
    assert carla_id.startswith("8")


def test_keyboard_only_sign_in(world: World, page: Any) -> None:
    patient = world.enrol(world.token("Clavier"), "Kim", dt.date(1992, 9, 9))
    page.goto("/espace/signin")
    order = []
    for _ in range(6):
        page.keyboard.press("Tab")
        order.append(page.evaluate(
            "() => { const e = document.activeElement;"
            " return e.id || e.getAttribute('href') || e.textContent.trim(); }"))
        if order[-1] == "ins":
            break
    assert order[0] == "#main"                       # the skip link comes first
    assert order[-1] == "ins", order
    # the focused field shows a focus ring
    outline = page.evaluate("() => getComputedStyle(document.activeElement).outlineStyle")
    assert outline not in ("", "none")
    page.keyboard.type(patient.ins)
    page.keyboard.press("Tab")
    assert page.evaluate("() => document.activeElement.id") == "password"
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Tab")
    assert page.evaluate("() => document.activeElement.id") == "totp"
    page.keyboard.type(patient.code())
    page.keyboard.press("Tab")
    assert page.evaluate("() => document.activeElement.type") == "submit"
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"/history$"))
    assert page.get_by_role("heading", level=1).inner_text() == "Historique des accès"


def test_accessibility_basics_on_every_page(world: World, page: Any) -> None:
    token = world.token("Lisible")
    patient = world.enrol(token, "Lina", dt.date(1980, 1, 1))
    world.document(token, patient.ins, "Bilan sanguin", "lab")
    page.goto("/espace/signin")
    assert page.evaluate(A11Y_JS) == []
    sign_in(page, patient)
    for path in ("history", "controls"):
        page.goto(f"/espace/records/{patient.ins}/{path}")
        assert page.evaluate(A11Y_JS) == [], path
    page.goto("/espace/profiles")
    assert page.evaluate(A11Y_JS) == []
    # landmarks
    assert page.get_by_role("navigation").count() == 2 and page.get_by_role("main").count() == 1
    # a CSP violation would leave the stylesheet unapplied: the header is styled
    assert page.evaluate("() => getComputedStyle(document.querySelector('header')).display"
                         ) == "flex"


def test_parent_switches_to_the_child_profile(world: World, page: Any) -> None:
    token = world.token("Pédiatre")
    parent = world.enrol(token, "Paul", dt.date(1980, 5, 1))
    child = world.enrol(token, "Chloé", dt.date.today().replace(year=dt.date.today().year - 9),
                        reps=(parent.ins,))
    world.document(token, child.ins, "Carnet de vaccination", "vaccination")
    world.api(token, "GET", f"/api/patients/{child.ins}/documents")
    sign_in(page, parent)
    page.get_by_role("link", name="Changer de profil").click()
    assert page.get_by_text("Enfant (représentation légale)").is_visible()
    shoot(page, "profiles")
    page.get_by_role("link", name="Ouvrir le dossier de Chloé Martin").click()
    page.wait_for_url(re.compile(child.ins + "/history"))
    assert page.get_by_text("Dossier de Chloé Martin").is_visible()
    assert page.get_by_text("profil enfant").is_visible()
    assert entries(page, "Pédiatre Test").count() >= 1
    page.get_by_role("link", name="Confidentialité").click()
    assert page.get_by_role("row", name=re.compile("Carnet de vaccination")).is_visible()
    page.goto(f"/espace/records/{child.ins}/history")
    shoot(page, "child-profile")


def test_english_from_the_language_switch(world: World, page: Any) -> None:
    token = world.token("Anglophone")
    patient = world.enrol(token, "Emma", dt.date(1975, 7, 7))
    assert world.api(token, "GET", f"/api/patients/{patient.ins}/documents")[0] == 200
    page.goto("/espace/signin")
    page.get_by_role("link", name="English").click()
    assert page.locator("html").get_attribute("lang") == "en"
    page.get_by_label(re.compile("National health identifier")).fill(patient.ins)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_label(re.compile("One-time code")).fill(patient.code())
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(r"/history$"))
    assert page.get_by_role("heading", level=1).inner_text() == "Access history"
    assert entries(page, "Anglophone Test").first.get_by_text("Physician").is_visible()
