"""The group-commit audit sink writes the same chain as ``pki.audit.append``, on SQLite and on
PostgreSQL: concurrent callers, the ORM sink interleaved, a refused record, and the whole chain
verified afterwards (hashes recomputed from what the database gives back)."""

from __future__ import annotations

import datetime as dt
import json
import threading
from pathlib import Path

import pytest
from sqlalchemy import delete, select

from cps_login.auditsink import GroupCommitAuditSink, StoreAuditSink
from pki import audit
from pki.clock import SYSTEM_CLOCK
from pki.errors import Duplicate, StoreError
from pki.store.db import Store
from pki.store.models import AuditRecord


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    url = (f"sqlite:///{tmp_path / 'store.db'}" if request.param == "sqlite"
           else request.getfixturevalue("pg_url"))
    store = Store(url)
    store.migrate()
    return store


def test_concurrent_records_make_one_verifiable_chain(store: Store) -> None:
    sink = GroupCommitAuditSink(store, SYSTEM_CLOCK)
    orm = StoreAuditSink(store, SYSTEM_CLOCK)
    errors: list[BaseException] = []

    def write(worker: int) -> None:
        try:
            for i in range(40):
                details = {"client": "127.0.0.1", "i": i, "é": "ü"}
                sink.record("login.success", f"81000000000{worker}", details,
                            actor=f"81000000000{worker}")
                if i % 10 == 0:
                    orm.record("login.refused", "unknown", {"reason": "bad_signature"},
                               actor="anonymous")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sink.close()
    assert not errors, errors
    report = audit.verify(store)
    assert report.problems == [] and report.records == 6 * 44, report
    with store.read() as session:
        rows = session.execute(select(AuditRecord).order_by(AuditRecord.seq)).scalars().all()
    assert [r.seq for r in rows] == list(range(1, 6 * 44 + 1))
    assert all(r.at.tzinfo is not None and abs(r.at - dt.datetime.now(dt.UTC))
               < dt.timedelta(minutes=5) for r in rows)
    success = [r for r in rows if r.action == "login.success"]
    assert len(success) == 6 * 40
    assert all(json.loads(r.details)["é"] == "ü"
               and r.details == audit.canonical(json.loads(r.details)) for r in success)


def test_driver_errors_are_store_errors_and_the_sink_recovers(store: Store) -> None:
    sink = GroupCommitAuditSink(store, SYSTEM_CLOCK)
    sink.record("login.success", "810000000001", {}, actor="810000000001")
    # a link written behind the sink's back, head not moved: the sink's next seq is taken
    with store.session() as session:
        head = session.execute(select(AuditRecord.seq).order_by(AuditRecord.seq.desc())
                               ).scalars().first()
        session.add(AuditRecord(seq=int(head or 0) + 1, at=dt.datetime.now(dt.UTC),
                                actor="x", action="x", target="x", details="{}",
                                prev_hash="0" * 64, hash="0" * 64))
    with pytest.raises(Duplicate):                  # the driver's IntegrityError, mapped
        sink.record("login.success", "810000000001", {}, actor="810000000001")
    with store.session() as session:
        session.execute(delete(AuditRecord).where(AuditRecord.actor == "x"))
    sink.record("login.success", "810000000001", {}, actor="810000000001")
    # the connection dies under the sink, unknown to SQLAlchemy
    assert sink._conn is not None
    sink._conn.connection.driver_connection.close()  # type: ignore[union-attr]
    with pytest.raises(StoreError):
        sink.record("login.success", "810000000001", {}, actor="810000000001")
    sink.record("login.success", "810000000001", {}, actor="810000000001")  # a fresh one
    sink.close()
    assert audit.verify(store).problems == []
