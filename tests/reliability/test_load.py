"""Sustained load on `cps-admin serve` (loopback): OCSP requests and full card logins for a
bounded time (CPS_LOAD_SECONDS; 25 s in `make test`, 180 s under `make reliability`).
Every answer must be a success, and the server's resident memory must stay flat (sampled
each second; growth after warm-up bounded)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from .helpers import (
    LONG,
    admin,
    cert_ders,
    children,
    env_for,
    free_port,
    http_post,
    ocsp_request,
    record,
    store_url,
    wait_health,
)

pytestmark = pytest.mark.timeout(900)
SECONDS = float(os.environ.get("CPS_LOAD_SECONDS", "180" if LONG else "25"))

CARD_SCRIPT = r"""
import sys
from pathlib import Path
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pki.ca.authority import Authority, IssueRequest
from tests.conftest import add_professional

home, out = Path(sys.argv[1]), Path(sys.argv[2])
auth = Authority.open(home)
rpps = add_professional(auth, body="1000777777")
key = ec.generate_private_key(ec.SECP256R1())
issued = auth.issue(IssueRequest(profile="auth", public_key=key.public_key(), rpps=rpps))
(out / "card.der").write_bytes(issued.der)
(out / "card.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
    serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
auth.close()
"""


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def test_serve_under_ocsp_and_login_load(cli_home: Callable[..., Path], tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509 import ocsp

    from cps_login.proof import login_message

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    home = cli_home(None, base_url=base)
    admin(home, "bench-populate", "--count", "200", "--revoked-fraction", "0.2")
    subprocess.run([sys.executable, "-c", CARD_SCRIPT, str(home), str(tmp_path)], check=True,
                   env=env_for(home), timeout=300)
    card_der = (tmp_path / "card.der").read_bytes()
    key = serialization.load_pem_private_key((tmp_path / "card.key").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    requests = [ocsp_request(*pair) for pair in list(cert_ders(store_url(home)).values())[:100]]

    counts = {"ocsp": 0, "login": 0}
    errors: list[str] = []
    stop = threading.Event()

    def ocsp_worker(offset: int) -> None:
        i = offset
        while not stop.is_set():
            status, body = http_post(base + "/ocsp", requests[i % len(requests)],
                                     "application/ocsp-request")
            i += 1
            if status != 200 or ocsp.load_der_ocsp_response(body).response_status != \
                    ocsp.OCSPResponseStatus.SUCCESSFUL:
                errors.append(f"ocsp {status}")
            else:
                counts["ocsp"] += 1

    def login_worker() -> None:
        while not stop.is_set():
            status, body = http_post(base + "/login/challenge", b"{}", "application/json")
            if status != 200:
                errors.append(f"challenge {status} {body[:200]!r}")
                continue
            issued = json.loads(body)
            challenge = base64.b64decode(issued["challenge"])
            signature = key.sign(login_message(challenge, issued["broker"]),
                                 ec.ECDSA(hashes.SHA256()))
            status, body = http_post(base + "/login", json.dumps({
                "certificate": base64.b64encode(card_der).decode(),
                "challenge": issued["challenge"],
                "signature": base64.b64encode(signature).decode()}).encode(),
                "application/json")
            if status != 200 or "access_token" not in json.loads(body):
                errors.append(f"login {status} {body[:200]!r}")
            else:
                counts["login"] += 1

    samples: list[int] = []
    with children() as kids, (tmp_path / "serve.log").open("ab") as log:
        server = kids.admin(home, "serve", "--port", str(port), stdout=log, stderr=log)
        wait_health(base, server)
        workers = [threading.Thread(target=ocsp_worker, args=(i * 17,), daemon=True)
                   for i in range(3)] + [threading.Thread(target=login_worker, daemon=True)]
        for w in workers:
            w.start()
        deadline = time.monotonic() + SECONDS
        while time.monotonic() < deadline:
            samples.append(rss_kb(server.pid))
            assert server.poll() is None, "server died under load"
            time.sleep(1.0)
        stop.set()
        for w in workers:
            w.join(60)
    warm = samples[len(samples) // 3:]
    growth_kb = max(warm) - warm[0]
    allowed_kb = max(40_000, warm[0] // 5)        # 40 MB or 20 %, whichever is larger
    record("load", f"OCSP + login load on `serve` for {SECONDS:.0f} s", "sqlite",
           counts["ocsp"] + counts["login"], len(errors),
           f"{counts['ocsp']} OCSP, {counts['login']} logins; RSS {warm[0] // 1024}"
           f"→{warm[-1] // 1024} MB after warm-up (max +{growth_kb // 1024} MB)")
    assert not errors, errors[:10]
    assert counts["login"] > 0 and counts["ocsp"] > 0
    assert growth_kb <= allowed_kb, f"RSS grew {growth_kb} kB after warm-up: {samples}"
