"""Concurrency on PostgreSQL: processes issuing and revoking at once.

Two `bench-populate` processes issue while two revokers race on the *same* serials (shuffled
differently). In bounded time (no deadlock), there must be no duplicate serial, exactly one
successful revocation per serial (the other process is refused: no lost update, no double
event), and the published CRL and the responder's OCSP answers agree with the store.
"""

from __future__ import annotations

import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import func, select

from .helpers import (
    CPS_ADMIN,
    PERSONNES,
    Children,
    admin,
    cert_ders,
    children,
    crl_serials,
    free_port,
    inspect_store,
    ocsp_status,
    record,
    scale,
    store_url,
    wait_health,
)
from .test_crash import newest_full_crl

pytestmark = pytest.mark.timeout(1200)
BOUND = 600.0   # seconds: anything slower is treated as a deadlock


def test_concurrent_issue_and_revoke(pg_url: str, cli_home: Callable[..., Path],
                                     tmp_path: Path) -> None:
    port = free_port()
    home = cli_home(pg_url, base_url=f"http://127.0.0.1:{port}")
    url = store_url(home)
    base_count, each = scale(120, 1000), scale(120, 1000)
    admin(home, "bench-populate", "--count", str(base_count))
    targets = sorted(s for s, st in inspect_store(url).serials.items() if st == "active")
    targets = [s for s in targets if s in cert_ders(url, targets)][:scale(100, 600)]
    log = (tmp_path / "children.log").open("ab")
    with children() as kids:
        procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        for i in range(2):
            procs.append((f"issuer-{i}", kids.start(
                [CPS_ADMIN, "bench-populate", "--count", str(each), "--revoked-fraction", "0.2"],
                home=home, stdout=log, stderr=log)))
        outs = []
        for i in range(2):
            order = list(targets)
            random.Random(i).shuffle(order)
            todo = tmp_path / f"revoke-{i}.txt"
            todo.write_text("\n".join(order))
            out = tmp_path / f"revoker-{i}.out"
            outs.append(out)
            procs.append((f"revoker-{i}", kids.start(
                [sys.executable, "-m", "tests.reliability.revoker", str(home), str(todo)],
                home=home, stdout=out.open("wb"), stderr=log)))
        for name, proc in procs:
            try:
                code = proc.wait(BOUND)
            except subprocess.TimeoutExpired:
                pytest.fail(f"{name} still running after {BOUND} s: deadlock?")
            assert code == 0, f"{name} exited {code}: see {tmp_path / 'children.log'}"

        acks: dict[str, int] = {}
        for out in outs:
            for line in out.read_text().splitlines():
                kind, serial = line.split()[:2]
                if kind == "ACK":
                    acks[serial] = acks.get(serial, 0) + 1
        doubled = [s for s, n in acks.items() if n != 1]
        missing = [s for s in targets if s not in acks]

        view = inspect_store(url)
        assert not view.problems, view.problems[:10]
        from pki.store.db import Store
        from pki.store.models import Certificate, StatusEvent

        store = Store(url)
        try:
            with store.read() as session:
                events = dict(session.execute(
                    select(Certificate.serial, func.count(StatusEvent.id))
                    .join(StatusEvent, StatusEvent.certificate_id == Certificate.id)
                    .where(StatusEvent.event == "revoke", Certificate.serial.in_(targets))
                    .group_by(Certificate.serial)).all())
        finally:
            store.dispose()
        double_events = [s for s in targets if events.get(s) != 1]
        not_revoked = [s for s in targets if view.serials[s] != "revoked"]
        ee = sum(1 for s in cert_ders(url))
        lost = len(doubled) + len(missing) + len(double_events) + len(not_revoked)
        lost += abs(ee - (base_count + 2 * each))
        record("concurrency", "2 issuers + 2 revokers racing on the same serials",
               "postgresql", len(targets), lost,
               "one ACK and one revoke event per serial, no duplicate serial, count issued",
               f"{ee} certificates, bounded at {BOUND:.0f} s")
        assert not doubled and not missing and not double_events and not not_revoked, (
            doubled[:5], missing[:5], double_events[:5], not_revoked[:5])
        assert ee == base_count + 2 * each

        # The CRL and OCSP views agree with the store.
        admin(home, "crl", "publish")
        listed = crl_serials(newest_full_crl(url, PERSONNES))
        ders = cert_ders(url)
        revoked_store = {s for s in view.revoked if s in ders}
        assert set(listed) == revoked_store, (set(listed) ^ revoked_store)
        server = kids.admin(home, "serve", "--no-web", "--port", str(port), stdout=log,
                            stderr=log)
        wait_health(f"http://127.0.0.1:{port}", server)
        rnd = random.Random(7)
        sample = rnd.sample(sorted(ders), min(len(ders), scale(150, 2000)))
        disagree = []
        for serial in sample:
            want = "revoked" if serial in revoked_store else "good"
            got = ocsp_status(f"http://127.0.0.1:{port}", *ders[serial])
            if got != want:
                disagree.append((serial, want, got))
        Children.stop(server)
        record("concurrency", "OCSP and CRL views vs the store after the race", "postgresql",
               len(sample) + len(listed), len(disagree), "CRL parsed, OCSP over HTTP")
        assert not disagree, disagree[:10]
    admin(home, "audit", "verify")
