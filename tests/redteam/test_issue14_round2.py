"""Issue 14, round 2 red-team probes: the broker's gunicorn AsyncioWorker (7baeeac) and the
browser transaction's own challenge (88e1db3). Each test asserts the SECURE behaviour: a
failing one is a finding."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.oidc.conftest import OidcServer
from tests.servers import stop_process

ROOT = Path(__file__).resolve().parents[2]

APP = textwrap.dedent('''
    import json, time
    from cps_login.web.proxy import TrustedProxies

    def inner(environ, start_response):
        if environ["PATH_INFO"] == "/slow":
            time.sleep(3)
        body = json.dumps({"remote": environ["REMOTE_ADDR"],
                           "scheme": environ["wsgi.url_scheme"],
                           "len": len(environ["wsgi.input"].read())}).encode()
        start_response("200 OK", [("Content-Type", "application/json"),
                                  ("Content-Length", str(len(body)))])
        return [body]

    # as create_broker_app: the front (127.0.0.1) is a trusted proxy
    app = TrustedProxies(inner, ["127.0.0.1/32"])
''')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """gunicorn, one AsyncioWorker, the broker role's options (roles._options)."""
    (tmp_path / "probe_app.py").write_text(APP)
    port = _free_port()
    env = {**os.environ, "CPS_WORKER_CPU_AFFINITY": "0",
           "PYTHONPATH": f"{tmp_path}:{ROOT}"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-k", "pki.http.gunicorn_worker.AsyncioWorker",
         "-w", "1", "--threads", "8", "--timeout", "30", "--graceful-timeout", "10",
         "--keep-alive", "5", "-b", f"127.0.0.1:{port}", "probe_app:app"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if _get(port, "/x").startswith(b"HTTP/1.1 200"):
                break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        raise AssertionError(proc.stderr.read().decode() if proc.stderr else "no start")
    yield port, proc
    stop_process(proc, signal.SIGINT, 15)


def _raw(port: int, data: bytes, timeout: float = 10) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            out += chunk
        return out


def _get(port: int, path: str, extra: bytes = b"") -> bytes:
    return _raw(port, f"GET {path} HTTP/1.1\r\nHost: b\r\nConnection: close\r\n".encode()
                + extra + b"\r\n")


def test_metrics_are_not_public_on_the_broker_port(worker: tuple[int, Any]) -> None:
    """pki.http.server: '/metrics is never public'; gunicorn_worker builds HttpServer with the
    default metrics_public=True, so the broker's public port now answers it."""
    port, _ = worker
    answer = _get(port, "/metrics")
    assert b"http_open_connections" not in answer, answer[:300]


def test_underscore_forwarded_for_is_not_the_client(worker: tuple[int, Any]) -> None:
    """gthread (gunicorn 27, header_map=drop) drops X_Forwarded_For; run_wsgi maps it onto
    HTTP_X_FORWARDED_FOR, and the later field wins (a proxy that writes its own
    X-Forwarded-For first, e.g. Go's ReverseProxy sorts fields: X-Forwarded-For < X_...)."""
    port, _ = worker
    answer = _get(port, "/x", b"X-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Proto: http\r\n"
                              b"X_Forwarded_For: 6.6.6.6\r\nX_Forwarded_Proto: https\r\n")
    assert b'"remote": "10.0.0.1"' in answer, answer
    assert b'"scheme": "http"' in answer, answer


def test_a_few_idle_heads_do_not_refuse_everyone_elses_posts(worker: tuple[int, Any]) -> None:
    """MAX_BODY = 8 MiB and Limits.max_buffered_bodies = 32 MiB: four anonymous heads that
    declare 8 MiB (and send nothing) reserve the whole budget for body_timeout (30 s); any
    POST whose body arrives after its head (browsers, uploads) is then 503 (Flask's own
    limit is 256 KiB)."""
    port, _ = worker
    hogs = []
    for _ in range(4):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"POST /oidc/token HTTP/1.1\r\nHost: b\r\nContent-Length: 8388608\r\n\r\nx")
        hogs.append(s)
    time.sleep(0.3)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"POST /oidc/tx/t/proof HTTP/1.1\r\nHost: b\r\nContent-Length: 2\r\n"
                      b"Connection: close\r\n\r\n")
            time.sleep(0.2)
            s.sendall(b"{}")
            answer = s.recv(65536)
    finally:
        for s in hogs:
            s.close()
    assert answer.startswith(b"HTTP/1.1 200"), answer


def test_sigterm_lets_a_request_in_flight_finish(worker: tuple[int, Any]) -> None:
    port, proc = worker
    s = socket.create_connection(("127.0.0.1", port), timeout=15)
    s.sendall(b"GET /slow HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
    time.sleep(1.5)
    proc.send_signal(signal.SIGTERM)
    answer = s.recv(65536)
    s.close()
    assert answer.startswith(b"HTTP/1.1 200"), answer


def test_a_restarted_worker_does_not_share_a_cpu_while_another_is_idle() -> None:
    """pin_worker uses gunicorn's age, which only grows: two workers on two CPUs (ages 1, 2 ->
    CPUs 0, 1); worker 2 is killed (heartbeat timeout, crash) and its successor is age 3 ->
    CPU 0, with worker 1: one CPU idle, the broker at half its capacity until the next
    restart happens to land right."""
    from pki.http.gunicorn_worker import worker_cpu

    cpus = {0, 1}
    first = worker_cpu(1, cpus)
    assert first is not None
    # age 2 died, age 3 replaces it and sees worker 1 pinned (sibling_cpus)
    alive = {1: first, 3: worker_cpu(3, cpus, {first: 1})}
    assert len(set(alive.values())) == 2, alive


# --- the transaction's own challenge ---------------------------------------------------------
def test_a_proof_that_fails_after_the_claim_does_not_strand_the_tx(
        oidc: OidcServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """browser.proof: subject_of (and the final CAS) run outside the try that puts the tx back
    to pending: an exception there leaves it 'proving' until it expires; the agent's retry and
    the user's then get invalid_transaction for up to TX_TTL."""
    import base64
    import re

    import requests

    from cps_login.oidc import browser as browser_mod
    from tests.oidc.conftest import Browser
    from tests.oidc.test_refusals import authorize_url

    client = oidc.client()
    b = Browser(oidc)
    page = b.session.get(authorize_url(oidc, client.client_id, "v" * 50), timeout=10)
    found = re.search(r"tx=([A-Za-z0-9_-]+)&amp;challenge=([A-Za-z0-9_-]{43})\"", page.text)
    assert found
    tx = found.group(1)
    challenge = base64.b64encode(base64.urlsafe_b64decode(found.group(2) + "=")).decode()
    real = browser_mod.subject_of
    calls = {"n": 0}

    def flaky(provider: Any, result: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("transient failure after the claim")
        return real(provider, result)

    monkeypatch.setattr(browser_mod, "subject_of", flaky)
    body = oidc.card_proof(oidc.env.cards["alice"], challenge)
    first = requests.post(f"{oidc.issuer}/oidc/tx/{tx}/proof", json=body, timeout=30)
    assert first.status_code >= 500
    asked = requests.get(f"{oidc.issuer}/oidc/tx/{tx}/challenge", timeout=10)
    assert asked.status_code == 200, asked.text        # the tx waits again, as after a refusal

