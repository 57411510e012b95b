"""Database loss: a PostgreSQL instance of the test's own is killed (-9) under OCSP load.

While it is down: OCSP keeps answering from pre-signed responses (no error), `cps-admin`
commands exit non-zero with one `error:` line naming the database, and nothing is half-written.
Once it is back (same port, crash recovery): the running server's next DB-backed operation (the
status watcher) works again without any manual step, and a new revocation reaches OCSP.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from .helpers import (
    PrivatePostgres,
    admin,
    cert_ders,
    children,
    free_port,
    inspect_store,
    ocsp_status,
    record,
    scale,
    store_url,
    wait_health,
)

pytestmark = pytest.mark.timeout(900)


class OcspLoad(threading.Thread):
    def __init__(self, base: str, certs: list[tuple[bytes, bytes]]) -> None:
        super().__init__(daemon=True)
        self.base, self.certs = base, certs
        self.stop = threading.Event()
        self.ok = 0
        self.errors: list[str] = []

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            got = ocsp_status(self.base, *self.certs[i % len(self.certs)])
            if got in ("good", "revoked"):
                self.ok += 1
            else:
                self.errors.append(got)
            i += 1


def _one_error_line(stderr: str) -> bool:
    lines = [line for line in stderr.splitlines() if line.strip()]
    return len(lines) == 1 and lines[0].startswith("error:") and "database" in lines[0].lower()


def test_database_killed_under_load(private_pg: PrivatePostgres, cli_home: Callable[..., Path],
                                    tmp_path: Path) -> None:
    port = free_port()
    home = cli_home(private_pg.url, base_url=f"http://127.0.0.1:{port}")
    url = store_url(home)
    admin(home, "bench-populate", "--count", "60")
    ders = cert_ders(url)
    serials = sorted(ders)
    trials = scale(2, 5)
    refused_ok = half_written = 0
    with children() as kids, (tmp_path / "serve.log").open("ab") as log:
        server = kids.admin(home, "serve", "--port", str(port), stdout=log, stderr=log)
        base = f"http://127.0.0.1:{port}"
        wait_health(base, server)
        load = OcspLoad(base, [ders[s] for s in serials[:20]])
        load.start()
        try:
            for trial in range(trials):
                victim, later = serials[20 + 2 * trial], serials[21 + 2 * trial]
                private_pg.kill()
                before = load.ok
                # The CLI refuses cleanly: exit non-zero, one `error:` line naming the database.
                for args in (["cert", "revoke", victim, "--reason", "keyCompromise"],
                             ["crl", "publish"], ["cert", "list"]):
                    proc = admin(home, *args, check=False, timeout=180)
                    assert proc.returncode != 0, (args, proc.stdout)
                    assert _one_error_line(proc.stderr), (args, proc.stderr)
                    refused_ok += 1
                deadline = time.monotonic() + 60
                while load.ok < before + 50 and time.monotonic() < deadline:
                    time.sleep(0.2)
                assert load.ok >= before + 50, "OCSP stopped answering while the DB was down"
                assert server.poll() is None, "server died with the database"

                private_pg.start()
                # Nothing half-written: the refused revocation did not happen.
                view = inspect_store(url)
                assert not view.problems, view.problems
                if view.serials[victim] != "active":
                    half_written += 1
                # Recovery without manual steps: the CLI works, and the running server's
                # watcher (a DB-backed operation) picks the new revocation up.
                admin(home, "cert", "revoke", later, "--reason", "keyCompromise", timeout=180)
                deadline = time.monotonic() + 90
                while ocsp_status(base, *ders[later]) != "revoked":
                    assert time.monotonic() < deadline, "server did not recover from DB loss"
                    time.sleep(0.3)
                status, body = _health(base)
                assert status == 200, body
        finally:
            load.stop.set()
            load.join(60)
        assert not load.errors, load.errors[:10]
        record("db loss", "PostgreSQL killed -9 under OCSP load (private instance)",
               "postgresql", trials, len(load.errors) + half_written,
               f"{load.ok} OCSP answers, {refused_ok} CLI refusals with one error: line, "
               "recovery of the running server")
    admin(home, "audit", "verify", timeout=180)


def _health(base: str) -> tuple[int, bytes]:
    from .helpers import http_get

    return http_get(base + "/health")
