"""The provider's WSGI front (cps_login.oidc.front): the routes it takes from Flask answer as
Flask answered them — methods, sizes, errors, headers — and Authlib sees the same requests."""

from __future__ import annotations

import io
import re
from typing import Any

import requests
from authlib.oauth2.rfc6749 import OAuth2Request

from cps_login.oidc.front import MAX_BODY, Headers, OidcFront, WebRequest, routes
from cps_login.oidc.provider import WebOAuthRequest
from pki.errors import NotFound
from tests.oidc.conftest import Browser, OidcServer
from tests.oidc.test_refusals import authorize_url


def _environ(method: str = "GET", path: str = "/oidc/token", query: str = "",
             body: bytes = b"", **extra: Any) -> dict[str, Any]:
    return {"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query,
            "REMOTE_ADDR": "192.0.2.1", "CONTENT_LENGTH": str(len(body)) if body else "",
            "wsgi.input": io.BytesIO(body), **extra}


def test_methods_as_flask_answered_them(oidc: OidcServer) -> None:
    base = oidc.issuer
    wrong = requests.post(base + "/oidc/authorize", timeout=10)
    assert wrong.status_code == 405 and wrong.json() == {"error": "method_not_allowed"}
    assert set(wrong.headers["Allow"].split(", ")) == {"GET", "HEAD", "OPTIONS"}
    assert requests.get(base + "/oidc/token", timeout=10).status_code == 405
    options = requests.options(base + "/oidc/token", timeout=10)
    assert options.status_code == 200 and options.headers["Allow"] == "OPTIONS, POST"
    assert "Access-Control-Allow-Origin" not in options.headers
    # HEAD is GET without a body
    client = oidc.client()
    head = requests.head(authorize_url(oidc, client.client_id, "v" * 50), timeout=10)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["X-Frame-Options"] == "DENY"
    # paths it does not answer are Flask's (404 JSON), and the other provider routes too
    assert requests.get(base + "/oidc/tx/", timeout=10).status_code == 404
    assert requests.get(base + "/oidc/authorize/", timeout=10).status_code == 404
    assert requests.get(base + "/.well-known/openid-configuration", timeout=10).ok


def test_oversized_body_is_413_before_it_is_read(oidc: OidcServer) -> None:
    calls: list[str] = []
    front = OidcFront(lambda e, s: calls.append("flask") or [], lambda: calls.append("p"))
    body = b"x" * (MAX_BODY + 1)
    out: dict[str, Any] = {}
    environ = _environ("POST", body=body, CONTENT_TYPE="application/x-www-form-urlencoded")
    environ["wsgi.input"] = io.BytesIO(b"")          # never read: refused by its length
    answer = b"".join(front(environ, lambda status, headers: out.update(s=status)))
    assert out["s"].startswith("413") and b"request_entity_too_large" in answer
    # over HTTP too, through the server and the front
    refused = requests.post(oidc.issuer + "/oidc/token", data=body, timeout=10,
                            headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert refused.status_code == 413


def test_refusals_are_the_brokers_json_and_failures_are_500(oidc: OidcServer) -> None:
    unknown = requests.post(oidc.issuer + "/oidc/tx/" + "A" * 32 + "/proof", json={},
                            timeout=10)
    assert unknown.status_code == 404 and unknown.json()["error"] == NotFound.code
    assert requests.get(oidc.issuer + "/oidc/tx/short/challenge", timeout=10).status_code \
        == 404

    def broken() -> Any:
        raise RuntimeError("provider down")

    front = OidcFront(lambda e, s: [], broken)
    out: dict[str, Any] = {}
    body = b"".join(front(_environ("GET", "/oidc/authorize"),
                          lambda status, headers: out.update(s=status, h=dict(headers))))
    assert out["s"].startswith("500") and body == b'{"error":"server_error"}'
    assert out["h"]["Content-Length"] == str(len(body))


def test_request_parts_read_once_as_werkzeug_reads_them() -> None:
    environ = _environ("POST", query="a=1&b=&a=2&n=%C3%A9", body=b"a=3&c=4",
                       CONTENT_TYPE="application/x-www-form-urlencoded; charset=utf-8",
                       HTTP_AUTHORIZATION="Basic eDp5",
                       HTTP_COOKIE='other=1; cps-oidc-browser="q-uoted"; x=2')
    req = WebRequest(environ)
    assert req.arg("a") == "1" and req.arg("b") == "" and req.arg("n") == "é"
    assert req.form_pairs == [("a", "3"), ("c", "4")]
    assert req.cookie("cps-oidc-browser") == "q-uoted" and req.cookie("absent") is None
    headers = Headers(environ)
    assert headers.get("authorization") == headers["Authorization"] == "Basic eDp5"
    assert headers.get("Content-Type", "").startswith("application/x-www-form-urlencoded")
    assert "Authorization" in set(headers) and bool(headers)
    # Authlib's view: query first, then form; every value kept for its repeated-parameter rule
    oauth = WebOAuthRequest(req, "https://broker.example")
    assert oauth.payload.data["a"] == "1" and oauth.payload.data["c"] == "4"
    assert oauth.payload.datalist["a"] == ["1", "2", "3"]
    assert oauth.uri == "https://broker.example/oidc/token?a=1&b=&a=2&n=%C3%A9"
    assert oauth.environ is environ and oauth.headers.get("Authorization") == "Basic eDp5"
    authlib = OAuth2Request("POST", "https://broker.example/oidc/token")
    assert set(vars(authlib)) <= set(vars(oauth))
    for name in set(vars(authlib)) - {"payload", "headers", "uri", "method"}:
        assert getattr(oauth, name) == getattr(authlib, name), name
    # a GET's form is not read, as werkzeug's request.values leaves it out
    get = WebOAuthRequest(WebRequest(_environ("GET", query="a=1", body=b"a=9",
                                              CONTENT_TYPE="application/x-www-form-"
                                                           "urlencoded")),
                          "https://broker.example")
    assert get.payload.datalist["a"] == ["1"]
    # a JSON body only when it says it is JSON (Flask's get_json(silent=True))
    assert WebRequest(_environ("POST", body=b'{"a":1}', CONTENT_TYPE="text/plain")).json() \
        is None
    assert WebRequest(_environ("POST", body=b'{"a":1}',
                               CONTENT_TYPE="application/json")).json() == {"a": 1}
    assert WebRequest(_environ("POST", body=b'{"a":',
                               CONTENT_TYPE="application/json")).json() is None


def test_routes_listed_for_the_openapi_check() -> None:
    assert set(routes()) == {("/oidc/authorize", "GET"), ("/oidc/token", "POST"),
                             ("/oidc/tx/<tx>/challenge", "GET"),
                             ("/oidc/tx/<tx>/proof", "POST"),
                             ("/oidc/tx/<tx>/continue", "GET")}


def test_the_transaction_cookie(oidc: OidcServer) -> None:
    """The attributes Flask's cookie had, with Max-Age alone (RFC 6265 §5.2.2: it wins over
    Expires in every browser); a cookie the browser sends that is not one of ours is
    replaced, never echoed."""
    client = oidc.client()
    browser = Browser(oidc)
    page = browser.session.get(authorize_url(oidc, client.client_id, "v" * 50), timeout=10)
    cookie = page.headers["Set-Cookie"]
    for part in ("cps-oidc-browser=", "Max-Age=1200", "HttpOnly",
                 "Path=/oidc/tx", "SameSite=Lax"):
        assert part in cookie, cookie
    assert "Secure" not in cookie            # an http issuer (tests/oidc: 127.0.0.1)
    kept = requests.get(authorize_url(oidc, client.client_id, "v" * 50), timeout=10,
                        headers={"Cookie": cookie.split(";")[0]})
    assert kept.headers["Set-Cookie"].split(";")[0] == cookie.split(";")[0]   # the same one
    for sent in ('"q-uoted"', "x" * 65, "a;b", "short"):
        fresh = requests.get(authorize_url(oidc, client.client_id, "v" * 50), timeout=10,
                             headers={"Cookie": f"cps-oidc-browser={sent}"})
        value = fresh.headers["Set-Cookie"].split(";")[0].split("=", 1)[1]
        assert value != sent and re.fullmatch(r"[A-Za-z0-9_-]{32}", value), value
    assert page.headers["Cache-Control"] == "no-store"
    assert page.headers["Content-Security-Policy"].startswith("default-src 'none'")


def test_requests_that_never_wait_are_answered_on_the_event_loop() -> None:
    """pki.http.server: a WSGI app's ``answers_without_waiting`` requests run on the loop's
    thread (no hand-off); every other request in a worker thread."""
    import threading

    from pki.http.server import HttpServer
    from tests.servers import run_server

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [threading.current_thread().name.encode()]

    app.answers_without_waiting = (  # type: ignore[attr-defined]
        lambda method, path: method == "GET" and path == "/fast")
    running = run_server(HttpServer([], app))
    try:
        base = f"http://127.0.0.1:{running.port}"
        assert not requests.get(base + "/fast", timeout=10).text.startswith("wsgi")
        assert requests.get(base + "/slow", timeout=10).text.startswith("wsgi")
        assert requests.post(base + "/fast", timeout=10).text.startswith("wsgi")
    finally:
        running.close()


def test_the_provider_answers_on_the_loop_only_when_nothing_waits(oidc: OidcServer) -> None:
    from cps_login.oidc.state import MemoryState

    lazy = oidc.app.extensions["cps_login.oidc"]
    provider = lazy.get()
    provider.__dict__.pop("local_only", None)
    # tests/oidc: SQLite, SoftHSM, state and bounds in memory
    assert isinstance(provider.state, MemoryState) and provider.local_only
    # seen by the HTTP server whether it is given the app or its WSGI callable (the roles)
    assert oidc.app.wsgi_app.answers_without_waiting == lazy.answers_without_waiting
    assert lazy.answers_without_waiting("GET", "/oidc/authorize")
    assert lazy.answers_without_waiting("GET", "/oidc/tx/abc/continue")
    assert lazy.answers_without_waiting("POST", "/oidc/token")
    for method, path in (("POST", "/oidc/tx/abc/proof"),      # OCSP, the audit's commit
                         ("GET", "/oidc/userinfo"), ("POST", "/oidc/authorize"),
                         ("GET", "/login/challenge"), ("POST", "/oidc/introspect")):
        assert not lazy.answers_without_waiting(method, path), (method, path)
    state = provider.state
    try:
        provider.state = object()                  # e.g. Redis: a network round trip
        provider.__dict__.pop("local_only", None)
        assert not lazy.answers_without_waiting("GET", "/oidc/authorize")
    finally:
        provider.state = state
        provider.__dict__.pop("local_only", None)


def test_parameters_parse_as_urllib_parses_them() -> None:
    """front.parse_pairs is parse_qsl(keep_blank_values=True), decoding only what needs it."""
    import random
    from urllib.parse import parse_qsl

    from cps_login.oidc.front import parse_pairs

    cases = ["a=1&b=2", "a=%C3%A9&b=+x+", "&&a&b=&=c&d==e", "a=%zz&%41=%2", "x=1;y=2",
             "a=b+c%2Bd", "", "&", "=", "%", "a=%E9"]
    rng = random.Random(14)
    cases += ["".join(rng.choice("ab=&%+;2F9E") for _ in range(rng.randint(0, 14)))
              for _ in range(5000)]
    for case in cases:
        assert parse_pairs(case) == parse_qsl(case, keep_blank_values=True), case
