"""The patient space's journeys in headless Chromium, with the professional's CPS card login
through the real pcscd (the software card in vpcd's reader, ``cps-login login``): run under
``flock /tmp/pcscd.lock``. A physician of the care team opens a conversation, the patient
replies in the page, the physician reads the reply; a professional outside the care team
cannot open one; the patient uploads a document and records a vaccination (French date field),
the physician reads them; the patient shares a summary for one day with another professional,
who uses it, then revokes it. ``CPS_SCREENSHOTS=1`` saves the pages to docs/screenshots."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

import pytest

from tests.cards.conftest import pcscd  # noqa: F401 - fixture
from tests.login.conftest import Env, env  # noqa: F401 - fixture
from tests.pages.conftest import World, chromium, shoot, world  # noqa: F401 - fixtures
from tests.pages.test_browser import card, card_login, sign_in  # noqa: F401 - fixture
from tests.patient_space.conftest import pdf
from tests.patient_space.test_api import raw_get

pytestmark = [pytest.mark.browser, pytest.mark.filterwarnings("ignore::DeprecationWarning")]


def test_patient_space_journeys_with_a_card_professional(
        env: Env, world: World, card: tuple[str, Path], chromium: Any,  # noqa: F811
        tmp_path: Path) -> None:
    carla_id, pin_file = card
    token = card_login(env, pin_file)                       # the card, through pcscd
    louise = world.enrol(token, "Louise", dt.date(1985, 5, 12), surname="Bernard")
    status, body = world.api(token, "POST", f"/api/patients/{louise.ins}/messages", {
        "subject": "Vos résultats d'analyse", "body": "Bonjour, vos résultats sont normaux. "
        "Pouvez-vous me dire si la fatigue persiste ?"})
    assert status == 201, body
    outsider = world.token("Externe")                        # in no care team
    status, body = world.api(outsider, "POST", f"/api/patients/{louise.ins}/messages",
                             {"subject": "Bonjour", "body": "Je ne vous connais pas"})
    assert (status, body.get("rule")) == (403, "not_care_team")

    context = chromium.new_context(base_url=env.base, locale="fr-FR", java_script_enabled=False,
                                   viewport={"width": 1100, "height": 900})
    context.set_default_timeout(60_000)
    page = context.new_page()
    try:
        sign_in(page, louise)
        # messages: read, reply
        page.get_by_role("link", name="Messagerie").click()
        assert page.get_by_role("heading", name="Vos résultats d'analyse").is_visible()
        page.get_by_label(re.compile("Votre réponse")).fill("Merci docteur, la fatigue a "
                                                            "disparu.")
        page.get_by_role("button", name=re.compile("Envoyer")).click()
        assert page.get_by_role("status").filter(has_text="Votre message est envoyé.").count()
        shoot(page, "messages")

        # documents: upload a PDF
        scan = tmp_path / "compte-rendu.pdf"
        scan.write_bytes(pdf("Compte rendu de radiologie"))
        page.get_by_role("link", name="Documents").click()
        page.get_by_label("Titre du document").fill("Compte rendu de radiologie (clinique)")
        page.get_by_label(re.compile("Fichier")).set_input_files(str(scan))
        page.get_by_role("button", name="Ajouter le document").click()
        assert page.get_by_role("status").filter(has_text="Le document est ajouté.").count()
        assert page.get_by_text("ajouté par le patient").first.is_visible()
        shoot(page, "documents")

        # health data: a vaccination with the French date field
        page.get_by_role("link", name="Mes données de santé").click()
        date = page.locator("#vaccine-date")
        assert date.get_attribute("placeholder") == "jj/mm/aaaa"
        page.get_by_label("Vaccin", exact=True).fill("Grippe saisonnière")
        date.fill("15/10/2026")
        page.get_by_role("button", name="Ajouter la vaccination").click()
        assert page.get_by_text("Grippe saisonnière").is_visible()
        assert page.get_by_text("15/10/2026").is_visible()
        shoot(page, "health")

        # the physician (card login again: tokens live two minutes) reads all of it
        token = card_login(env, pin_file)
        status, body = world.api(token, "GET", f"/api/patients/{louise.ins}/messages")
        assert status == 200
        assert body["conversations"][0]["messages"][-1]["body"].startswith("Merci docteur")
        status, body = world.api(token, "GET", f"/api/patients/{louise.ins}/uploads")
        assert status == 200 and body["uploads"][0]["written_by_patient"]
        status, media_type, data = raw_get(
            env, f"/api/patients/{louise.ins}/uploads/{body['uploads'][0]['id']}", token)
        assert (status, media_type, data) == (200, "application/pdf", scan.read_bytes())
        status, body = world.api(token, "GET", f"/api/patients/{louise.ins}/health")
        assert status == 200
        assert [(e["name"], e["date"]) for e in body["entries"]] == [
            ("Grippe saisonnière", "2026-10-15")]

        # share the summary for one day with the outsider, who uses it; then revoke
        nid = world.api(outsider, "GET", "/api/whoami")[1]["national_id"]
        page.get_by_role("link", name="Partages").click()
        page.get_by_label(re.compile("Identifiant national du professionnel")).fill(nid)
        page.get_by_label("Durée").select_option("1")
        page.get_by_role("button", name="Partager", exact=True).click()
        assert page.get_by_role("status").filter(has_text="Votre résumé est partagé.").count()
        status, body = world.api(outsider, "GET", f"/api/patients/{louise.ins}/summary")
        assert status == 200 and body["vaccinations"][0]["name"] == "Grippe saisonnière"
        page.reload()
        assert page.locator("section", has_text="Consultations du résumé").get_by_text(
            "Externe Test").count() == 1
        shoot(page, "shares")
        page.get_by_role("button", name=re.compile("Révoquer")).click()
        assert page.get_by_role("status").filter(has_text="Le partage est révoqué.").count()
        status, body = world.api(outsider, "GET", f"/api/patients/{louise.ins}/summary")
        assert (status, body.get("rule")) == (403, "not_shared")

        # the history shows the physician's reads and the outsider's refusals
        page.get_by_role("link", name="Historique des accès").click()
        assert page.locator("ol.timeline > li", has_text="a lu la messagerie").count() >= 1
        refused = page.locator("ol.timeline > li.refused", has_text="Externe Test")
        assert refused.filter(has_text="hors équipe de soins").count() >= 1
        assert refused.filter(has_text="aucun partage en cours").count() >= 1
    finally:
        context.close()
    assert carla_id.startswith("8")
