"""/metrics is not public on the status role (issue 13, item 11): it is served on a private
address (``--metrics-port``, 127.0.0.1) or behind a bearer token from a secret file."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from pki.ca.hierarchy import init_home
from pki.http.server import HttpServer
from tests.servers import free_port, run_server

from .conftest import ROOT


def _get(url: str, token: str | None = None) -> int:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"}
                                 if token else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert b"http_responses_total" in resp.read()
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("metrics") / "home"
    init_home(home, key_type="p256")
    return home


@pytest.fixture
def status_role(home: Path, tmp_path: Path) -> Iterator[object]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(*extra: str) -> int:
        port = free_port()
        log = (tmp_path / f"status-{len(procs)}.log").open("wb")
        proc = subprocess.Popen([sys.executable, "-m", "pki.cli.admin", "--home", str(home),
                                 "serve", "--role", "status", "--port", str(port), *extra],
                                stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                env={**os.environ, "CPS_HOME": str(home)})
        procs.append(proc)
        deadline = time.monotonic() + 60
        while True:
            try:                       # listening is enough: ready needs a signer's records
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    return port
            except urllib.error.HTTPError:
                time.sleep(0.2)            # the metrics listener starts right after
                return port
            except OSError:
                assert proc.poll() is None, (tmp_path / f"status-{len(procs) - 1}.log") \
                    .read_text()
                assert time.monotonic() < deadline, "status role not ready"
                time.sleep(0.2)

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(20)


def test_status_role_serves_metrics_on_its_private_port_only(status_role: object) -> None:
    metrics = free_port()
    port = status_role("--metrics-port", str(metrics))  # type: ignore[operator]
    assert _get(f"http://127.0.0.1:{port}/metrics") == 404
    assert _get(f"http://127.0.0.1:{metrics}/metrics") == 200


def test_status_role_metrics_behind_a_bearer_token(status_role: object, tmp_path: Path) -> None:
    secret = tmp_path / "metrics.token"
    secret.write_text("s3cret-token\n")
    secret.chmod(0o600)
    port = status_role("--metrics-token-file", str(secret))  # type: ignore[operator]
    url = f"http://127.0.0.1:{port}/metrics"
    assert _get(url) == 401
    assert _get(url, "wrong") == 401
    assert _get(url, "s3cret-token") == 200


def test_status_role_without_metrics_options_serves_no_metrics(status_role: object) -> None:
    port = status_role()  # type: ignore[operator]
    assert _get(f"http://127.0.0.1:{port}/metrics") == 404


def test_an_unreadable_token_file_is_one_error_line(home: Path, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "pki.cli.admin", "--home", str(home), "serve",
                           "--role", "status", "--port", str(free_port()),
                           "--metrics-token-file", str(tmp_path / "missing")],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode != 0
    assert proc.stderr.startswith("error: cannot read the metrics token file")
    assert len(proc.stderr.splitlines()) == 1


def test_http_server_metrics_access_rules() -> None:
    for public, token, expected in ((False, None, 404), (True, None, 200), (False, "t", 401)):
        running = run_server(HttpServer([], metrics_public=public, metrics_token=token))
        try:
            assert _get(f"http://127.0.0.1:{running.port}/metrics") == expected
        finally:
            running.close()
