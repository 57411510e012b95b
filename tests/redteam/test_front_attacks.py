"""Red-team probes of the provider's WSGI front (cps_login.oidc.front), the object-keeping
MemoryState and the SQLite group commit of the audit sink (commits 681c0f5, 891b7b1, 5477a3e).

Tests that pass are defences that hold. Tests marked ``xfail(strict=True)`` are findings: they
assert the SECURE / compatible behaviour and currently fail (remove the mark once fixed)."""

from __future__ import annotations

import datetime as dt
import io
import threading
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import select

from cps_login.auditsink import GroupCommitAuditSink, StoreAuditSink
from cps_login.errors import RateLimited, SharedStateUnavailable
from cps_login.oidc.front import MAX_BODY, OidcFront, WebRequest
from cps_login.oidc.state import MemoryState
from pki import audit
from pki.clock import SYSTEM_CLOCK, FixedClock
from pki.errors import StoreUnavailable
from pki.store.db import Store
from pki.store.models import AuditHead, AuditRecord
from tests.oidc.conftest import Browser, OidcServer
from tests.oidc.test_refusals import authorize_url


def _environ(method: str = "GET", path: str = "/oidc/token", query: str = "",
             body: bytes = b"", **extra: Any) -> dict[str, Any]:
    return {"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query,
            "REMOTE_ADDR": "192.0.2.1", "CONTENT_LENGTH": str(len(body)) if body else "",
            "wsgi.input": io.BytesIO(body), **extra}


def _call(front: OidcFront, environ: dict[str, Any]) -> tuple[str, list[tuple[str, str]], bytes]:
    out: dict[str, Any] = {}
    body = b"".join(front(environ, lambda s, h: out.update(s=s, h=h)))
    return out["s"], out["h"], body


# --- holds ---------------------------------------------------------------------------------
def test_refusals_and_failures_leak_no_internals() -> None:
    def raising(exc: BaseException) -> Any:
        def provider() -> Any:
            raise exc
        return provider

    secret = "postgresql://admin:hunter2@db/prod"
    status, _, body = _call(OidcFront(lambda e, s: [], raising(
        StoreUnavailable(f"database unavailable: {secret}"))), _environ("POST"))
    assert status.startswith("503") and body == b'{"error":"store_unavailable"}'
    status, headers, body = _call(OidcFront(lambda e, s: [], raising(RateLimited(7))),
                                  _environ("GET", "/oidc/authorize"))
    assert status.startswith("429") and ("Retry-After", "7") in headers
    status, _, body = _call(OidcFront(lambda e, s: [], raising(
        SharedStateUnavailable("redis://:pw@redis"))), _environ("GET", "/oidc/authorize"))
    assert status.startswith("503") and b"redis" not in body
    status, _, body = _call(OidcFront(lambda e, s: [], raising(KeyError(secret))),
                            _environ("POST"))
    assert status.startswith("500") and body == b'{"error":"server_error"}'


def test_methods_other_than_the_routes_never_reach_a_handler() -> None:
    called: list[str] = []
    front = OidcFront(lambda e, s: [], lambda: called.append("provider"))
    for method in ("PUT", "DELETE", "TRACE", "PATCH", "CONNECT", "FOO", "GET "):
        status, headers, _ = _call(front, _environ(method, "/oidc/token"))
        assert status.startswith("405"), method
    status, headers, body = _call(front, _environ("OPTIONS", "/oidc/tx/" + "A" * 32 + "/proof"))
    assert status.startswith("200") and body == b""
    assert not any(k.lower().startswith("access-control") for k, _ in headers)
    assert called == []


def test_content_length_garbage_and_oversize() -> None:
    for value in ("abc", "-1", "1e3", " ", "0x10"):
        req = WebRequest(_environ("POST", body=b"grant_type=x", CONTENT_LENGTH=value,
                                  CONTENT_TYPE="application/x-www-form-urlencoded"))
        assert req.form_pairs == []          # no read of an unknown length, no 500
    front = OidcFront(lambda e, s: [], lambda: pytest.fail("provider reached"))
    environ = _environ("POST", "/oidc/tx/" + "A" * 32 + "/proof",
                       CONTENT_LENGTH=str(MAX_BODY + 1), CONTENT_TYPE="application/json")
    environ["wsgi.input"] = io.BytesIO(b"")
    assert _call(front, environ)[0].startswith("413")


def test_hsts_and_page_headers_on_the_front_routes(oidc: OidcServer) -> None:
    c = oidc.app.test_client()
    https = {"wsgi.url_scheme": "https"}
    client = oidc.client()
    for response in (c.get(authorize_url(oidc, client.client_id, "v" * 50)
                           .replace(oidc.issuer, ""), environ_overrides=https),
                     c.post("/oidc/token", data={"grant_type": "x"}, environ_overrides=https),
                     c.get("/oidc/tx/" + "A" * 32 + "/challenge", environ_overrides=https),
                     c.put("/oidc/token", environ_overrides=https)):
        assert response.headers.get("Strict-Transport-Security") == "max-age=31536000"


def test_a_cookie_planted_ahead_of_the_browsers_does_not_log_in(oidc: OidcServer) -> None:
    """A cookie set by another path (or a sibling host) comes first in the Cookie header:
    the front reads the first, like werkzeug; the login is refused, never misbound."""
    client = oidc.client()
    browser = Browser(oidc)
    tx = browser.open_authorization(authorize_url(oidc, client.client_id, "v" * 50))
    proof = browser.agent(tx, oidc.env.cards["alice"])
    assert proof.status_code == 200
    own = browser.session.cookies.get("cps-oidc-browser")
    planted = requests.get(proof.json()["continue"], allow_redirects=False, timeout=10,
                           headers={"Cookie": f'cps-oidc-browser="attacker"; '
                                              f'cps-oidc-browser={own}'})
    assert planted.status_code == 400 and "Location" not in planted.headers


def test_repeated_parameters_first_wins_and_pkce_repeats_refused(oidc: OidcServer) -> None:
    c = oidc.app.test_client()
    client = oidc.client()
    url = authorize_url(oidc, client.client_id, "v" * 50).replace(oidc.issuer, "")
    other = c.get(url.replace("?", "?client_id=cps-unknown&", 1))
    assert other.status_code == 400 and "Location" not in other.headers
    cc = url.split("code_challenge=")[1].split("&")[0]
    twice = c.get(url + "&code_challenge=" + cc)
    assert twice.status_code == 302 and "error=invalid_request" in twice.headers["Location"]


def test_memory_state_top_level_copies_hold() -> None:
    s = MemoryState(FixedClock(dt.datetime.now(dt.UTC)))
    value = {"status": "pending", "subject": {"sid": "s1"}}
    assert s.put("k", value, 60)
    value["status"] = "done"
    got = s.get("k")
    assert got is not None and got["status"] == "pending"
    assert not s.cas("k", {**got, "status": "proven"}, None, 60)


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Store:
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    store.migrate()
    return store


def _head(store: Store) -> tuple[int, str]:
    with store.read() as session:
        head = session.execute(select(AuditHead)).scalar_one()
        return int(head.seq), str(head.hash)


def test_failed_sqlite_batch_writes_nothing_and_the_sink_recovers(sqlite_store: Store) -> None:
    sink = GroupCommitAuditSink(sqlite_store, SYSTEM_CLOCK)
    sink.record("login.success", "810000000001", {}, actor="810000000001")
    before = _head(sqlite_store)
    statements = sink._statements
    assert statements is not None
    original = statements.append

    def append_then_fail(cursor: Any, batch: Any, clock: Any) -> None:
        original(cursor, batch, clock)       # rows inserted and head moved, then a failure
        raise RuntimeError("disk on fire")

    statements.append = append_then_fail  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        sink.record("login.success", "810000000002", {}, actor="810000000002")
    statements.append = original  # type: ignore[method-assign]
    assert _head(sqlite_store) == before
    with sqlite_store.read() as session:
        assert session.execute(select(AuditRecord).where(
            AuditRecord.target == "810000000002")).first() is None
    # the database is not left locked: another writer goes through at once
    done = threading.Event()
    threading.Thread(target=lambda: (StoreAuditSink(sqlite_store, SYSTEM_CLOCK).record(
        "x", "y", {}, actor="z"), done.set())).start()
    assert done.wait(5)
    # a batch with one record that cannot be written: the others are written, once
    errors: list[BaseException] = []

    def write(details: dict[str, Any]) -> None:
        try:
            sink.record("login.success", "810000000003", details, actor="810000000003")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=({"i": i} if i != 3 else
                                                    {("tuple", "key"): 1},)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 1
    sink.close()
    report = audit.verify(sqlite_store)
    assert report.problems == [] and report.records == 1 + 1 + 7


# --- findings ------------------------------------------------------------------------------
def test_one_content_type_on_token_answers(oidc: OidcServer) -> None:
    status, headers, _ = _call(oidc.app.wsgi_app, _environ(
        "POST", body=b"grant_type=x", CONTENT_TYPE="application/x-www-form-urlencoded"))
    assert status.startswith("400")
    assert [k.lower() for k, _ in headers].count("content-type") == 1, headers


def test_chunked_body_is_read_when_the_server_says_the_input_is_terminated() -> None:
    req = WebRequest(_environ("POST", CONTENT_LENGTH="", CONTENT_TYPE=
                              "application/x-www-form-urlencoded",
                              **{"wsgi.input": io.BytesIO(b"grant_type=x"),
                                 "wsgi.input_terminated": True}))
    assert req.form_pairs == [("grant_type", "x")]


def test_chunked_body_over_the_limit_is_413_without_reading_past_it() -> None:
    class Counting(io.BytesIO):
        asked = 0

        def read(self, size: int | None = -1) -> bytes:
            Counting.asked = size if size is not None else -1
            return super().read(size)

    stream = Counting(b"a=" + b"x" * (MAX_BODY + 10))
    front = OidcFront(lambda e, s: [], lambda: pytest.fail("provider reached"))
    status, _headers, _body = _call(front, _environ(
        "POST", path="/oidc/token", CONTENT_LENGTH="",
        CONTENT_TYPE="application/x-www-form-urlencoded",
        **{"wsgi.input": stream, "wsgi.input_terminated": True}))
    assert status.startswith("413")
    assert Counting.asked == MAX_BODY + 1


def test_deeply_nested_proof_is_a_refusal_not_a_500(oidc: OidcServer) -> None:
    c = oidc.app.test_client()
    response = c.post("/oidc/tx/" + "A" * 32 + "/proof", data=b"[" * 100_000,
                      content_type="application/json")
    assert response.status_code < 500


@pytest.mark.parametrize("path", ["/login", "/verify"])
def test_deeply_nested_json_on_flask_routes_is_a_400(oidc: OidcServer, path: str) -> None:
    c = oidc.app.test_client()
    response = c.post(path, data=b"[" * 100_000, content_type="application/json")
    assert 400 <= response.status_code < 500


def test_memory_state_nested_values_are_not_shared() -> None:
    s = MemoryState(FixedClock(dt.datetime.now(dt.UTC)))
    assert s.put("code:x", {"used": False, "subject": {"sid": "s1", "amr": ["hwk"]}}, 60)
    got = s.get("code:x")
    assert got is not None
    got["subject"]["sid"] = "attacker"
    got["subject"]["amr"].append("pin")
    assert s.get("code:x") == {"used": False, "subject": {"sid": "s1", "amr": ["hwk"]}}
