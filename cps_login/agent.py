"""``cps-login agent``: the local agent the broker's sign-in page hands the card challenge to.

Like the national eID clients, it listens on 127.0.0.1 only. The broker's authorization page
links the browser to ``http://127.0.0.1:<port>/authorize?broker=<issuer>&tx=<tx>``; the agent
asks the PIN (on its own terminal, or from ``--pin-file``), fetches the transaction's challenge
from the broker, signs it with the card exactly as ``cps-login login`` does
(:func:`cps_login.client.proof_body`), posts the proof, and sends the browser on (``303``) to the
broker's ``continue`` URL — or shows a small page with the broker's or the card's error.

Any web page can make a browser request ``127.0.0.1``, so the agent trusts none of it:

* it binds 127.0.0.1 and answers only requests whose ``Host`` is itself (no DNS rebinding);
* it talks only to the brokers of its allow-list (``--broker``, ``CPS_LOGIN_BROKERS``), the
  exact issuer URLs, and follows only a ``continue`` URL of that broker;
* it serves top-level navigations only (``Sec-Fetch-Mode: navigate``, ``Sec-Fetch-Dest:
  document`` when the browser sends them), a ``Referer`` of another origin than the broker is
  refused, and so is a navigation from a page with no ``Referer`` at all (``rel=noreferrer``:
  the broker's page always sends its origin); it never sends any CORS header: a script of
  another site can neither trigger a card login in the background nor read an answer;
* the PIN is read inside this process and goes to the card only, never onto the network nor into
  a page; and one login at a time uses the card (a second one is told the agent is busy).
"""

from __future__ import annotations

import base64
import html
import os
import re
import stat
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cps_login.client import BrokerRefused, broker_get, broker_post, proof_body
from pki.cards.card import Card
from pki.cards.errors import CardError

DEFAULT_PORT = 24727
LOOPBACK = "127.0.0.1"
BROKERS_ENV = "CPS_LOGIN_BROKERS"
_TX = re.compile(r"^[A-Za-z0-9_-]{16,128}$")
_ORGANISATION = re.compile(r"^[0-9]{9,15}$")
_MAX_QUERY = 2048


def normalise_broker(url: str) -> str:
    """An issuer URL as the agent compares it: scheme://host[:port][/path], no trailing '/',
    no query, no fragment, no user info; ValueError for anything else."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"broker URL must be http(s)://host[:port][/path]: {url!r}")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"broker URL must have no query, fragment or user: {url!r}")
    return f"{parts.scheme}://{parts.netloc.lower()}{parts.path}".rstrip("/")


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.lower()}"


def allowed_brokers(given: Iterable[str], environ: dict[str, str] | None = None
                    ) -> frozenset[str]:
    """The allow-list: the ``--broker`` URLs, else the comma-separated ``CPS_LOGIN_BROKERS``."""
    urls = list(given) or [u for u in (environ if environ is not None else os.environ)
                           .get(BROKERS_ENV, "").split(",") if u.strip()]
    return frozenset(normalise_broker(u) for u in urls)


def read_pin_file(path: str | Path) -> str:
    """The PIN in ``path``; refused when others than its owner may read the file."""
    try:
        with open(path, encoding="utf-8") as fh:
            mode = os.fstat(fh.fileno()).st_mode
            if stat.S_ISREG(mode) and mode & 0o077:
                raise ValueError(f"PIN file {path} is readable by others (mode "
                                 f"{stat.S_IMODE(mode):o}); chmod 600 it")
            return fh.read().strip()
    except OSError as exc:
        raise ValueError(f"cannot read PIN file {path}: {exc.strerror}") from None


@dataclass(frozen=True)
class AgentSettings:
    brokers: frozenset[str]
    open_card: Callable[[], Card]
    read_pin: Callable[[str], str]          # prompt -> PIN (terminal or PIN file)
    organisation: str | None = None         # default situation when the link names none
    timeout: float = 10.0
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True)


class AgentError(Exception):
    """A refusal shown to the browser as a page: HTTP status and one line of text."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Agent:
    """The agent's logic, apart from HTTP: one card login per call, one at a time."""

    def __init__(self, settings: AgentSettings) -> None:
        if not settings.brokers:
            raise ValueError(f"no broker allowed: give --broker URL (repeatable) or set "
                             f"{BROKERS_ENV}")
        self.settings = settings
        self._card_lock = threading.Lock()

    def authorize(self, query: str, headers: Any) -> str:
        """Check the browser's request, prove the transaction with the card; the URL to send
        the browser on to. AgentError for anything refused."""
        if len(query) > _MAX_QUERY:
            raise AgentError(414, "request too long")
        try:
            params = parse_qs(query, strict_parsing=True, max_num_fields=8)
        except ValueError:
            raise AgentError(400, "malformed query") from None
        if any(len(v) != 1 for v in params.values()) or not {"broker", "tx"} <= set(params) \
                or set(params) - {"broker", "tx", "challenge", "organisation"}:
            raise AgentError(400, "expected broker, tx and optionally challenge and "
                                  "organisation, once each")
        try:
            broker = normalise_broker(params["broker"][0])
        except ValueError:
            raise AgentError(400, "broker is not an http(s) URL") from None
        if broker not in self.settings.brokers:
            raise AgentError(403, f"broker {broker} is not one this agent works with "
                                  f"(allowed: {', '.join(sorted(self.settings.brokers))})")
        tx = params["tx"][0]
        if not _TX.match(tx):
            raise AgentError(400, "tx is not a login transaction id")
        organisation = params.get("organisation", [self.settings.organisation])[0]
        if organisation is not None and not _ORGANISATION.match(organisation):
            raise AgentError(400, "organisation is not a structure number")
        challenge = None
        if "challenge" in params:
            challenge = _link_challenge(params["challenge"][0])
        referer = headers.get("Referer")
        if referer and _origin(referer) != _origin(broker):
            raise AgentError(403, f"this login was not started from the page of {broker}")
        if not referer and headers.get("Sec-Fetch-Site", "none") != "none":
            # a browser that sends fetch metadata sends the broker page's origin too (the page
            # asks for it: referrerpolicy="origin"); none at all is a page of another site
            # hiding where it comes from (rel=noreferrer): no PIN prompt for it
            raise AgentError(403, f"this login was not started from the page of {broker}")
        if not self._card_lock.acquire(blocking=False):
            raise AgentError(409, "another card login is in progress; finish it first")
        try:
            return self._prove(broker, tx, organisation, challenge)
        finally:
            self._card_lock.release()

    def _prove(self, broker: str, tx: str, organisation: str | None,
               challenge: str | None = None) -> str:
        """``challenge`` (base64): the transaction's, from the page's link; without it, or
        when the broker has replaced it since (a refused proof), it is asked of the broker."""
        s = self.settings
        try:
            pin = s.read_pin(f"PIN of the card to log in at {broker}")
            card = s.open_card()
        except (CardError, ValueError) as exc:
            raise AgentError(503, f"card: {exc}") from None
        try:
            card.verify_pin(pin)
            del pin
            answer = None
            if challenge is not None:
                body = proof_body(card, broker, challenge, organisation)
                try:
                    answer = broker_post(f"{broker}/oidc/tx/{tx}/proof", body,
                                         timeout=s.timeout)
                except BrokerRefused as exc:
                    if exc.body.get("error") != "invalid_challenge":
                        raise
            if answer is None:
                asked = broker_get(f"{broker}/oidc/tx/{tx}/challenge", timeout=s.timeout)
                if not isinstance(asked, dict) or not isinstance(asked.get("challenge"), str):
                    raise AgentError(502, "the broker's answer has no challenge")
                body = proof_body(card, broker, asked["challenge"], organisation)
                answer = broker_post(f"{broker}/oidc/tx/{tx}/proof", body, timeout=s.timeout)
        except CardError as exc:
            raise AgentError(403, f"card: {exc}") from None
        except BrokerRefused as exc:
            raise AgentError(exc.status if 400 <= exc.status < 600 else 502,
                             _refusal_text(exc.body)) from None
        except ConnectionError as exc:
            raise AgentError(502, str(exc)) from None
        finally:
            card.close()
        target = answer.get("continue") if isinstance(answer, dict) else None
        if not isinstance(target, str) or not target.startswith(broker + "/"):
            raise AgentError(502, "the broker's answer does not continue on the broker")
        return target


def _link_challenge(value: str) -> str:
    """The link's challenge (base64url, 32 bytes) as the proof carries it (base64)."""
    if not re.fullmatch(r"[A-Za-z0-9_-]{43}", value):
        raise AgentError(400, "challenge is not 32 bytes of base64url")
    return base64.b64encode(base64.urlsafe_b64decode(value + "=")).decode()


def _refusal_text(body: dict[str, Any]) -> str:
    parts = [str(body.get("error", "refused"))]
    if body.get("reason"):
        parts.append(f"({body['reason']})")
    if body.get("message"):
        parts.append(f"— {body['message']}")
    return "broker refused the login: " + " ".join(parts)


_PAGE_HEADERS = {
    "Content-Type": "text/html; charset=utf-8",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _page(title: str, text: str) -> bytes:
    return (f"<!doctype html><html lang=\"fr\"><head><meta charset=\"utf-8\"><title>"
            f"{html.escape(title)}</title></head><body><h1>{html.escape(title)}</h1>"
            f"<p id=\"message\">{html.escape(text)}</p></body></html>").encode()


def make_handler(agent: Agent, port: int) -> type[BaseHTTPRequestHandler]:
    hosts = {f"{LOOPBACK}:{port}", f"localhost:{port}"}

    class Handler(BaseHTTPRequestHandler):
        server_version = "cps-login-agent"
        timeout = 15                    # an idle connection (a page holding sockets) is dropped
        sys_version = ""
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass                                    # one line per login instead (below)

        def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
            self.close_connection = True

        def _refuse(self, status: int, message: str) -> None:
            self._send(status, _page("Connexion par carte CPS refusée", message), _PAGE_HEADERS)

        def do_GET(self) -> None:
            if self.headers.get("Host", "") not in hosts:
                return self._refuse(421, "this agent answers only to its own address")
            if self.headers.get("Sec-Fetch-Mode", "navigate") != "navigate" or \
                    self.headers.get("Sec-Fetch-Dest", "document") != "document":
                return self._refuse(403, "open this link in the browser, not from a script")
            parts = urlsplit(self.path)
            if parts.path == "/":
                return self._send(200, _page("cps-login agent", "ready"), _PAGE_HEADERS)
            if parts.path != "/authorize":
                return self._refuse(404, "not found")
            try:
                target = agent.authorize(parts.query, self.headers)
            except AgentError as exc:
                agent.settings.log(f"login refused: {exc}")
                return self._refuse(exc.status, str(exc))
            agent.settings.log("login proven; browser sent on to the broker")
            self._send(303, b"", {"Location": target, "Cache-Control": "no-store",
                                  "Referrer-Policy": "no-referrer"})

        def _not_allowed(self) -> None:
            self._send(405, _page("cps-login agent", "method not allowed"),
                       {**_PAGE_HEADERS, "Allow": "GET"})

        do_POST = do_PUT = do_DELETE = do_OPTIONS = do_PATCH = _not_allowed

    return Handler


class AgentServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = False


def make_server(agent: Agent, port: int = DEFAULT_PORT) -> AgentServer:
    """The agent's HTTP server on 127.0.0.1:``port`` (0: any free port), not yet serving."""
    server = AgentServer((LOOPBACK, port), make_handler(agent, port))
    if port == 0:
        server.RequestHandlerClass = make_handler(agent, server.server_address[1])
    return server


def serve(agent: Agent, port: int = DEFAULT_PORT,
          ready: Callable[[int], None] | None = None) -> None:
    """Serve on 127.0.0.1:``port`` until interrupted."""
    server = make_server(agent, port)
    if ready is not None:
        ready(server.server_address[1])
    try:
        server.serve_forever()
    finally:
        server.server_close()
