"""The whole story with parts nobody here wrote: headless Chromium, a relying service on
requests-oauthlib + PyJWT, the broker's OpenID Connect provider, ``cps-login agent`` and
``cps-login approve`` as subprocesses, the software CPS card in vpcd's reader through the real
pcscd (run these under ``flock /tmp/pcscd.lock``).

1. Browser: relying service → authorization page → the agent (PIN, card signature through
   pcscd) → code → tokens → the relying service's page greets the professional by name.
2. Back channel (CIBA): the service starts a login, ``cps-login approve`` shows the binding
   message and approves with card + PIN, the service's poll gets the tokens, once.
3. A card revoked while a back-channel login waits: ``approve`` is refused at its card login,
   and the service's poll stays pending.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
from cryptography import x509
from werkzeug.serving import make_server

from cps_login.oidc.clients import register
from cps_login.web import create_broker_app, services_of
from pki import ids, situations
from pki.ca import lifecycle
from pki.ca.authority import IssueRequest
from pki.cards.card import HolderData
from pki.cards.pcsc import PcscCard, wait_for_card
from pki.cards.personalise import personalise
from pki.cards.sim import SimulatedCard
from pki.http.server import HttpServer
from tests.login.conftest import Env
from tests.oidc.conftest import OffsetClock
from tests.oidc_browser.rp import create_rp
from tests.servers import free_port, run_server

pytestmark = [pytest.mark.pcscd, pytest.mark.browser,
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]

READER = "Virtual PCD 00 00"
PIN = "4321"
CLI = str(Path(sys.executable).with_name("cps-login"))
SAMU = ids.luhn_complete("13000011")
CIBA_GRANT = "urn:openid:params:grant-type:ciba"


@dataclass
class Broker:
    issuer: str
    agent_port: int
    clock: OffsetClock
    env: Env

    def discovery(self) -> dict[str, Any]:
        return dict(requests.get(self.issuer + "/.well-known/openid-configuration",
                                 timeout=10).json())


@pytest.fixture(scope="module")
def broker(env: Env) -> Iterator[Broker]:
    port, agent_port = free_port(), free_port()
    issuer = f"http://127.0.0.1:{port}"
    clock = OffsetClock()
    config = replace(env.config, issuer=issuer, extra={
        **env.config.extra, "agent_url": f"http://127.0.0.1:{agent_port}/authorize"})
    app = create_broker_app(config, clock=clock)
    running = run_server(HttpServer([], app), port)
    try:
        yield Broker(issuer, agent_port, clock, env)
    finally:
        running.close()
        services_of(app).close()


@dataclass
class Card:
    rpps: str
    serial: str
    pin_file: Path

    @property
    def national_id(self) -> str:
        return "8" + self.rpps


@pytest.fixture
def card(env: Env, pcscd: object, tmp_path: Path) -> Iterator[Card]:
    """A CPS card personalised through pcscd (keys made on the card: product category card),
    for a physician with one exercise situation, the SAMU 13."""
    rpps = env.new_card(f"Nina{time.monotonic_ns()}").rpps   # the directory entry
    with env.auth.store.session() as session:
        from pki.store.models import Professional

        pro = session.query(Professional).filter_by(rpps=rpps).one()
        pro.given_name = "Nina"
    situations.add_situation(env.auth.store, situations.situation_entry(
        rpps, structure_type="FINESS", structure_number=SAMU, name="SAMU 13", profession=10,
        emergency_centre=True))
    sim = SimulatedCard(tmp_path / "card.json")
    sim.insert()
    wait_for_card(READER, present=True)
    with PcscCard.open(READER) as pc:
        result = personalise(pc, HolderData(rpps, "Nina", "Test", 10, "Médecin"),
                             lambda usage, key: env.auth.issue(IssueRequest(
                                 profile=usage, public_key=key, rpps=rpps,  # type: ignore[arg-type]
                                 key_storage="card")).der, PIN)
    cert: x509.Certificate = result.certificates["auth"]
    env.extra_certs.append(cert)
    serial = f"{cert.serial_number:X}"
    env.wait_ocsp(serial, "good")
    pin_file = tmp_path / "pin"
    pin_file.write_text(PIN)
    os.chmod(pin_file, 0o600)
    try:
        yield Card(rpps, serial, pin_file)
    finally:
        sim.remove()
        wait_for_card(READER, present=False)


@pytest.fixture
def agent(broker: Broker, card: Card) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen([CLI, "agent", "--port", str(broker.agent_port), "--broker",
                             broker.issuer, "--reader", READER, "--pin-file",
                             str(card.pin_file)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    line = proc.stderr.readline()
    assert "listening on http://127.0.0.1:" in line, line
    try:
        yield proc
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def relying_service(broker: Broker) -> Iterator[str]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    client = register(broker.env.auth.store, name="Messagerie sécurisée",
                      redirect_uris=[base + "/cb"])
    app = create_rp(broker.issuer, client.client_id, str(client.client_secret), base)
    server = make_server("127.0.0.1", port, app, threaded=True)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        yield base
    finally:
        server.shutdown()


def test_browser_card_login_through_the_agent(broker: Broker, card: Card, agent: Any,
                                              relying_service: str, chromium: Any) -> None:
    context = chromium.new_context(locale="fr-FR")
    context.set_default_timeout(60_000)
    page = context.new_page()
    try:
        page.goto(relying_service + "/")
        assert page.url.startswith(broker.issuer + "/oidc/authorize?")
        link = page.locator("#agent")
        assert link.get_attribute("href").startswith(
            f"http://127.0.0.1:{broker.agent_port}/authorize?broker=")
        link.click()
        page.wait_for_url(relying_service + "/cb*")
        assert page.locator("#name").inner_text() == "Bonjour Nina Test"
        assert page.locator("#sub").inner_text() == card.national_id
        assert page.locator("#acr").inner_text() == "eidas3"     # card + PIN
        assert page.locator("#org").inner_text() == "SAMU 13"
    finally:
        context.close()


def _start_ciba(broker: Broker, card: Card, message: str) -> tuple[str, str, str]:
    client = register(broker.env.auth.store, name="Logiciel de cabinet", redirect_uris=[],
                      ciba=True)
    secret = str(client.client_secret)
    meta = broker.discovery()
    started = requests.post(meta["backchannel_authentication_endpoint"],
                            data={"scope": "openid", "login_hint": card.national_id,
                                  "binding_message": message},
                            auth=(client.client_id, secret), timeout=10)
    assert started.status_code == 200, started.text
    return client.client_id, secret, str(started.json()["auth_req_id"])


def _poll(broker: Broker, client_id: str, secret: str, auth_req_id: str) -> requests.Response:
    broker.clock.advance(10)           # past the polling interval: no slow_down
    return requests.post(broker.discovery()["token_endpoint"],
                         data={"grant_type": CIBA_GRANT, "auth_req_id": auth_req_id},
                         auth=(client_id, secret), timeout=10)


def _approve(broker: Broker, card: Card, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, "approve", "--broker", broker.issuer, "--reader", READER,
                           "--pin-file", str(card.pin_file), *extra],
                          capture_output=True, text=True, timeout=120, check=False)


def test_ciba_approved_with_cps_login_approve(broker: Broker, card: Card) -> None:
    client_id, secret, auth_req_id = _start_ciba(broker, card, "Ordonnance 4711")
    assert _poll(broker, client_id, secret, auth_req_id).json()["error"] == \
        "authorization_pending"
    proc = _approve(broker, card, "--yes")
    assert proc.returncode == 0, proc.stderr
    assert "Ordonnance 4711" in proc.stderr and "Logiciel de cabinet" in proc.stderr
    assert f"approved {auth_req_id}" in proc.stdout
    tokens = _poll(broker, client_id, secret, auth_req_id)
    assert tokens.status_code == 200, tokens.text
    id_token = tokens.json()["id_token"]
    key = jwt.PyJWKClient(broker.discovery()["jwks_uri"]).get_signing_key_from_jwt(id_token).key
    claims = jwt.decode(id_token, key, algorithms=["ES256"], audience=client_id,
                        issuer=broker.issuer,     # the broker's clock was moved forward
                        leeway=broker.clock.offset.total_seconds() + 5)
    assert claims["sub"] == card.national_id
    replay = _poll(broker, client_id, secret, auth_req_id)
    assert replay.status_code == 400 and replay.json()["error"] in ("invalid_grant",
                                                                   "expired_token")
    # Nothing left to approve.
    again = _approve(broker, card, "--yes")
    assert again.returncode == 0 and "no pending login" in again.stdout
    # Denied: the service's poll says access_denied.
    client_id, secret, auth_req_id = _start_ciba(broker, card, "Virement 42")
    denied = _approve(broker, card, "--deny", "--json")
    assert denied.returncode == 0, denied.stderr
    assert [(d["auth_req_id"], d["status"]) for d in json.loads(denied.stdout)] == [
        (auth_req_id, "denied")]
    assert _poll(broker, client_id, secret, auth_req_id).json()["error"] == "access_denied"
    # No terminal to ask on, and neither --yes nor --deny: refused before the card is used.
    asked = subprocess.run([CLI, "approve", "--broker", broker.issuer, "--reader", READER],
                           capture_output=True, text=True, stdin=subprocess.DEVNULL,
                           timeout=60, check=False)
    assert asked.returncode == 2 and "give --yes or --deny" in asked.stderr


def test_revoked_card_cannot_approve(broker: Broker, card: Card) -> None:
    client_id, secret, auth_req_id = _start_ciba(broker, card, "Code 0815")
    lifecycle.revoke(broker.env.auth, card.serial, "keyCompromise")
    broker.env.wait_ocsp(card.serial, "revoked")
    proc = _approve(broker, card, "--yes")
    assert proc.returncode != 0
    assert proc.stderr.startswith("error: ") and "revoked" in proc.stderr
    assert _poll(broker, client_id, secret, auth_req_id).json()["error"] == \
        "authorization_pending"


def test_cps_login_names_the_issuer_it_should_have_used(broker: Broker, card: Card) -> None:
    other = broker.issuer.replace("127.0.0.1", "localhost")
    proc = subprocess.run([CLI, "login", "--broker", other, "--reader", READER, "--pin-file",
                           str(card.pin_file)], capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode != 0
    assert "wrong_issuer" in proc.stderr and other in proc.stderr
    assert broker.issuer in proc.stderr
