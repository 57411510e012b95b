"""The provider's busiest routes answered on WSGI directly, in front of the broker's Flask app.

A browser login is four requests — ``GET /oidc/authorize``, ``POST /oidc/tx/<tx>/proof`` (from
the local agent), ``GET /oidc/tx/<tx>/continue`` and the relying service's ``POST
/oidc/token`` — plus ``GET /oidc/tx/<tx>/challenge`` for an agent that asks. For each of them
Flask built a request context, bound a URL adapter, made werkzeug's request (its header,
argument and form structures, read again at each of Authlib's fifty-odd parameter lookups) and
a response object: measured in the broker (bench/oidc.py, docs/oidc.md), as much CPU as the
OAuth work of the request itself. Here a request is its WSGI environ, read once into plain
dicts; the answer is a status, a header list and bytes.

What did not change: the protocol is Authlib's (the same ``Provider.server``, the same grants,
hooks and errors), the login transaction is ``cps_login.oidc.browser``'s, refusals are mapped
to JSON by the broker's one mapping (``cps_login.web.errors.error_answer``), an unexpected error
is logged and answered 500 ``server_error``, and every other path goes to Flask. The front sits
inside ``TrustedProxies``, so the client address and scheme are the ones it established.
Bodies over the app's ``MAX_CONTENT_LENGTH`` are refused (413) before they are read.
"""

from __future__ import annotations

import base64
import functools
import html
import ipaddress
import json
import logging
import re
import secrets
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

from authlib.oauth2.rfc6749 import InvalidRequestError, OAuth2Error

from cps_login.oidc import browser
from pki.errors import PkiError

if TYPE_CHECKING:
    from cps_login.oidc.provider import Provider

log = logging.getLogger(__name__)

TX_COOKIE = "cps-oidc-browser"
AGENT_URL = "http://127.0.0.1:24727/authorize"
MAX_QUERY = 4096
MAX_BODY = 256 * 1024           # the broker app's MAX_CONTENT_LENGTH
_QUERY_SAFE = "".join(chr(c) for c in range(0x21, 0x7f))   # printable ASCII stays as it is
_COOKIE_SAFE = re.compile(r"[A-Za-z0-9_-]{16,64}")           # what token_urlsafe gives
_REASONS = {200: "OK", 302: "FOUND", 400: "BAD REQUEST", 401: "UNAUTHORIZED",
            403: "FORBIDDEN", 404: "NOT FOUND", 405: "METHOD NOT ALLOWED",
            413: "REQUEST ENTITY TOO LARGE", 429: "TOO MANY REQUESTS",
            500: "INTERNAL SERVER ERROR", 503: "SERVICE UNAVAILABLE"}


class Answer:
    """An HTTP answer: status, headers, body. Authlib's responses are made into these
    (``Provider.server.handle_response``); Flask routes turn them into Flask responses."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, body: bytes = b"",
                 headers: list[tuple[str, str]] | None = None) -> None:
        self.status = status
        self.body = body
        self.headers = headers if headers is not None else []

    @classmethod
    def json(cls, data: Any, status: int = 200,
             headers: Iterable[tuple[str, str]] = ()) -> Answer:
        body = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()
        return cls(status, body, [("Content-Type", "application/json"), *headers])

    def no_store(self) -> Answer:
        self.headers += [("Cache-Control", "no-store"), ("Pragma", "no-cache")]
        return self

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers if k.lower() == name), None)

    def flask(self) -> Any:
        """This answer as a Flask response (for the routes Flask serves)."""
        from flask import Response

        response = Response(self.body, self.status)
        for name, value in self.headers:
            if name.lower() == "content-type":
                response.headers["Content-Type"] = value
            else:
                response.headers.add(name, value)
        return response


def page(title: str, body: str, status: int = 200) -> Answer:
    text = (f"<!doctype html><html lang=\"fr\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title></head><body><h1>{html.escape(title)}</h1>"
            f"{body}</body></html>")
    return Answer(status, text.encode(), [
        ("Content-Type", "text/html; charset=utf-8"),
        ("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'"),
        ("X-Frame-Options", "DENY")]).no_store()


def error_page(error: OAuth2Error) -> Answer:
    """An authorization error without a trustworthy redirect URI: shown, never redirected."""
    text = f"{error.error}: {error.description or ''}"
    return page("Connexion refusée", f"<p>{html.escape(text)}</p>", error.status_code or 400)


def refused(description: str) -> Answer:
    return error_page(InvalidRequestError(description))


class _TooLarge(Exception):
    pass


class Headers(Mapping[str, str]):
    """A request's headers from its environ, looked up by name in any case (what Authlib
    reads: ``Authorization``)."""

    def __init__(self, environ: Mapping[str, Any]) -> None:
        self._environ = environ

    @staticmethod
    def _key(name: str) -> str:
        key = name.upper().replace("-", "_")
        return key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else "HTTP_" + key

    def __getitem__(self, name: str) -> str:
        value = self._environ.get(self._key(name))
        if value is None:
            raise KeyError(name)
        return str(value)

    def get(self, name: str, default: Any = None) -> Any:  # type: ignore[override]
        value = self._environ.get(self._key(name))
        return default if value is None else str(value)

    def __iter__(self) -> Iterator[str]:
        for key in self._environ:
            if key.startswith("HTTP_"):
                yield key[5:].replace("_", "-").title()
            elif key in ("CONTENT_TYPE", "CONTENT_LENGTH") and self._environ[key]:
                yield key.replace("_", "-").title()

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __bool__(self) -> bool:
        return True          # a request has headers; and ``headers or {}`` need not count them


class WebRequest:
    """A request as the front reads it: method, path, query and form parameters, cookies,
    JSON body; each parsed at most once."""

    def __init__(self, environ: dict[str, Any]) -> None:
        self.environ = environ
        self.method = str(environ.get("REQUEST_METHOD", "GET")).upper()
        self.query_string = str(environ.get("QUERY_STRING", ""))
        self.remote_addr = str(environ.get("REMOTE_ADDR", ""))
        self.headers = Headers(environ)
        self._args: list[tuple[str, str]] | None = None
        self._form: list[tuple[str, str]] | None = None
        self._body: bytes | None = None

    @staticmethod
    def _text(latin1: str) -> str:
        """WSGI strings are bytes as latin-1; the request's text is UTF-8 (as werkzeug reads
        it)."""
        return latin1.encode("latin-1", "replace").decode("utf-8", "replace")

    @property
    def arg_pairs(self) -> list[tuple[str, str]]:
        if self._args is None:
            self._args = parse_pairs(self._text(self.query_string))
        return self._args

    def arg(self, name: str) -> str | None:
        return next((v for k, v in self.arg_pairs if k == name), None)

    @property
    def content_type(self) -> str:
        return str(self.environ.get("CONTENT_TYPE", "")).split(";", 1)[0].strip().lower()

    def body(self) -> bytes:
        if self._body is None:
            stream = self.environ.get("wsgi.input")
            declared = self.environ.get("CONTENT_LENGTH")
            if not declared and self.environ.get("wsgi.input_terminated") and stream is not None:
                # chunked (or otherwise unsized) and the server ends the stream itself: read
                # at most one byte past the limit, as werkzeug does
                body = bytes(stream.read(MAX_BODY + 1))
                if len(body) > MAX_BODY:
                    raise _TooLarge
                self._body = body
                return body
            try:
                length = int(declared or 0)
            except ValueError:
                length = 0
            if length > MAX_BODY:
                raise _TooLarge
            self._body = stream.read(length) if stream is not None and length > 0 else b""
        return self._body

    @property
    def form_pairs(self) -> list[tuple[str, str]]:
        if self._form is None:
            self._form = []
            if self.method != "GET" and self.content_type == "application/x-www-form-urlencoded":
                self._form = parse_pairs(self.body().decode("utf-8", "replace"))
        return self._form

    def json(self) -> Any:
        """The body as JSON, or None (not JSON, or not declared as JSON) — Flask's
        ``get_json(silent=True)``."""
        ctype = self.content_type
        if ctype != "application/json" and not (ctype.startswith("application/")
                                                and ctype.endswith("+json")):
            return None
        try:
            return json.loads(self.body())
        except (ValueError, RecursionError):
            # RecursionError: a deeply nested body ("[" * 100_000) is not JSON we accept either
            return None

    def cookie(self, name: str) -> str | None:
        for part in str(self.environ.get("HTTP_COOKIE", "")).split(";"):
            key, sep, value = part.partition("=")
            if sep and key.strip() == name:
                value = value.strip()
                if len(value) >= 2 and value[0] == value[-1] == '"':
                    value = value[1:-1]
                return value
        return None


def parse_pairs(text: str) -> list[tuple[str, str]]:
    """``urllib.parse.parse_qsl(text, keep_blank_values=True)``, without decoding the parts
    that hold nothing to decode (most of an OAuth request's: identifiers, base64url)."""
    pairs = []
    for part in text.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        if "%" in part or "+" in part:
            name = unquote(name.replace("+", " "))
            value = unquote(value.replace("+", " "))
        pairs.append((name, value))
    return pairs


def payload_lists(pairs: Iterable[tuple[str, str]]) -> tuple[dict[str, str],
                                                             defaultdict[str, list[str]]]:
    """(first value of each parameter, every value of each) — Authlib's ``data``/``datalist``."""
    lists: defaultdict[str, list[str]] = defaultdict(list)
    for key, value in pairs:
        lists[key].append(value)
    return {key: values[0] for key, values in lists.items()}, lists


@functools.lru_cache(maxsize=4096)
def client_key(address: str) -> str:
    """The per-address bound's key: an IPv4 address, or the /64 of an IPv6 one (one host
    may hold a whole /64)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if ip.version == 6:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def with_issuer(answer: Answer, issuer: str) -> Answer:
    """RFC 9207: every authorization response sent back to the client (a code or an error)
    names the issuer, so that a client using several providers can tell which one answered
    (mix-up attacks). A redirect URI has no fragment (RFC 6749 §3.1.2), and the response's
    parameters are in its query: ``iss`` is appended there (Authlib's ``add_params_to_uri``
    re-parses and re-encodes the whole URI: 4 % of the broker's CPU in bench/oidc.py)."""
    param = _iss_param(issuer)
    answer.headers = [(k, v + ("&" if "?" in v else "?") + param) if k.lower() == "location"
                      else (k, v) for k, v in answer.headers]
    return answer


@functools.lru_cache(maxsize=8)
def _iss_param(issuer: str) -> str:
    return "iss=" + quote(issuer, safe="")


# --- the routes ----------------------------------------------------------------------------
def authorize(p: Provider, req: WebRequest) -> Answer:
    from cps_login.oidc.provider import WebOAuthRequest

    # The whole query is kept with the transaction: bounded, so that anonymous requests
    # cannot fill the provider's state (a real one is a few hundred bytes).
    if len(req.query_string) > MAX_QUERY:
        return refused(f"authorization request over {MAX_QUERY} bytes")
    try:
        oauth_request = WebOAuthRequest(req, p.issuer)
        p.server.get_consent_grant(request=oauth_request)
    except OAuth2Error as error:
        if error.redirect_uri:       # validated against the client: the error goes back there
            answer: Answer = p.server.handle_error_response(oauth_request, error)
            return with_issuer(answer, p.issuer)
        return error_page(error)
    except ValueError:               # e.g. Authlib will not quote a backslash in its error
        return refused("malformed authorization request")
    if p.tx_limiter is not None:
        address = client_key(req.remote_addr)
        p.tx_limiter.check(address)          # RateLimited: 429 with Retry-After
        p.tx_limiter.fail(address)           # counts every transaction opened
    secret = req.cookie(TX_COOKIE) or ""
    if not _COOKIE_SAFE.fullmatch(secret):     # none yet, or not one of ours: a new one
        secret = secrets.token_urlsafe(24)
    # kept as ASCII: a raw byte above 0x7f (no URI has one) percent-encoded as a browser would,
    # not replaced by U+FFFD (one such character makes Python keep the whole string at 2 bytes
    # a character, beyond what the state's budget counts)
    raw = req.query_string.encode("latin-1", "replace")
    query = raw.decode("ascii") if raw.isascii() else quote(raw, safe=_QUERY_SAFE)
    client_id = oauth_request.payload.data.get("client_id")
    tx, challenge = browser.create(p, query, str(client_id), secret)
    agent_url = str(p.services.config.extra.get("agent_url", AGENT_URL))
    # the agent signs the transaction's challenge from the link: no round trip to ask for it
    agent = (f"{agent_url}?broker={quote(p.issuer, safe='')}&tx={quote(tx, safe='')}"
             f"&challenge={browser.challenge_param(challenge)}")
    client = p.clients.query(client_id)
    name = client.name if client is not None else ""
    body = (f"<p>{html.escape(name)} demande votre connexion par carte CPS.</p>"
            f"<p>Insérez votre carte, puis :</p>"
            f"<p><a id=\"agent\" referrerpolicy=\"origin\" href=\"{html.escape(agent)}\">"
            f"Se connecter avec la carte (agent local cps-login)</a></p>")
    answer = page("Connexion par carte CPS", body)
    answer.headers.append(("Set-Cookie", _tx_cookie(secret, p.issuer.startswith("https://"))))
    return answer


def _tx_cookie(secret: str, secure: bool) -> str:
    """The browser's transaction cookie: HttpOnly, SameSite=Lax, Path /oidc/tx, Secure for an
    https issuer. ``secret``: token_urlsafe characters (``authorize`` replaces anything else
    a browser sends). Written here rather than by werkzeug's ``dump_cookie``, whose Expires
    date cost 1.5 % of the broker's CPU; Max-Age is what browsers follow."""
    return (f"{TX_COOKIE}={secret}; Max-Age={browser.TX_TTL * 4}; Path=/oidc/tx; HttpOnly; "
            f"SameSite=Lax" + ("; Secure" if secure else ""))


def tx_challenge(p: Provider, req: WebRequest, tx: str) -> Answer:
    issued = browser.challenge(p, tx)
    return Answer.json({
        "challenge": base64.b64encode(issued.value).decode(),
        "expires_at": issued.expires_at.isoformat(),
        "broker": p.services.login.issuer,
        "signed_message": "SHA-256 over b'CPS-LOGIN-V1\\x00' || uint16 len(broker) || "
                          "broker || challenge",
    }).no_store()


def tx_proof(p: Provider, req: WebRequest, tx: str) -> Answer:
    key = browser.proof(p, tx, req.json(), req.remote_addr)
    return Answer.json({"continue": p.url(f"/oidc/tx/{tx}/continue?k={key}")}).no_store()


def tx_continue(p: Provider, req: WebRequest, tx: str) -> Answer:
    from cps_login.oidc.provider import StoredRequest

    query, subject = browser.finish(p, tx, req.cookie(TX_COOKIE), req.arg("k"))
    # The request was validated when the transaction was made, and is again now (client still
    # registered, redirect URI, PKCE, nonce unused) by create_authorization_response.
    try:
        oauth_request = StoredRequest(query, p.issuer)
        oauth_request.user = subject
        grant = p.server.get_authorization_grant(oauth_request)
        answer: Answer = p.server.create_authorization_response(
            request=oauth_request, grant_user=subject, grant=grant)
    except OAuth2Error as error:
        return error_page(error)
    except ValueError:
        return refused("malformed authorization request")
    return with_issuer(answer, p.issuer).no_store()  # no validated redirect URI: JSON, 400


def token(p: Provider, req: WebRequest) -> Answer:
    from cps_login.oidc.provider import WebOAuthRequest

    try:
        oauth_request = WebOAuthRequest(req, p.issuer)
    except OAuth2Error as error:         # e.g. plain http off loopback: Authlib's refusal
        return Answer.json(dict(error.get_body()), error.status_code or 400).no_store()
    answer: Answer = p.server.create_token_response(oauth_request)
    return answer


Route = tuple[tuple[str, ...], Callable[..., Answer]]
_FIXED: dict[str, Route] = {"/oidc/authorize": (("GET",), authorize),
                            "/oidc/token": (("POST",), token)}
_TX: dict[str, Route] = {"challenge": (("GET",), tx_challenge),
                         "proof": (("POST",), tx_proof),
                         "continue": (("GET",), tx_continue)}


def routes() -> list[tuple[str, str]]:
    """(rule, method) of every route the front answers, as Flask would write the rule (for
    the OpenAPI description's check)."""
    fixed = [(path, m) for path, (methods, _) in _FIXED.items() for m in methods]
    return fixed + [(f"/oidc/tx/<tx>/{action}", m)
                    for action, (methods, _) in _TX.items() for m in methods]


def never_waits(method: str, path: str) -> bool:
    """Whether the front's route for (method, path) waits on nothing outside the process
    when the provider's state is (``Provider.local_only``): every route but the card proof
    (the OCSP round trip, the audit commit)."""
    found = _route(path)
    if found is None:
        return False
    (methods, handler), _ = found
    return method in methods and handler is not tx_proof


def _route(path: str) -> tuple[Route, tuple[str, ...]] | None:
    fixed = _FIXED.get(path)
    if fixed is not None:
        return fixed, ()
    if path.startswith("/oidc/tx/"):
        tx, sep, action = path[9:].partition("/")
        route = _TX.get(action)
        if sep and tx and route is not None:
            return route, (tx,)
    return None


class OidcFront:
    """WSGI middleware: the routes above here, everything else to ``app``."""

    def __init__(self, app: Callable[..., Iterable[bytes]],
                 provider: Callable[[], Provider]) -> None:
        self._app = app
        self._provider = provider

    def __call__(self, environ: dict[str, Any],
                 start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = WebRequest._text(str(environ.get("PATH_INFO", "")))
        found = _route(path)
        if found is None:
            return self._app(environ, start_response)
        (methods, handler), params = found
        req = WebRequest(environ)
        answer = self._answer(req, methods, handler, params)
        body = answer.body
        if req.method == "HEAD":
            body = b""
        headers = [*answer.headers, ("Content-Length", str(len(answer.body)))]
        if answer.header("Content-Type") is None:
            headers.append(("Content-Type", "text/plain; charset=utf-8"))
        start_response(f"{answer.status} {_REASONS.get(answer.status, 'UNKNOWN')}", headers)
        return [body]

    def _answer(self, req: WebRequest, methods: tuple[str, ...],
                handler: Callable[..., Answer], params: tuple[str, ...]) -> Answer:
        allowed = ", ".join(sorted({*methods, "OPTIONS", *(("HEAD",) if "GET" in methods
                                                          else ())}))
        if req.method == "OPTIONS":
            return Answer(200, b"", [("Allow", allowed)])
        if req.method not in methods and not (req.method == "HEAD" and "GET" in methods):
            return Answer.json({"error": "method_not_allowed"}, 405, [("Allow", allowed)])
        try:
            if req.method == "POST":
                req.body()           # over MAX_BODY: 413 from its length, nothing read
            return handler(self._provider(), req, *params)
        except _TooLarge:
            return Answer.json({"error": "request_entity_too_large"}, 413)
        except PkiError as exc:
            from cps_login.web.errors import error_answer

            status, body, headers = error_answer(exc)
            return Answer.json(body, status, headers.items())
        except Exception:
            log.exception("unexpected error")
            return Answer.json({"error": "server_error"}, 500)
