"""Fixtures of the patient-space page tests: the login tests' live home (SoftHSM, SQLite, the
status server, the broker and patient apps built without an Authority), professionals with
broker tokens, enrolled and activated patients, a Flask test client per client address, and
headless Chromium through Playwright (Debian's /usr/bin/chromium; no ``playwright install``)."""

from __future__ import annotations

import datetime as dt
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from cps_login import totp
from pki import ids
from tests.login.conftest import Env, env, foreign, login_body  # noqa: F401 - fixtures

CHROMIUM = Path(os.environ.get("CPS_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-dev-shm-usage"]
PASSWORD = "correct horse battery staple"
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
CSRF_RE = re.compile(r'name="csrf" value="([^"]+)"')


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "browser: drives headless Chromium (Playwright)")


def new_ins(birth: dt.date, sex: int = 2) -> str:
    """A well-formed INS (NIR + key) unique to this run."""
    nir = f"{sex}{birth.year % 100:02d}{birth.month:02d}75{secrets.randbelow(10**6):06d}"
    return nir + ids.ins_key(nir)


def totp_now(secret: str) -> str:
    return totp.totp(secret, time.time())


@dataclass
class Patient:
    ins: str
    name: str
    secret: str
    last_code: str = ""

    def code(self) -> str:
        """A TOTP code never used before (sign-in refuses a replayed step)."""
        now = time.time()
        for offset in (0, 30):          # within the ±1 step window the server accepts
            c = totp.totp(self.secret, now + offset)
            if c != self.last_code:
                self.last_code = c
                return c
        raise AssertionError("no fresh TOTP code")


@dataclass
class World:
    env: Env
    tokens: dict[str, str] = field(default_factory=dict)

    def token(self, name: str, profession: int = 10) -> str:
        """A broker access token for software card ``name`` (fresh: tokens live 120 s)."""
        card = self.env.cards.get(name) or self.env.new_card(name, profession)
        self.env.wait_ocsp(card.serial, "good")
        _, ch = self.env.post("/login/challenge")
        status, body = self.env.post("/login", login_body(card.key, card.auth, ch["challenge"],
                                                          self.env.base))
        assert status == 200, body
        return str(body["access_token"])

    def api(self, token: str, method: str, path: str, body: Any = None
            ) -> tuple[int, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {token}"}
        if method == "GET":
            return self.env.get(path, headers)
        return self.env.post(path, body, headers)

    def enrol(self, token: str, given: str, birth: dt.date, reps: tuple[str, ...] = (),
              surname: str = "Martin") -> Patient:
        ins = new_ins(birth)
        status, body = self.api(token, "POST", "/api/patients", {
            "ins": ins, "given_name": given, "surname": surname,
            "birth_date": birth.isoformat(), "representatives": list(reps)})
        assert status == 201, body
        status, act = self.env.post("/patient/activate", {
            "ins": ins, "activation_code": body["activation_code"], "password": PASSWORD})
        assert status == 200, act
        return Patient(ins, f"{given} {surname}", act["totp_secret"])

    def document(self, token: str, ins: str, title: str, category: str = "report",
                 **extra: Any) -> int:
        status, body = self.api(token, "POST", f"/api/patients/{ins}/documents",
                                {"category": category, "title": title,
                                 "content": "…", **extra})
        assert status == 201, body
        return int(body["id"])


@pytest.fixture(scope="module")
def world(env: Env) -> World:  # noqa: F811
    return World(env)


def csrf_of(html: str) -> str:
    match = CSRF_RE.search(html)
    assert match, "no CSRF field in the page"
    return match.group(1)


class Browserless:
    """The Flask test client as one browser at one client address (own rate-limit key)."""

    def __init__(self, env: Env) -> None:  # noqa: F811
        self.client: FlaskClient = env.patient_app.test_client()
        self.addr = f"10.{secrets.randbelow(250)}.{secrets.randbelow(250)}.{secrets.randbelow(250)}"

    def get(self, path: str, **kw: Any) -> Any:
        return self.client.get(path, environ_base={"REMOTE_ADDR": self.addr}, **kw)

    def post(self, path: str, data: dict[str, str], **kw: Any) -> Any:
        return self.client.post(path, data=data, environ_base={"REMOTE_ADDR": self.addr}, **kw)

    def csrf(self, path: str = "/espace/signin") -> str:
        return csrf_of(self.get(path).get_data(as_text=True))

    def sign_in(self, patient: Patient) -> Any:
        return self.post("/espace/signin", {"csrf": self.csrf(), "ins": patient.ins,
                                            "password": PASSWORD, "totp": patient.code()})


@pytest.fixture
def browserless(env: Env) -> Browserless:  # noqa: F811
    return Browserless(env)


# --- Chromium -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="playwright (dev extra) drives the browser test")
    if not CHROMIUM.exists() and shutil.which("chromium") is None:
        pytest.skip("chromium not installed (apt-get install chromium)")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS,
                                     timeout=120_000)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(chromium: Any, env: Env) -> Iterator[Any]:  # noqa: F811
    context = chromium.new_context(base_url=env.base, locale="fr-FR",
                                   viewport={"width": 1100, "height": 900})
    context.set_default_timeout(60_000)
    pg = context.new_page()
    try:
        yield pg
    finally:
        context.close()


def shoot(page: Any, name: str) -> None:
    """Save a full-page screenshot to docs/screenshots when CPS_SCREENSHOTS=1."""
    if os.environ.get("CPS_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
