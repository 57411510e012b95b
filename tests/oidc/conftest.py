"""The provider over HTTP, on the real home of tests/login (SoftHSM, SQLite, OCSP status
server), with a clock the tests can move forward.

``OidcServer`` is a broker app whose issuer is its own address (``http://127.0.0.1:PORT``),
served by the project's HTTP server; the card proofs are made with the software "cards" of
tests/login (real certificates of the home's CA, keys in memory): the broker checks them exactly
as it checks a card's. ``Browser`` follows the authorization page and the agent's steps
(challenge, proof) the way ``cps-login agent`` and a browser do, with requests.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from flask import Flask

from cps_login.oidc.clients import Registered, register
from cps_login.proof import login_message
from cps_login.web import create_broker_app, services_of
from pki.http.server import HttpServer
from tests.login.conftest import Env, SoftCard, card_signature, der, env  # noqa: F401
from tests.servers import Running, free_port, run_server

os.environ.setdefault("OAUTHLIB_INSECURE_TRANSPORT", "1")     # http on 127.0.0.1 in tests


def pytest_configure(config: pytest.Config) -> None:
    # test_replicas imports the deployment of tests/deploy, whose module carries this mark
    config.addinivalue_line("markers", "deploy: the replicated deployment (tests/deploy)")


class OffsetClock:
    """Real time plus an offset the tests move (codes, transactions, CIBA expiry)."""

    def __init__(self) -> None:
        self.offset = dt.timedelta(0)

    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC) + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += dt.timedelta(seconds=seconds)


@dataclass
class OidcServer:
    env: Env
    app: Flask
    clock: OffsetClock
    running: Running
    issuer: str

    def discovery(self) -> dict[str, Any]:
        response = requests.get(self.issuer + "/.well-known/openid-configuration", timeout=10)
        response.raise_for_status()
        return dict(response.json())

    def client(self, name: str = "Service", redirect_uri: str = "http://127.0.0.1/cb",
               **options: Any) -> Registered:
        return register(self.env.auth.store, name=name, redirect_uris=[redirect_uri],
                        **options)

    def card_proof(self, card: SoftCard, challenge_b64: str, broker: str | None = None,
                   **extra: Any) -> dict[str, Any]:
        challenge = base64.b64decode(challenge_b64)
        signature = card_signature(card.key, login_message(challenge, broker or self.issuer))
        return {"certificate": base64.b64encode(der(card.auth)).decode(),
                "challenge": challenge_b64,
                "signature": base64.b64encode(signature).decode(), **extra}


class Browser:
    """A browser (cookies, no JavaScript) and the local agent's two calls to the broker."""

    def __init__(self, server: OidcServer) -> None:
        self.server = server
        self.session = requests.Session()

    def open_authorization(self, url: str) -> str:
        """The authorization page; returns the login transaction id from the agent link."""
        page = self.session.get(url, allow_redirects=False, timeout=10)
        assert page.status_code == 200, (page.status_code, page.text[:300])
        found = re.search(r'href="http://127\.0\.0\.1:24727/authorize\?broker=[^&"]+&amp;'
                          r'tx=([A-Za-z0-9_-]+)&amp;challenge=[A-Za-z0-9_-]{43}"', page.text)
        assert found, page.text
        return found.group(1)

    def agent(self, tx: str, card: SoftCard, **extra: Any) -> requests.Response:
        """What ``cps-login agent`` does: challenge, card signature, proof."""
        base = self.server.issuer
        challenge = requests.get(f"{base}/oidc/tx/{tx}/challenge", timeout=10)
        assert challenge.status_code == 200, challenge.text
        body = self.server.card_proof(card, challenge.json()["challenge"], **extra)
        return requests.post(f"{base}/oidc/tx/{tx}/proof", json=body, timeout=30)

    def login(self, url: str, card: SoftCard) -> str:
        """Authorization page → agent → continue: the Location the broker redirects to."""
        tx = self.open_authorization(url)
        proof = self.agent(tx, card)
        assert proof.status_code == 200, proof.text
        done = self.session.get(proof.json()["continue"], allow_redirects=False, timeout=10)
        assert done.status_code == 302, (done.status_code, done.text[:300])
        return str(done.headers["Location"])


def query_of(location: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


@pytest.fixture(scope="module")
def oidc(env: Env) -> Iterator[OidcServer]:  # noqa: F811
    port = free_port()
    issuer = f"http://127.0.0.1:{port}"
    clock = OffsetClock()
    config = replace(env.config, issuer=issuer)
    app = create_broker_app(config, clock=clock)
    running = run_server(HttpServer([], app), port)
    try:
        yield OidcServer(env, app, clock, running, issuer)
    finally:
        running.close()
        services_of(app).close()


@pytest.fixture
def clock(oidc: OidcServer) -> Iterator[OffsetClock]:
    """The server's clock, put back after the test."""
    saved = oidc.clock.offset
    yield oidc.clock
    oidc.clock.offset = saved
