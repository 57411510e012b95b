"""The new pages in headless Chromium without a card reader (in-process software cards for the
professional): accessibility basics on each page, keyboard upload form, English, the French
date fields. No pcscd here."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import pytest

from tests.login.conftest import Env, env  # noqa: F401 - fixture
from tests.pages.conftest import World, chromium, page, world  # noqa: F401 - fixtures
from tests.pages.test_browser import A11Y_JS, sign_in

pytestmark = [pytest.mark.browser, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

PAGES = ("documents", "health", "messages", "shares", "controls", "history")


def test_accessibility_basics_on_the_new_pages(world: World, page: Any) -> None:  # noqa: F811
    token = world.token("Accessible")
    patient = world.enrol(token, "Ada", dt.date(1990, 12, 10))
    world.document(token, patient.ins, "Compte rendu", "report")
    status, _ = world.api(token, "POST", f"/api/patients/{patient.ins}/messages",
                          {"subject": "Bonjour", "body": "Un message"})
    assert status == 201
    sign_in(page, patient)
    for path in PAGES:
        page.goto(f"/espace/records/{patient.ins}/{path}")
        assert page.evaluate(A11Y_JS) == [], path
        current = page.locator("nav.main-nav a[aria-current='page']")
        assert current.count() == 1, path
    # a professional's document read in the page
    page.goto(f"/espace/records/{patient.ins}/documents")
    page.get_by_role("link", name="Compte rendu").click()
    assert page.get_by_role("heading", level=1).inner_text() == "Compte rendu"
    assert page.get_by_text("Cette lecture est enregistrée").is_visible()
    # the date fields: dd/mm/yyyy on a French page, whatever the browser's own locale
    page.goto(f"/espace/records/{patient.ins}/health")
    assert page.locator("input[name=date]").first.get_attribute("placeholder") == "jj/mm/aaaa"
    assert re.fullmatch(r"\d{2}/\d{2}/\d{4}",
                        page.locator("#vaccine-date").input_value() or "")


def test_english_pages_and_date_fields(world: World, chromium: Any, env: Env  # noqa: F811
                                       ) -> None:
    token = world.token("English")
    patient = world.enrol(token, "Eve", dt.date(1970, 6, 6))
    context = chromium.new_context(base_url=env.base, locale="en-US",
                                   viewport={"width": 1100, "height": 900})
    context.set_default_timeout(60_000)
    pg = context.new_page()
    try:
        pg.goto("/espace/signin")          # an en-US browser gets the English page
        assert pg.locator("html").get_attribute("lang") == "en"
        pg.get_by_label(re.compile("National health identifier")).fill(patient.ins)
        pg.get_by_label("Password").fill("correct horse battery staple")
        pg.get_by_label(re.compile("One-time code")).fill(patient.code())
        pg.get_by_role("button", name="Sign in").click()
        pg.wait_for_url(re.compile(r"/history$"))
        pg.get_by_role("link", name="My health data").click()
        assert pg.get_by_role("heading", level=1).inner_text() == "My health data"
        assert pg.locator("#measure-date").get_attribute("placeholder") == "yyyy-mm-dd"
        pg.get_by_label("Measure", exact=True).select_option("weight")
        pg.get_by_label("Value", exact=True).fill("612")
        pg.get_by_role("button", name="Add the measure").click()
        alert = pg.get_by_role("alert")
        assert "Refused, nothing was saved" in alert.inner_text()
        assert "outside the plausible range" in alert.inner_text()
        for link, heading in (("Messages", "Secure messages"), ("Sharing", "Share my profile"),
                              ("Documents", "Documents")):
            pg.get_by_role("link", name=link, exact=True).click()
            assert pg.get_by_role("heading", level=1).inner_text() == heading
    finally:
        context.close()
