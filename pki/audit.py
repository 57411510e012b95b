"""Tamper-evident audit log: a hash chain kept in the store.

Each record's hash covers its content and the previous record's hash; the chain's tip lives in
``audit_head``, locked by every append so two writers can never fork the chain. An append joins
the caller's transaction: an operation that fails leaves no audit record, and an operation that
commits cannot lose its record.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from pki.clock import SYSTEM_CLOCK, Clock
from pki.store.db import Store
from pki.store.models import AuditHead, AuditRecord

GENESIS = "0" * 64
# The table itself: a Core bulk INSERT skips the ORM's per-row bookkeeping.
_AUDIT_LOG = AuditRecord.metadata.tables[AuditRecord.__tablename__]


# What json.dumps(..., sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
# builds on every call; one shared encoder gives the same text.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                              default=str)


def canonical(details: dict[str, Any]) -> str:
    return _CANONICAL.encode(details)


def link_hash(prev_hash: str, seq: int, at: dt.datetime, actor: str, action: str, target: str,
              details: str) -> str:
    return _link_hash(prev_hash, seq, at.astimezone(dt.UTC).isoformat(), actor, action, target,
                      details)


def _link_hash(prev_hash: str, seq: int, at_iso: str, actor: str, action: str, target: str,
               details: str) -> str:
    body = "\n".join((prev_hash, str(seq), at_iso, actor, action, target, details))
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def append(session: Session, action: str, target: str, details: dict[str, Any] | None = None, *,
           actor: str = "system", clock: Clock = SYSTEM_CLOCK) -> AuditRecord:
    """Add one link to the chain inside the caller's transaction."""
    head = session.execute(select(AuditHead).where(AuditHead.id == 1).with_for_update()
                           ).scalar_one()
    at = clock.now().astimezone(dt.UTC)
    # Microseconds are kept by PostgreSQL and SQLite alike; the hash covers exactly what is stored.
    body = canonical(details or {})
    seq = head.seq + 1
    digest = link_hash(head.hash, seq, at, actor, action, target, body)
    record = AuditRecord(seq=seq, at=at, actor=actor, action=action, target=target,
                         details=body, prev_hash=head.hash, hash=digest)
    session.add(record)
    head.seq = seq
    head.hash = digest
    session.flush()
    return record


def append_many(session: Session, entries: list[tuple[str, str, dict[str, Any]]], *,
                actor: str = "system", clock: Clock = SYSTEM_CLOCK) -> None:
    """Add ``(action, target, details)`` links in order, locking the head once (batches).

    The records go in as one bulk INSERT, without ORM objects.
    """
    if not entries:
        return
    head = session.execute(select(AuditHead).where(AuditHead.id == 1).with_for_update()
                           ).scalar_one()
    at = clock.now().astimezone(dt.UTC)
    at_iso = at.isoformat()
    seq, prev = head.seq, head.hash
    rows = []
    for action, target, details in entries:
        seq += 1
        body = canonical(details)
        digest = _link_hash(prev, seq, at_iso, actor, action, target, body)
        rows.append({"seq": seq, "at": at, "actor": actor, "action": action, "target": target,
                     "details": body, "prev_hash": prev, "hash": digest})
        prev = digest
    session.execute(insert(_AUDIT_LOG), rows)
    head.seq, head.hash = seq, prev
    session.flush()


@dataclass
class VerifyReport:
    records: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _records(store: Store, batch: int = 5000) -> Iterator[AuditRecord]:
    last_id = 0
    while True:
        with store.session() as session:
            rows = list(session.execute(select(AuditRecord).where(AuditRecord.id > last_id)
                                        .order_by(AuditRecord.id).limit(batch)).scalars())
        if not rows:
            return
        yield from rows
        last_id = rows[-1].id


def verify(store: Store) -> VerifyReport:
    """Walk the whole chain; name every edited, deleted or reordered record."""
    report = VerifyReport()
    prev_hash, expected_seq = GENESIS, 1
    for rec in _records(store):
        report.records += 1
        if rec.seq < expected_seq:
            report.problems.append(f"record seq {rec.seq} (id {rec.id}) is out of order: "
                                   f"expected seq {expected_seq}")
        elif rec.seq > expected_seq:
            missing = (f"seq {expected_seq}" if rec.seq == expected_seq + 1
                       else f"seq {expected_seq}..{rec.seq - 1}")
            report.problems.append(f"record {missing} deleted (chain jumps to seq {rec.seq})")
        if rec.prev_hash != prev_hash and rec.seq == expected_seq:
            report.problems.append(f"record seq {rec.seq}: previous-hash link broken "
                                   f"(an earlier record was edited or removed)")
        recomputed = link_hash(rec.prev_hash, rec.seq, rec.at, rec.actor, rec.action, rec.target,
                               rec.details)
        if recomputed != rec.hash:
            report.problems.append(f"record seq {rec.seq} ({rec.action} {rec.target}): "
                                   f"content edited (hash mismatch)")
        prev_hash, expected_seq = rec.hash, max(expected_seq, rec.seq) + 1
    with store.session() as session:
        head = session.get(AuditHead, 1)
    if head is None:
        report.problems.append("chain head is missing")
    elif head.seq != expected_seq - 1 or head.hash != prev_hash:
        report.problems.append(f"chain head says seq {head.seq} but the log ends at seq "
                               f"{expected_seq - 1}: records at the end were deleted or edited")
    return report
