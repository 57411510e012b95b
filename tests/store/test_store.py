"""The store on SQLite and PostgreSQL: unique serials, tamper-evident audit, concurrent writers."""

from __future__ import annotations

import datetime as dt
import multiprocessing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import add_professional  # tests/conftest.py helpers
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import func, select, text, update

from pki import audit
from pki.ca import lifecycle
from pki.ca.authority import Authority, IssueRequest
from pki.ca.hierarchy import init_home
from pki.errors import Duplicate, InvalidTransition
from pki.store.models import AuditHead, AuditRecord, Certificate, StatusEvent

KEY = rsa.generate_private_key(65537, 2048).public_key()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_auth(request: pytest.FixtureRequest,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Authority]:
    db_url = request.getfixturevalue("pg_url") if request.param == "postgresql" else None
    home = tmp_path_factory.mktemp(f"store-{request.param}") / "cps"
    init_home(home, key_type="p256", db_url=db_url)
    auth = Authority.open(home)
    assert auth.store.dialect == request.param
    try:
        yield auth
    finally:
        auth.close()


def _issue(auth: Authority, n: int = 1) -> list[str]:
    rpps = add_professional(auth, "1000777000")
    return [c.serial for c in auth.issue_many(
        [IssueRequest("auth", KEY, rpps=rpps) for _ in range(n)])]


def test_unique_serial_constraint(db_auth: Authority) -> None:
    (serial,) = _issue(db_auth)
    with db_auth.store.read() as s:
        row = s.execute(select(Certificate).where(Certificate.serial == serial)).scalar_one()
        clone = {c.name: getattr(row, c.key) for c in Certificate.__table__.columns
                 if c.name != "id"}
    with pytest.raises(Duplicate), db_auth.store.session() as s:
        s.add(Certificate(**clone))
    with db_auth.store.read() as s:
        assert s.execute(select(func.count()).select_from(Certificate)
                         .where(Certificate.serial == serial)).scalar_one() == 1


def test_batch_issue_ids_rows_and_links(db_auth: Authority) -> None:
    """Bulk INSERT .. RETURNING: each certificate gets its own row's id, across batches."""
    rpps = add_professional(db_auth, "1000777000")
    issued = list(db_auth.issue_many([IssueRequest(p, KEY, rpps=rpps)
                                      for p in ("auth", "sign") * 3], batch_size=4))
    assert len({c.id for c in issued}) == 6
    with db_auth.store.read() as s:
        rows = {c.id: c for c in s.execute(select(Certificate)).scalars()}
        links = s.execute(select(AuditRecord).where(AuditRecord.action == "cert.issue")
                          .order_by(AuditRecord.seq)).scalars().all()
        head = s.get(AuditHead, 1)
    for out in issued:
        assert (rows[out.id].serial, rows[out.id].der, rows[out.id].profile) == (
            out.serial, out.der, out.profile)
        assert rows[out.id].not_before.tzinfo is not None
    assert [link.target for link in links] == [c.serial for c in issued]
    assert head is not None and (head.seq, head.hash) == (links[-1].seq, links[-1].hash)
    report = audit.verify(db_auth.store)
    assert report.ok, report.problems


def _tamper(auth: Authority, statement: Any) -> None:
    with auth.store.engine.begin() as conn:
        conn.execute(statement)


def test_audit_detects_edited_record(db_auth: Authority) -> None:
    _issue(db_auth, 3)
    assert audit.verify(db_auth.store).ok
    _tamper(db_auth, update(AuditRecord).where(AuditRecord.seq == 3)
            .values(details='{"profile":"sign"}'))
    report = audit.verify(db_auth.store)
    assert not report.ok
    assert any("seq 3" in p and "edited" in p for p in report.problems), report.problems


def test_audit_detects_deleted_record(db_auth: Authority) -> None:
    _issue(db_auth, 3)
    _tamper(db_auth, AuditRecord.__table__.delete().where(AuditRecord.seq == 4))
    report = audit.verify(db_auth.store)
    assert any("seq 4 deleted" in p for p in report.problems), report.problems


def test_audit_detects_deleted_tail(db_auth: Authority) -> None:
    _issue(db_auth, 2)
    with db_auth.store.read() as s:
        last = s.execute(select(func.max(AuditRecord.seq))).scalar_one()
    _tamper(db_auth, AuditRecord.__table__.delete().where(AuditRecord.seq == last))
    report = audit.verify(db_auth.store)
    assert any("deleted" in p for p in report.problems), report.problems


def test_audit_detects_reordered_records(db_auth: Authority) -> None:
    _issue(db_auth, 3)
    with db_auth.store.read() as s:
        ids = dict(s.execute(select(AuditRecord.seq, AuditRecord.id)
                             .where(AuditRecord.seq.in_([5, 6]))).all())
    # Swap the seq of two rows (through a free value: seq is unique).
    _tamper(db_auth, update(AuditRecord).where(AuditRecord.id == ids[5]).values(seq=-1))
    _tamper(db_auth, update(AuditRecord).where(AuditRecord.id == ids[6]).values(seq=5))
    _tamper(db_auth, update(AuditRecord).where(AuditRecord.id == ids[5]).values(seq=6))
    report = audit.verify(db_auth.store)
    assert not report.ok
    text_ = " | ".join(report.problems)
    assert "seq 6" in text_ and "seq 5" in text_, report.problems


def test_audit_head_is_single_row(db_auth: Authority) -> None:
    _issue(db_auth, 2)
    with db_auth.store.read() as s:
        assert s.execute(select(func.count()).select_from(AuditHead)).scalar_one() == 1
        head = s.get(AuditHead, 1)
        last = s.execute(select(AuditRecord).order_by(AuditRecord.seq.desc()).limit(1)
                         ).scalar_one()
        assert head is not None and (head.seq, head.hash) == (last.seq, last.hash)


# --- two processes against PostgreSQL ----------------------------------------------------

def _concurrent_worker(home: str, rpps: str, key_der: bytes, shared: list[str], n: int,
                       out: Any, barrier: Any) -> None:
    auth = Authority.open(Path(home))
    try:
        key = serialization.load_der_public_key(key_der)
        barrier.wait(timeout=120)
        mine = []
        for _ in range(n):
            mine.append(auth.issue(IssueRequest("auth", key, rpps=rpps)).serial)  # type: ignore[arg-type]
        won = lost = 0
        for serial in shared:        # both processes race to revoke the same certificates
            try:
                lifecycle.revoke(auth, serial, "keyCompromise")
                won += 1
            except InvalidTransition:
                lost += 1
        for serial in mine[: n // 2]:
            lifecycle.revoke(auth, serial, "superseded")
        out.put({"issued": mine, "won": won, "lost": lost})
    except Exception as exc:
        out.put({"error": f"{type(exc).__name__}: {exc}"})
    finally:
        auth.close()


@pytest.mark.postgres
def test_two_processes_issue_and_revoke_against_postgresql(
        pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    home = tmp_path_factory.mktemp("pg-concurrent") / "cps"
    init_home(home, key_type="p256", db_url=pg_url)   # the home's config points at PostgreSQL
    auth = Authority.open(home)
    try:
        assert auth.store.dialect == "postgresql"
        rpps = add_professional(auth, "1000888000")
        shared = [c.serial for c in auth.issue_many(
            [IssueRequest("sign", KEY, rpps=rpps) for _ in range(12)])]
        key_der = KEY.public_bytes(serialization.Encoding.DER,
                                   serialization.PublicFormat.SubjectPublicKeyInfo)
        ctx = multiprocessing.get_context("spawn")
        out, barrier = ctx.Queue(), ctx.Barrier(2)
        procs = [ctx.Process(target=_concurrent_worker,
                             args=(str(home), rpps, key_der, shared, 15, out, barrier))
                 for _ in range(2)]
        for p in procs:
            p.start()
        results = [out.get(timeout=240) for _ in procs]
        for p in procs:
            p.join(timeout=60)
        assert all("error" not in r for r in results), results
        # Each shared certificate was revoked exactly once: one winner, one refusal.
        assert sum(r["won"] for r in results) == len(shared)
        assert sum(r["lost"] for r in results) == len(shared)
        issued = [s for r in results for s in r["issued"]]
        assert len(issued) == 30
        with auth.store.read() as s:
            serials = s.execute(select(Certificate.serial)).scalars().all()
            assert len(serials) == len(set(serials)) == 12 + 30
            assert set(issued) <= set(serials)
            events = s.execute(select(StatusEvent.certificate_id, func.count())
                               .group_by(StatusEvent.certificate_id)).all()
            assert all(count == 1 for _, count in events)   # no lost/duplicated update
            assert len(events) == 12 + 2 * 7
            revoked = s.execute(select(func.count()).select_from(Certificate)
                                .where(Certificate.status == "revoked")).scalar_one()
            assert revoked == 12 + 2 * 7
            seqs = s.execute(select(AuditRecord.seq).order_by(AuditRecord.seq)).scalars().all()
            assert seqs == list(range(1, len(seqs) + 1))
        report = audit.verify(auth.store)
        assert report.ok, report.problems
        # 3 CA inits + the root's first CRL (init) + 12 + 30 issues + revocations (the
        # professional was added directly, no audit)
        assert report.records == 3 + 1 + 12 + 30 + 12 + 14
    finally:
        auth.close()


def test_store_times_are_utc(db_auth: Authority) -> None:
    (serial,) = _issue(db_auth)
    row = lifecycle.status_of(db_auth, serial)
    assert row.not_after.tzinfo is not None
    assert row.not_after.utcoffset() == dt.timedelta(0)
    with db_auth.store.engine.connect() as conn:
        assert conn.execute(text("SELECT 1")).scalar_one() == 1
