"""The hash-chained audit log on SQLite and PostgreSQL."""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Iterator

import pytest
from sqlalchemy import select, text

from pki import audit
from pki.store.db import Store


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[Store]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'a.db'}"
    else:
        url = request.getfixturevalue("pg_url")
    s = Store(url)
    s.migrate()
    yield s
    s.dispose()


def _fill(store: Store, n: int = 6) -> None:
    with store.session() as session:
        for i in range(n):
            audit.append(session, "test.op", f"target-{i}", {"i": i, "é": "ü"})


def test_clean_chain_verifies(store: Store) -> None:
    _fill(store)
    report = audit.verify(store)
    assert report.ok, report.problems
    assert report.records == 6


def test_failed_transaction_leaves_no_link(store: Store) -> None:
    _fill(store, 2)
    with pytest.raises(RuntimeError), store.session() as session:
        audit.append(session, "test.op", "lost", {})
        raise RuntimeError("operation failed after auditing")
    report = audit.verify(store)
    assert report.ok and report.records == 2


def test_edited_record_is_named(store: Store) -> None:
    _fill(store)
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE audit_log SET target = 'forged' WHERE seq = 3"))
    problems = audit.verify(store).problems
    assert any("seq 3" in p and "edited" in p for p in problems), problems


def test_deleted_record_is_named(store: Store) -> None:
    _fill(store)
    with store.engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_log WHERE seq = 4"))
    problems = audit.verify(store).problems
    assert any("seq 4 deleted" in p for p in problems), problems


def test_deleted_tail_is_detected(store: Store) -> None:
    _fill(store)
    with store.engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_log WHERE seq = 6"))
    problems = audit.verify(store).problems
    assert any("chain head" in p for p in problems), problems


def test_reordered_records_are_named(store: Store) -> None:
    _fill(store)
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE audit_log SET seq = -2 WHERE seq = 2"))
        conn.execute(text("UPDATE audit_log SET seq = 2 WHERE seq = 5"))
        conn.execute(text("UPDATE audit_log SET seq = 5 WHERE seq = -2"))
    problems = audit.verify(store).problems
    assert any("out of order" in p or "seq 2" in p for p in problems), problems
    assert not audit.verify(store).ok


def _writer(url: str, n: int) -> None:
    s = Store(url)
    for i in range(n):
        with s.session() as session:
            audit.append(session, "test.concurrent", f"w{i}", {})
    s.dispose()


def test_concurrent_writers_never_fork_the_chain(store: Store) -> None:
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(store.url, 25)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    report = audit.verify(store)
    assert report.ok, report.problems
    assert report.records == 75


def test_append_many_links_like_append_and_mixes_with_it(store: Store) -> None:
    """Bulk links (no ORM objects) and single links share one head, even in one session."""
    from pki.store.models import AuditHead, AuditRecord
    _fill(store, 2)
    with store.session() as session:
        audit.append(session, "test.op", "single-1", {"n": 1})
        audit.append_many(session, [("test.bulk", f"bulk-{i}", {"i": i, "é": "ü"})
                                    for i in range(5)], actor="bulk-actor")
        audit.append(session, "test.op", "single-2", {"n": 2})
    with store.session() as session:
        audit.append_many(session, [])            # nothing to add: the chain is untouched
        audit.append_many(session, [("test.bulk", "bulk-last", {})])
    report = audit.verify(store)
    assert report.ok, report.problems
    assert report.records == 2 + 1 + 5 + 1 + 1
    with store.session() as session:
        rows = session.execute(select(AuditRecord).order_by(AuditRecord.seq)).scalars().all()
        head = session.get(AuditHead, 1)
        assert head is not None and (head.seq, head.hash) == (rows[-1].seq, rows[-1].hash)
    bulk = [r for r in rows if r.action == "test.bulk"]
    assert [r.target for r in bulk] == [f"bulk-{i}" for i in range(5)] + ["bulk-last"]
    assert all(r.actor == "bulk-actor" for r in bulk[:5]) and bulk[5].actor == "system"
    assert bulk[0].details == audit.canonical({"i": 0, "é": "ü"}) == '{"i":0,"é":"ü"}'
    assert len({r.at for r in bulk[:5]}) == 1           # one batch, one instant


def test_failed_batch_leaves_no_links(store: Store) -> None:
    _fill(store, 2)
    with pytest.raises(RuntimeError), store.session() as session:
        audit.append_many(session, [("test.bulk", f"lost-{i}", {}) for i in range(3)])
        raise RuntimeError("operation failed after auditing")
    report = audit.verify(store)
    assert report.ok and report.records == 2
