"""Crash consistency: kill -9 at random points of issuance, revocation, CRL publication and OCSP
pre-signing, on SQLite and on PostgreSQL; then nothing may be lost or doubled.

Acknowledged revocation = the child printed (and flushed) the serial after ``lifecycle.revoke``
returned, or a ``bench-populate`` that ran to completion. After every kill: no serial stored
twice (unique column + the DER serials), every stored certificate has its audit link, CRL
numbers strictly increasing, the audit chain intact. At the end: the next CRL and the restarted
responder's OCSP answers list every acknowledged revocation, `cps-admin audit verify` is clean.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from .helpers import (
    CPS_ADMIN,
    PERSONNES,
    Children,
    admin,
    cert_ders,
    children,
    crl_number,
    crl_serials,
    free_port,
    inspect_store,
    ocsp_status,
    record,
    rng,
    run_and_kill,
    scale,
    store_url,
    wait_health,
)

pytestmark = pytest.mark.timeout(1500)


def _issue_targets(url: str) -> set[str]:
    from sqlalchemy import select

    from pki.store.db import Store
    from pki.store.models import AuditRecord

    store = Store(url)
    try:
        with store.read() as session:
            return set(session.execute(select(AuditRecord.target)
                                       .where(AuditRecord.action == "cert.issue")).scalars())
    finally:
        store.dispose()


def check_consistent(url: str, what: str) -> dict[str, str]:
    view = inspect_store(url)
    assert not view.problems, f"after {what}: {view.problems[:10]}"
    missing_audit = {s for s in view.serials} - _issue_targets(url)
    # Responder certificates are stored by the responder module with their own audit action.
    missing_audit = {s for s in missing_audit if s in cert_ders(url, sorted(missing_audit))}
    assert not missing_audit, f"after {what}: certificates without audit link {missing_audit}"
    return view.serials


def newest_full_crl(url: str, slug: str) -> bytes:
    from sqlalchemy import select

    from pki.store.db import Store
    from pki.store.models import CertificateAuthority, Crl

    store = Store(url)
    try:
        with store.read() as session:
            return session.execute(
                select(Crl.der).join(CertificateAuthority, Crl.ca_id == CertificateAuthority.id)
                .where(CertificateAuthority.slug == slug, Crl.kind == "full")
                .order_by(Crl.number.desc()).limit(1)).scalar_one()
    finally:
        store.dispose()


@pytest.mark.parametrize("backend_url", ["sqlite", "postgres"], indirect=True)
def test_kill9_everywhere(backend_url: str | None, cli_home: Callable[..., Path],
                          tmp_path: Path) -> None:
    backend = "sqlite" if backend_url is None else "postgresql"
    if backend_url is not None:
        pytest.importorskip("psycopg",
                            reason="psycopg (dev extra) is needed for the PostgreSQL variant")
    random = rng()
    port = free_port()
    home = cli_home(backend_url, base_url=f"http://127.0.0.1:{port}")
    url = store_url(home)
    log = tmp_path / "children.log"
    trials = scale(2, 5)
    acknowledged: dict[str, str] = {}     # serial -> revoked | hold
    lost: dict[str, int] = {}

    # A population to work on: completed, so its revocations are acknowledged. Its duration
    # sets the kill window of the issuance runs (so that kills land mid-run, not after).
    t0 = time.monotonic()
    admin(home, "bench-populate", "--count", str(scale(300, 1000)), "--revoked-fraction", "0.2")
    populate_seconds = time.monotonic() - t0
    interrupted = {"issuance": 0, "revocation": 0, "crl": 0, "serve": 0}
    serials = check_consistent(url, "bench-populate")
    acknowledged.update({s: st for s, st in serials.items() if st in ("revoked", "hold")})

    with children() as kids:
        # 1. Batch issuance, killed.
        for i in range(trials):
            killed, code = run_and_kill(
                kids, [CPS_ADMIN, "bench-populate", "--count", str(scale(300, 600)),
                       "--revoked-fraction", "0.2"], home,
                random.uniform(1.0, max(3.0, 0.9 * populate_seconds)), log)
            interrupted["issuance"] += killed
            serials = check_consistent(url, f"bench-populate kill #{i}")
            if not killed:
                assert code == 0
                acknowledged.update({s: st for s, st in serials.items()
                                     if st in ("revoked", "hold")})
        lost["issuance"] = sum(1 for s, st in acknowledged.items()
                               if serials.get(s) != st)
        record("crash", "kill -9 during bench-populate (batch issuance)", backend, trials,
               lost["issuance"], "duplicate serials (store + DER), audit links, audit chain",
               f"{interrupted['issuance']} of {trials} killed mid-run")

        # 2. Revocation loop (lifecycle calls in a child), killed.
        for i in range(trials):
            active = [s for s, st in serials.items() if st == "active"]
            random.shuffle(active)
            todo = tmp_path / f"revoke-{i}.txt"
            # A third of what is left: later trials still find active certificates.
            todo.write_text("\n".join(active[:min(1000, len(active) // 3)]))
            out = tmp_path / f"revoker-{i}.out"
            with out.open("wb") as fh:
                proc = kids.start([sys.executable, "-m", "tests.reliability.revoker", str(home),
                                   str(todo), "--hold-every", "5"], home=home, stdout=fh,
                                  stderr=log.open("ab"))
                # Kill at a random point after the first acknowledgement (start-up varies a
                # lot on a loaded machine; killing before it would test nothing).
                deadline = time.monotonic() + 180
                while b"ACK " not in out.read_bytes() and proc.poll() is None:
                    assert time.monotonic() < deadline, "revoker acknowledged nothing"
                    time.sleep(0.05)
                try:
                    proc.wait(random.uniform(0.0, 3.0))
                except subprocess.TimeoutExpired:  # still running: that is the point
                    Children.kill9(proc)
                    interrupted["revocation"] += 1
            acks = [line.split() for line in out.read_text().splitlines()
                    if line.startswith("ACK ")]
            assert acks, "revoker acknowledged nothing"
            acknowledged.update({a[1]: a[2] for a in acks})
            serials = check_consistent(url, f"revoker kill #{i}")
        lost["revocation"] = sum(1 for s, st in acknowledged.items() if serials.get(s) != st)
        record("crash", "kill -9 during a revocation loop (lifecycle.revoke/hold)", backend,
               trials, lost["revocation"], "every acknowledged revocation in the store",
               f"{interrupted['revocation']} of {trials} killed mid-loop")
        assert lost["revocation"] == 0, [s for s, st in acknowledged.items()
                                         if serials.get(s) != st][:10]

        # 3. CRL publication, killed (after one timed complete run).
        t0 = time.monotonic()
        admin(home, "crl", "publish")
        full_run = time.monotonic() - t0
        for i in range(trials):
            killed, _ = run_and_kill(kids, [CPS_ADMIN, "crl", "publish"], home,
                                     random.uniform(0.5, full_run * 0.95), log)
            interrupted["crl"] += killed
            check_consistent(url, f"crl publish kill #{i}")
        record("crash", "kill -9 during `crl publish`", backend, trials, 0,
               "CRL numbers strictly increasing, DER number = row, audit chain",
               f"{interrupted['crl']} of {trials} killed mid-run")

        # 4. OCSP pre-signing at `serve` start-up, killed.
        for i in range(trials):
            killed, _ = run_and_kill(kids, [CPS_ADMIN, "serve", "--no-web", "--port",
                                            str(port)], home, random.uniform(1.0, 10.0), log)
            interrupted["serve"] += killed
            check_consistent(url, f"serve kill #{i}")

        # The next CRL lists every acknowledged revocation, with its hold/revoked nature.
        admin(home, "crl", "publish")
        der = newest_full_crl(url, PERSONNES)
        listed = crl_serials(der)
        missing_crl = sorted(s for s in acknowledged if s not in listed)
        wrong_kind = sorted(s for s, st in acknowledged.items() if s in listed
                            and (listed[s] == 6) != (st == "hold"))
        final = inspect_store(url)
        assert not final.problems
        extra = sorted(s for s in listed if final.serials.get(s) not in ("revoked", "hold"))
        lost["crl"] = len(missing_crl) + len(wrong_kind)
        record("crash", "acknowledged revocations missing from the next CRL", backend,
               len(acknowledged), lost["crl"], f"CRL #{crl_number(der)} parsed",
               f"{len(listed)} entries")
        assert not missing_crl and not wrong_kind and not extra, (missing_crl[:5],
                                                                  wrong_kind[:5], extra[:5])

        # The restarted responder answers revoked for each of them (and good for the others).
        with (tmp_path / "serve.log").open("ab") as slog:
            server = kids.admin(home, "serve", "--no-web", "--port", str(port), stdout=slog,
                                stderr=slog)
            base = f"http://127.0.0.1:{port}"
            wait_health(base, server)
            ders = cert_ders(url)
            good = [s for s, st in final.serials.items() if st == "active" and s in ders]
            sample = sorted(acknowledged) + random.sample(good, min(40, len(good)))
            if len(sample) > 300 and not scale(0, 1):
                sample = random.sample(sample, 300)
            wrong = []
            for serial in sample:
                want = "revoked" if serial in acknowledged else "good"
                got = ocsp_status(base, *ders[serial])
                if got != want:
                    wrong.append((serial, want, got))
            from .helpers import http_get

            status, served = http_get(f"{base}/crl/{PERSONNES}.crl")
            assert status == 200 and crl_number(served) == crl_number(der)
            record("crash", "kill -9 during OCSP pre-signing (`serve` start-up)", backend,
                   trials, len(wrong), f"{len(sample)} OCSP answers after restart",
                   "kill points spread over start-up, pre-signing and serving")
            assert not wrong, wrong[:10]
            Children.stop(server)
    admin(home, "audit", "verify")
    record("crash", "`audit verify` after all kills", backend, 4 * trials, 0,
           "hash chain + head")
