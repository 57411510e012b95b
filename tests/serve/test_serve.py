"""`cps-admin serve` as a user runs it: one process, every endpoint, a clean stop on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from cryptography import x509

from pki.ca.hierarchy import init_home

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read(), resp.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers.get("Content-Type", "")


def test_serve_answers_everything_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    home = tmp_path / "home"
    init_home(home, key_type="p256", base_url=base)
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen([str(BIN / "cps-admin"), "--home", str(home), "serve", "--port",
                             str(port)], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "CPS_HOME": str(home)})
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                status, body, _ = _get(base + "/health")
                if status == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "server never became ready"
            time.sleep(0.2)
        assert json.loads(body) == {"status": "ok"}

        status, body, ctype = _get(base + "/crl/ac-igc-sante-fort-personnes.crl")
        assert status == 200 and ctype == "application/pkix-crl"
        x509.load_der_x509_crl(body)
        status, body, ctype = _get(base + "/ca/ac-igc-sante-fort-personnes.crt")
        assert status == 200 and ctype == "application/pkix-cert"
        assert "AC IGC-SANTE FORT PERSONNES" in x509.load_der_x509_certificate(body).subject \
            .rfc4514_string()
        status, body, _ = _get(base + "/.well-known/jwks.json")
        assert status == 200 and json.loads(body)["keys"]
        status, body, _ = _get(base + "/openapi.json")
        assert status == 200 and "paths" in json.loads(body)
        status, body, _ = _get(base + "/metrics")
        assert status == 200 and b"# TYPE" in body
        status, _, _ = _get(base + "/crl/no-such-ca.crl")
        assert status == 404

        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        assert proc.returncode in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
