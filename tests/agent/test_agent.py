"""`cps-login agent` against hostile pages: a stand-in broker (the transaction endpoints, checking
the card signature as the broker does), a software card, raw HTTP requests as a browser or a
hostile page would send them. The real broker and Chromium: tests/oidc_browser."""

from __future__ import annotations

import base64
import datetime as dt
import http.client
import json
import os
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from flask import Flask, jsonify, request
from werkzeug.serving import make_server as make_wsgi_server

from cps_login.agent import (
    Agent,
    AgentSettings,
    allowed_brokers,
    make_server,
    normalise_broker,
    read_pin_file,
)
from cps_login.proof import login_message, verify_login_signature
from pki.cards.errors import PinIncorrect

PIN = "1234"
TX = secrets.token_urlsafe(24)


class FakeCard:
    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "810001111110")])
        now = dt.datetime.now(dt.UTC)
        self.cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                     .public_key(self.key.public_key()).serial_number(1)
                     .not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
                     .sign(self.key, hashes.SHA256()))
        self.tries = 3
        self.signing = threading.Event()     # set while sign() runs
        self.release = threading.Event()
        self.release.set()
        self.opened = 0
        self.closed = 0

    def verify_pin(self, pin: str) -> None:
        if pin != PIN:
            self.tries -= 1
            raise PinIncorrect(self.tries)

    def certificate(self, usage: str) -> x509.Certificate:
        return self.cert

    def sign(self, usage: str, data: bytes) -> bytes:
        self.signing.set()
        self.release.wait(10)
        return self.key.sign(data, ec.ECDSA(hashes.SHA256()))

    def close(self) -> None:
        self.closed += 1


@dataclass
class Broker:
    """The transaction endpoints of the broker, checking the proof like the broker does."""

    base: str = ""
    hits: list[str] = field(default_factory=list)
    proofs: list[dict[str, Any]] = field(default_factory=list)
    challenges: dict[str, bytes] = field(default_factory=dict)
    refuse: dict[str, Any] | None = None
    continue_to: str | None = None

    def app(self) -> Flask:
        app = Flask("fake-broker")

        @app.get("/oidc/tx/<tx>/challenge")
        def challenge(tx: str) -> Any:
            self.hits.append(f"challenge {tx}")
            value = secrets.token_bytes(32)
            self.challenges[tx] = value
            return jsonify({"challenge": base64.b64encode(value).decode(),
                            "broker": self.base})

        @app.post("/oidc/tx/<tx>/proof")
        def proof(tx: str) -> Any:
            body = request.get_json()
            self.hits.append(f"proof {tx}")
            self.proofs.append(body)
            if self.refuse is not None:
                return jsonify(self.refuse), 401
            cert = x509.load_der_x509_certificate(base64.b64decode(body["certificate"]))
            ok = verify_login_signature(cert.public_key(),
                                        login_message(self.challenges[tx], self.base),
                                        base64.b64decode(body["signature"]))
            if not ok:
                return jsonify({"error": "invalid_credentials"}), 401
            return jsonify({"continue": self.continue_to or f"{self.base}/oidc/tx/{tx}/continue"})

        return app


@dataclass
class Running:
    broker: Broker
    card: FakeCard
    agent: Agent
    port: int
    logs: list[str]

    def get(self, path: str, headers: dict[str, str] | None = None, method: str = "GET"
            ) -> tuple[int, dict[str, str], str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
        try:
            base = {"Host": f"127.0.0.1:{self.port}", "Sec-Fetch-Mode": "navigate",
                    "Sec-Fetch-Dest": "document", "Sec-Fetch-Site": "cross-site",
                    "Referer": self.broker.base + "/"}     # the broker page sends its origin
            conn.request(method, path, headers={**base, **(headers or {})})
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, \
                resp.read().decode()
        finally:
            conn.close()

    def authorize(self, broker: str | None = None, tx: str = TX, **headers: str
                  ) -> tuple[int, dict[str, str], str]:
        url = f"/authorize?broker={quote(broker or self.broker.base, safe='')}&tx={tx}"
        return self.get(url, headers)


@pytest.fixture
def running() -> Iterator[Running]:
    broker = Broker()
    wsgi = make_wsgi_server("127.0.0.1", 0, broker.app(), threaded=True)
    broker.base = f"http://127.0.0.1:{wsgi.server_port}"
    threading.Thread(target=wsgi.serve_forever, args=(0.05,), daemon=True).start()
    card = FakeCard()
    logs: list[str] = []

    def open_card() -> FakeCard:
        card.opened += 1
        return card

    agent = Agent(AgentSettings(brokers=frozenset({broker.base}),
                                open_card=open_card,  # type: ignore[arg-type]
                                read_pin=lambda _prompt: PIN, log=logs.append))
    server = make_server(agent, 0)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        yield Running(broker, card, agent, server.server_address[1], logs)
    finally:
        server.shutdown()
        server.server_close()
        wsgi.shutdown()


def _no_cors(headers: dict[str, str]) -> None:
    assert not [h for h in headers if h.startswith("access-control-")]


def test_card_proof_and_redirect_to_the_broker(running: Running) -> None:
    status, headers, _ = running.authorize(Referer=running.broker.base + "/oidc/authorize?x=1")
    assert status == 303
    assert headers["location"] == f"{running.broker.base}/oidc/tx/{TX}/continue"
    _no_cors(headers)
    assert running.broker.hits == [f"challenge {TX}", f"proof {TX}"]
    [body] = running.broker.proofs
    assert body["broker"] == running.broker.base
    assert PIN not in json.dumps(body)                 # the PIN never leaves the agent
    assert running.card.closed == running.card.opened == 1


def test_binds_loopback_only(running: Running) -> None:
    server = make_server(running.agent, 0)
    try:
        assert server.server_address[0] == "127.0.0.1"
    finally:
        server.server_close()


@pytest.mark.parametrize(("headers", "status"), [
    ({"Host": "evil.example:24727"}, 421),             # DNS rebinding
    ({"Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "image"}, 403),   # <img src=agent>
    ({"Sec-Fetch-Mode": "cors", "Sec-Fetch-Dest": "empty"}, 403),      # fetch() from a page
    ({"Sec-Fetch-Dest": "iframe"}, 403),
    ({"Referer": "https://evil.example/page"}, 403),
])
def test_hostile_requests_never_reach_the_card(running: Running, headers: dict[str, str],
                                               status: int) -> None:
    code, got, page = running.authorize(**headers)
    assert code == status, page
    _no_cors(got)
    assert running.card.opened == 0 and running.broker.hits == []


@pytest.mark.parametrize(("query", "status"), [
    ("broker=http%3A%2F%2Fevil.example&tx=" + TX, 403),
    ("tx=" + TX, 400),
    ("broker=x&broker=y&tx=" + TX, 400),
    ("broker=javascript%3Aalert(1)&tx=" + TX, 400),
    ("tx=" + TX + "&broker={b}&extra=1", 400),
    ("broker={b}&tx=short", 400),
    ("broker={b}&tx=" + TX + "&organisation=%3Cscript%3E", 400),
])
def test_bad_links_are_refused(running: Running, query: str, status: int) -> None:
    path = "/authorize?" + query.replace("{b}", quote(running.broker.base, safe=""))
    code, headers, page = running.get(path)
    assert code == status, page
    assert "<script>" not in page
    assert headers["content-security-policy"].startswith("default-src 'none'")
    assert running.card.opened == 0 and running.broker.hits == []


def test_preflight_and_posts_get_no_cors(running: Running) -> None:
    for method in ("OPTIONS", "POST"):
        code, headers, _ = running.get("/authorize", {"Origin": "https://evil.example",
                                                      "Access-Control-Request-Method": "GET"},
                                       method=method)
        assert code == 405
        _no_cors(headers)


def test_wrong_pin_is_told_and_nothing_is_sent(running: Running) -> None:
    running.agent.settings = AgentSettings(**{**running.agent.settings.__dict__,
                                              "read_pin": lambda _p: "0000"})
    code, _, page = running.authorize()
    assert code == 403 and "2 tries left" in page
    assert running.broker.hits == []


def test_broker_refusal_is_shown(running: Running) -> None:
    running.broker.refuse = {"error": "invalid_credentials", "reason": "wrong_issuer",
                             "message": "the card signed for broker 'a' but ..."}
    code, _, page = running.authorize()
    assert code == 401
    assert "wrong_issuer" in page and "the card signed for broker &#x27;a&#x27;" in page


def test_continue_elsewhere_is_not_followed(running: Running) -> None:
    running.broker.continue_to = "https://evil.example/steal"
    code, headers, page = running.authorize()
    assert code == 502 and "location" not in headers and "does not continue" in page


def test_one_card_login_at_a_time(running: Running) -> None:
    running.card.release.clear()
    first: list[int] = []
    thread = threading.Thread(target=lambda: first.append(running.authorize()[0]))
    thread.start()
    try:
        assert running.card.signing.wait(10)
        code, _, page = running.authorize()
        assert code == 409 and "in progress" in page
    finally:
        running.card.release.set()
        thread.join(20)
    assert first == [303]
    assert running.authorize()[0] == 303               # free again


def test_settings_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no broker allowed"):
        Agent(AgentSettings(brokers=allowed_brokers([], {}), open_card=lambda: None,  # type: ignore
                            read_pin=lambda _p: PIN))
    assert allowed_brokers([], {"CPS_LOGIN_BROKERS": "http://a:1/, https://b"}) == {
        "http://a:1", "https://b"}
    for bad in ("ftp://a", "http://u:p@a", "http://a/?x=1", "a.example"):
        with pytest.raises(ValueError):
            normalise_broker(bad)
    pin_file = tmp_path / "pin"
    pin_file.write_text(PIN + "\n")
    os.chmod(pin_file, 0o644)
    with pytest.raises(ValueError, match="readable by others"):
        read_pin_file(pin_file)
    os.chmod(pin_file, 0o600)
    assert read_pin_file(pin_file) == PIN


def test_cli_agent_refuses_to_start_without_an_allow_list() -> None:
    import socket
    import subprocess
    import sys

    cli = str(Path(sys.executable).with_name("cps-login"))
    environ = {k: v for k, v in os.environ.items() if k != "CPS_LOGIN_BROKERS"}
    proc = subprocess.run([cli, "agent", "--port", "0"], capture_output=True, text=True,
                          env=environ, timeout=60, check=False)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: no broker allowed") and proc.stderr.count("\n") == 1
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run([cli, "agent", "--port", str(port), "--broker",
                               "http://127.0.0.1:1"], capture_output=True, text=True,
                              env=environ, timeout=60, check=False)
    assert proc.returncode == 1 and proc.stderr.startswith(f"error: cannot listen on "
                                                           f"127.0.0.1:{port}")


def test_organisation_goes_with_the_proof(running: Running) -> None:
    code, _, _ = running.get(f"/authorize?broker={quote(running.broker.base, safe='')}"
                             f"&tx={TX}&organisation=1130000110")
    assert code == 303
    assert running.broker.proofs[-1]["organisation_id"] == "1130000110"
    running.agent.settings = AgentSettings(**{**running.agent.settings.__dict__,
                                              "organisation": "3735000000000"})
    assert running.authorize()[0] == 303
    assert running.broker.proofs[-1]["organisation_id"] == "3735000000000"


def _b64url(value: bytes) -> str:
    return base64.urlsafe_b64encode(value).rstrip(b"=").decode()


def test_the_links_challenge_is_signed_without_asking_the_broker(running: Running) -> None:
    value = secrets.token_bytes(32)
    running.broker.challenges[TX] = value          # the challenge the broker's page gave
    code, _, _ = running.get(f"/authorize?broker={quote(running.broker.base, safe='')}"
                             f"&tx={TX}&challenge={_b64url(value)}")
    assert code == 303
    assert running.broker.hits == [f"proof {TX}"]
    assert base64.b64decode(running.broker.proofs[-1]["challenge"]) == value


@pytest.mark.parametrize(("error", "hits"), [
    ("invalid_challenge", ["proof", "challenge", "proof"]),   # replaced since: asked for
    ("invalid_credentials", ["proof"]),                       # any other refusal: shown
])
def test_a_refused_link_challenge(running: Running, error: str, hits: list[str]) -> None:
    running.broker.refuse = {"error": error}
    code, _, page = running.get(f"/authorize?broker={quote(running.broker.base, safe='')}"
                                f"&tx={TX}&challenge={_b64url(secrets.token_bytes(32))}")
    assert code == 401 and error in page
    assert running.broker.hits == [f"{hit} {TX}" for hit in hits]
    assert running.card.closed == running.card.opened == 1


@pytest.mark.parametrize("value", ["short", "A" * 44, "A" * 42 + "!"])
def test_a_malformed_link_challenge_is_refused_before_the_pin(running: Running,
                                                              value: str) -> None:
    code, _, _ = running.get(f"/authorize?broker={quote(running.broker.base, safe='')}"
                             f"&tx={TX}&challenge={quote(value)}")
    assert code == 400
    assert running.broker.hits == [] and running.card.opened == 0
