"""Every bench in bench/ runs to its end on a small population.

The figures are not checked here (timed tests would only measure the CI machine): what is
checked is that each bench still runs against the current code and prints its comparison. Two
benches had broken without anyone noticing — crl.py warmed up on the root CA after its key went
offline, incident.py waited six minutes for a new full CRL that a small burst never triggers —
because `make bench` is run by hand. The card bench is left out: it starts its own pcscd, and
there is one pcscd per machine (the test suite's).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

CASES = {
    "crl": (["--sizes", "2000", "--changes", "6"],
            ["ratio openssl / project", "peak memory of publish_full",
             "delta CRL with 6 changes"]),
    "incident": (["--count", "400", "--control", "40", "--reference-calls", "1"],
                 ["CRLs listing them published", "verify OK; 0 wrong", "-> met"]),
    "ocsp": (["--count", "10000", "--revoked-fraction", "0.02", "--duration", "1",
              "--rounds", "1", "--openssl-requests", "40"],
             ["ratio status/openssl"]),
    "status_servers": (["--count", "10000", "--duration", "1", "--rounds", "1"],
                       ["asyncio/uvicorn"]),
    "ready": (["--count", "3000"], ["goal (status)"]),
    "issuance": (["--count", "10", "--raw-seconds", "0.2", "--key-type", "p256"],
                 ["HSM signature"]),
    "login": (["--logins", "60", "--cards", "4", "--no-card", "--seconds", "0.3"],
              ["broker, revocation over HTTP OCSP", "access decisions/s"]),
    "oidc": (["--logins", "40", "--rounds", "1", "--cards", "4", "--threads", "2"],
             ["OIDC code flow", "its own card login", "Keycloak"]),
    "tsa": (["--budget", "0.2"], ["tsa role over HTTP"]),
    "verify": (["--signatures", "30", "--cards", "2", "--sample", "4"],
               ["openssl cms -verify", "goal >= 2,000/s per core"]),
}

# Printed by a bench that failed on the way, or whose own checks found something wrong.
ALARMS = ("Traceback", "was published as revoked but")


@pytest.mark.parametrize("name", sorted(CASES))
def test_bench_runs(name: str, tmp_path: Path) -> None:
    args, expected = CASES[name]
    env = dict(os.environ, TMPDIR=str(tmp_path))
    run = subprocess.run([sys.executable, str(ROOT / "bench" / f"{name}.py"), *args],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-4000:]
    for text in expected:
        assert text in out, f"{name}: {text!r} missing from\n{out[-4000:]}"
    for alarm in ALARMS + (("NOT met",) if name == "incident" else ()):
        assert alarm not in out, f"{name}: {alarm!r} in\n{out[-4000:]}"
