"""`cps-admin serve` as a user runs it: every role its own process behind one address.

Every URL of the single-process server answers through the one port; a role killed with
SIGKILL is restarted and its URLs answer again; SIGTERM stops everything and leaves no process.
``secrets/root.pin`` is moved out of the home first: no role of ``serve`` needs the root.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp

from pki.ca.hierarchy import init_home
from tests.roles.processes import alive, descendants, free_port, serve_pids, wait_health

BIN = Path(sys.executable).parent
CA = "ac-igc-sante-fort-personnes"


def _get(url: str, data: bytes | None = None,
         ctype: str | None = None) -> tuple[int, bytes, str]:
    req = urllib.request.Request(url, data=data)
    if ctype:
        req.add_header("Content-Type", ctype)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read(), resp.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers.get("Content-Type", "")


def _ocsp_requests(home: Path) -> tuple[bytes, bytes]:
    """A request for a certificate the signer pre-signed (the CA's OCSP responder), and one
    with a nonce for a serial never issued (signed live by the signer, through status)."""
    with sqlite3.connect(home / "cps.db") as db:
        ca_der, ca_id = db.execute("SELECT cert_der, id FROM ca WHERE slug = ?", (CA,)).fetchone()
        (responder_der,) = db.execute("SELECT der FROM certificate WHERE ca_id = ? AND "
                                      "profile = 'ocsp' ORDER BY id DESC", (ca_id,)).fetchone()
    issuer = x509.load_der_x509_certificate(ca_der)
    known = ocsp.OCSPRequestBuilder().add_certificate(
        x509.load_der_x509_certificate(responder_der), issuer, hashes.SHA1()).build()
    fake = x509.load_der_x509_certificate(responder_der)
    builder = ocsp.OCSPRequestBuilder().add_certificate_by_hash(
        known.issuer_name_hash, known.issuer_key_hash, fake.serial_number ^ 0x5A5A5A,
        hashes.SHA1()).add_extension(x509.OCSPNonce(os.urandom(16)), critical=False)
    return known.public_bytes(Encoding.DER), builder.build().public_bytes(Encoding.DER)


def _check_every_url(base: str, home: Path) -> None:
    status, body, _ = _get(base + "/health")
    assert (status, json.loads(body)) == (200, {"status": "ok"})
    for suffix in ("", "-delta"):
        status, body, ctype = _get(f"{base}/crl/{CA}{suffix}.crl")
        assert status == 200 and ctype == "application/pkix-crl"
        x509.load_der_x509_crl(body)
    status, body, ctype = _get(f"{base}/ca/{CA}.crt")
    assert status == 200 and ctype == "application/pkix-cert"
    assert "AC IGC-SANTE FORT PERSONNES" in x509.load_der_x509_certificate(body).subject \
        .rfc4514_string()
    known, live = _ocsp_requests(home)
    status, body, ctype = _get(base + "/ocsp/" + base64.b64encode(known).decode())
    assert status == 200 and ctype == "application/ocsp-response"
    answer = ocsp.load_der_ocsp_response(body)
    assert answer.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
    assert answer.certificate_status == ocsp.OCSPCertStatus.GOOD
    status, body, _ = _get(base + "/ocsp", live, "application/ocsp-request")
    answer = ocsp.load_der_ocsp_response(body)
    assert status == 200 and answer.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
    assert answer.certificate_status != ocsp.OCSPCertStatus.GOOD     # never issued
    status, body, _ = _get(base + "/.well-known/jwks.json")
    assert status == 200 and json.loads(body)["keys"]
    status, body, _ = _get(base + "/openapi.json")
    assert status == 200 and "paths" in json.loads(body)
    status, body, _ = _get(base + "/metrics")
    assert status == 404                    # operators only: the status role's --metrics-port
    status, body, ctype = _get(base + "/espace/signin")
    assert status == 200 and ctype.startswith("text/html")
    status, _, _ = _get(base + "/crl/no-such-ca.crl")
    assert status == 404


def test_serve_routes_every_url_restarts_a_killed_role_and_stops_on_sigterm(
        tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    home = tmp_path / "home"
    init_home(home, key_type="p256", base_url=base)
    away = tmp_path / "offline"
    away.mkdir()
    for name in ("root.pin", "root-so.pin"):
        if (home / "secrets" / name).exists():
            (home / "secrets" / name).rename(away / name)
    assert (away / "root.pin").exists()
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([str(BIN / "cps-admin"), "--home", str(home), "serve",
                                 "--port", str(port)], stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "CPS_HOME": str(home)})
    everything: list[int] = []
    try:
        wait_health(base, proc, log_path)
        lines = log_path.read_text().splitlines()
        assert lines[0].startswith(f"supervisor pid {proc.pid}: front on {base}")
        assert [line.split()[0] for line in lines[1:5]] == ["signer", "status", "broker",
                                                            "patient"]
        assert "may sign" in lines[1] and "may sign" not in "".join(lines[2:5])
        _check_every_url(base, home)

        for role, url in (("status", f"/ca/{CA}.crt"), ("broker", "/openapi.json")):
            old = serve_pids(log_path)[role]
            everything += descendants(old)
            os.kill(old, signal.SIGKILL)
            deadline = time.monotonic() + 60
            while serve_pids(log_path)[role] == old or _get(base + url)[0] != 200:
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.2)
            assert f"{role} pid {old} exited with status -9" in log_path.read_text()
        wait_health(base, proc, log_path)
        _check_every_url(base, home)

        everything += descendants(proc.pid)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=40)
        assert proc.returncode in (0, -signal.SIGTERM)
        assert [pid for pid in everything if alive(pid)] == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in everything:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_several_web_workers_without_redis_are_refused_before_anything_starts(
        tmp_path: Path) -> None:
    """Without Redis each worker would keep its own login challenges: a challenge issued by
    one worker and answered to the other would fail half the logins."""
    home = tmp_path / "home"
    init_home(home, key_type="p256")
    for role in ([], ["--role", "broker"], ["--role", "patient"]):
        done = subprocess.run([str(BIN / "cps-admin"), "--home", str(home), "serve", *role,
                               "--workers", "2", "--port", str(free_port())],
                              capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 2, (role, done.stderr)
        assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1
        assert "need Redis" in done.stderr and done.stdout == ""
