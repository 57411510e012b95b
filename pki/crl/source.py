"""What the CRL publisher reads from the store: revoked rows (streamed) and recent changes.

Times are selected as raw driver values (no SQLAlchemy type processing): SQLite then hands back
the stored text, which ``der`` turns into UTCTime by slicing instead of parsing a datetime per
row; PostgreSQL drivers still give datetimes, which ``der`` formats.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import String, func, select, type_coerce, update
from sqlalchemy.orm import Session

from pki import der
from pki.crl import der as crl_der
from pki.store.models import Certificate, CertificateAuthority, Crl, StatusEvent

if TYPE_CHECKING:   # the builder (and its linter) stay out of processes that only serve
    from pki.crl.builder import Row

STREAM_BATCH = 1_000       # rows per fetch: bounded Python memory whatever the list size
SCAN_CACHE_KIB = -256      # SQLite page cache during the scan (negative: KiB)
LISTED = ("revoked", "hold")
CHANGE_EVENTS = ("revoke", "hold", "release")

_cert = Certificate.__table__.c
_event = StatusEvent.__table__.c

# (serial, revocation time, reason, invalidity date, status, shard): ``Row`` plus the partition.
_COLUMNS = (
    _cert.serial,
    type_coerce(func.coalesce(_cert.revoked_at, _cert.status_changed_at, _cert.created_at),
                String).label("revoked_at"),
    _cert.reason,
    type_coerce(_cert.invalidity_date, String).label("invalidity_date"),
    _cert.status,
    _cert.shard,
)


def _columns(sharded: bool) -> tuple[Any, ...]:
    return _COLUMNS if sharded else _COLUMNS[:5]


def allocate_numbers(session: Session, ca_id: int, count: int) -> int:
    """Reserve ``count`` consecutive CRL numbers for a CA; returns the first.

    One counter per CA serves its full, delta and shard CRLs, so numbers strictly increase across
    all of them. The UPDATE takes the CA row's write lock until the transaction ends, which also
    serialises two publishers of the same CA.
    """
    new_last = session.execute(
        update(CertificateAuthority).where(CertificateAuthority.id == ca_id)
        .values(crl_number=CertificateAuthority.crl_number + count)
        .returning(CertificateAuthority.crl_number)).scalar_one()
    return int(new_last) - count + 1


def _split(batch: Sequence[Any], sharded: bool) -> dict[int | None, list[Row]]:
    """Group rows by partition; unpartitioned rows were selected without the shard column."""
    if not sharded:
        return {None: list(batch)}
    groups: dict[int | None, list[Row]] = {}
    for r in batch:
        groups.setdefault(r[5], []).append(r[:5])
    return groups


def revoked_batches(session: Session, ca_id: int, *, sharded: bool
                    ) -> Iterator[dict[int | None, list[Row]]]:
    """Every listed (revoked or held) certificate of a CA, in batches grouped by shard.

    One streamed query in the caller's transaction, so all shard CRLs of one publication come
    from one snapshot. It runs on the DBAPI cursor of the session's connection: at 10^6 rows,
    building SQLAlchemy Row objects costs more than the encoding, and the rows need no type
    processing (times are taken raw, see module docstring). PostgreSQL gets a named
    (server-side) cursor so the rows stream instead of landing in client memory at once.
    Unpartitioned CAs group under ``None``.
    """
    conn = session.connection()
    dbapi = conn.connection.dbapi_connection
    assert dbapi is not None
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    # Only constant fragments are interpolated; the values travel as parameters.
    sql = (f"SELECT serial, COALESCE(revoked_at, status_changed_at, created_at), reason, "  # noqa: S608
           f"invalidity_date, status{', shard' if sharded else ''} FROM certificate "
           f"WHERE ca_id = {mark} AND status IN ({mark}, {mark})")
    sqlite = conn.dialect.name == "sqlite"
    cursor = (dbapi.cursor(name="crl_revoked") if conn.dialect.name == "postgresql"
              else dbapi.cursor())
    saved_cache = None
    try:
        if sqlite:
            # A one-pass scan gains nothing from SQLite's page cache; a small one keeps the
            # publication's memory close to the CRL's own size. Restored afterwards.
            saved_cache = cursor.execute("PRAGMA cache_size").fetchone()[0]
            cursor.execute(f"PRAGMA cache_size = {SCAN_CACHE_KIB}")
        cursor.execute(sql, (ca_id, *LISTED))
        while batch := cursor.fetchmany(STREAM_BATCH):
            yield _split(batch, sharded)
    finally:
        if saved_cache is not None:
            with contextlib.suppress(sqlite3.Error):   # a broken connection: nothing to restore
                cursor.execute(f"PRAGMA cache_size = {int(saved_cache)}")
        cursor.close()


def changed_since(session: Session, ca_id: int, since: dt.datetime, *, sharded: bool
                  ) -> tuple[dict[int | None, list[Row]], set[int]]:
    """Current state of every certificate whose status changed at or after ``since``, and the ids
    of the status events that say so.

    Driven by the (ca_id, at) index of ``status_event``: the cost follows the number of changes,
    not the size of the list. A certificate now ``active`` was released from hold and yields a
    removeFromCRL entry.
    """
    events = session.execute(
        select(_event.id, _event.certificate_id)
        .where(_event.ca_id == ca_id, _event.at >= since, _event.event.in_(CHANGE_EVENTS))).all()
    cert_ids = sorted({int(cid) for _, cid in events})
    rows: list[Any] = []
    for i in range(0, len(cert_ids), _IN_CHUNK):
        rows += session.execute(select(*_columns(sharded)).where(
            _cert.id.in_(cert_ids[i:i + _IN_CHUNK]), _cert.ca_id == ca_id,
            _cert.status.in_((*LISTED, "active")))).all()
    return _split(rows, sharded), {int(eid) for eid, _ in events}


_IN_CHUNK = 500


@dataclass(frozen=True)
class StoredCrl:
    ca_id: int
    number: int
    kind: str
    shard: int | None
    base_number: int | None
    this_update: dt.datetime
    next_update: dt.datetime
    entries: int


def latest(session: Session, ca_id: int, kind: str, shard: int | None) -> StoredCrl | None:
    """The newest stored CRL of one scope (without its bytes)."""
    shard_clause = Crl.shard.is_(None) if shard is None else Crl.shard == shard
    row = session.execute(
        select(Crl.ca_id, Crl.number, Crl.kind, Crl.shard, Crl.base_number, Crl.this_update,
               Crl.next_update, Crl.entries)
        .where(Crl.ca_id == ca_id, Crl.kind == kind, shard_clause)
        .order_by(Crl.number.desc()).limit(1)).first()
    return None if row is None else StoredCrl(*row)


def last_event_id(session: Session, ca_id: int) -> int:
    """A mark of a CA's status changes (their count and newest id; 0: none): whether anything
    changed between two reads."""
    count, top = session.execute(select(func.count(), func.max(StatusEvent.id)).where(
        StatusEvent.ca_id == ca_id, StatusEvent.event.in_(CHANGE_EVENTS))).one()
    # With the count: on PostgreSQL a lower id may commit after a higher one.
    return int(count or 0) * (1 << 40) + int(top or 0)


def latest_numbers(session: Session) -> dict[int, int]:
    """The highest stored CRL number of every CA: cheap change detection for the cache."""
    return {int(ca_id): int(number) for ca_id, number in
            session.execute(select(Crl.ca_id, func.max(Crl.number)).group_by(Crl.ca_id))}


def der_of(session: Session, ca_id: int, number: int) -> bytes:
    return bytes(session.execute(select(Crl.der).where(Crl.ca_id == ca_id, Crl.number == number)
                                 ).scalar_one())


@dataclass(frozen=True)
class Change:
    event_id: int
    at: dt.datetime


def recent_changes(session: Session, ca_id: int, since: dt.datetime) -> list[Change]:
    """Status events of a CA at or after ``since`` (a short window: the delta trigger)."""
    return [Change(int(i), at) for i, at in session.execute(
        select(StatusEvent.id, StatusEvent.at)
        .where(StatusEvent.ca_id == ca_id, StatusEvent.at >= since,
               StatusEvent.event.in_(CHANGE_EVENTS)))]


# --- what was already published: the floor a store row cannot lower ---------------------------
# On SQLite every role writes the same file: a public role could set a revoked row back to
# active. A permanent revocation (any reason but certificateHold) that a signed CRL already lists
# is therefore kept from the CRL itself, whatever the row now says (RFC 5280 §5.3.1: only a hold
# may be removed, and only with removeFromCRL in a delta).
HOLD_CODE = 6
REMOVE_CODE = 8
_REASON_OID_TLV = b"\x06\x03\x55\x1d\x15"
_FLOOR_CHUNK = 5_000       # serials per lookup (well under SQLite's 32,766 variables)
_REASON_NAMES = {code: name for name, code in crl_der.REASON_CODES.items()}


@dataclass(frozen=True)
class Listed:
    """One entry of a published CRL (its time parsed only when the entry is used)."""

    serial: str                 # canonical hex, as ``certificate.serial``
    time_tag: int               # 0x17 UTCTime, 0x18 GeneralizedTime
    time: bytes
    code: int                   # CRLReason (0 when the entry has no reason)

    @property
    def permanent(self) -> bool:
        return self.code not in (HOLD_CODE, REMOVE_CODE)

    @property
    def revoked_at(self) -> dt.datetime:
        fmt = "%y%m%d%H%M%SZ" if self.time_tag == 0x17 else "%Y%m%d%H%M%SZ"
        return dt.datetime.strptime(self.time.decode(), fmt).replace(tzinfo=dt.UTC)

    def row(self) -> Row:
        return (self.serial, self.revoked_at, _REASON_NAMES.get(self.code, "unspecified"), None,
                "revoked")


def _hex(content: bytes) -> str:
    text = f"{int.from_bytes(content, 'big', signed=True):X}"
    return text if len(text) % 2 == 0 else "0" + text


def _entry(buf: bytes, start: int, end: int) -> Listed:
    s_start, s_end = der.expect(buf, start, end, 0x02, "CRL entry serial")
    tag, t_start, t_end = der.read_tlv(buf, s_end, end)
    code = 0
    at = buf.find(_REASON_OID_TLV, t_end, end)
    if at >= 0:     # extnID reasonCode, OCTET STRING { ENUMERATED (one octet) }
        enum = buf.find(b"\x0a\x01", at + len(_REASON_OID_TLV), end)
        if enum < 0 or enum + 2 >= end:
            raise der.DerError("CRL entry: reasonCode without an ENUMERATED value")
        code = buf[enum + 2]
    return Listed(_hex(buf[s_start:s_end]), tag, buf[t_start:t_end], code)


def _entries_bounds(buf: bytes) -> tuple[int, int] | None:
    """Content bounds of revokedCertificates in a CRL's DER, None when it lists nothing."""
    c_start, c_end = der.expect(buf, 0, len(buf), 0x30, "CertificateList")
    t_start, t_end = der.expect(buf, c_start, c_end, 0x30, "TBSCertList")
    fields = iter(der.children(buf, t_start, t_end))
    for tag, *_ in fields:
        if tag in (0x17, 0x18):         # thisUpdate; then nextUpdate?, entries?
            for tag2, _, start, end in fields:
                if tag2 == 0x30:
                    return start, end
            return None
    return None


def find_entry(buf: bytes, serial: str) -> Listed | None:
    """The entry of one serial in a stored CRL, found by a byte search (a delta's few candidates
    against a base of 10^6 entries), each hit checked to be an entry of revokedCertificates."""
    bounds = _entries_bounds(buf)
    if bounds is None:
        return None
    lo, hi = bounds
    content = int(serial, 16).to_bytes(int(serial, 16).bit_length() // 8 + 1, "big", signed=True)
    needle = b"\x02" + bytes((len(content),)) + content
    pos = buf.find(needle, lo, hi)
    while pos >= 0:
        if pos >= lo + 2 and buf[pos - 2] == 0x30:
            try:
                _, start, stop = der.read_tlv(buf, pos - 2, hi)
                if start == pos:
                    found = _entry(buf, start, stop)
                    if found.serial == serial:
                        return found
            except der.DerError:
                pass
        pos = buf.find(needle, pos + 1, hi)
    return None


def published_bases(session: Session, ca_id: int, shard: int | None) -> list[bytes]:
    """The newest full CRL of a scope and the newest delta on it, newest first: together what
    relying parties were last told (a delta lists every change since its base)."""
    base = latest(session, ca_id, "full", shard)
    if base is None:
        return []
    delta = latest(session, ca_id, "delta", shard)
    out = [der_of(session, ca_id, base.number)]
    if delta is not None and delta.base_number == base.number:
        out.insert(0, der_of(session, ca_id, delta.number))
    return out


def previous_entry(published: list[bytes], serial: str) -> Listed | None:
    for buf in published:
        found = find_entry(buf, serial)
        if found is not None:
            return found
    return None


def permanent_entries(buf: bytes) -> Iterator[tuple[str, int, int]]:
    """(serial hex, entry start, entry end) of every permanent entry of a stored CRL: the hot
    loop of a floor check at 10^6 entries, so it reads the short forms our builder writes
    (one-byte lengths, a reasonCode without the critical flag) and falls back to ``_entry``."""
    for serial, start, stop, code in listed_entries(buf):
        if code != HOLD_CODE and code != REMOVE_CODE:
            yield serial, start, stop


def listed_entries(buf: bytes) -> Iterator[tuple[str, int, int, int]]:
    """(serial hex, entry start, entry end, reason code) of every entry of a stored CRL."""
    bounds = _entries_bounds(buf)
    if bounds is None:
        return
    pos, end = bounds
    reason_oid, reason_value = _REASON_OID_TLV, b"\x04\x03\x0a\x01"
    while pos < end:
        if buf[pos + 1] < 0x80 and buf[pos + 3] < 0x80:
            start, stop = pos + 2, pos + 2 + buf[pos + 1]
            serial_end = start + 2 + buf[start + 1]
            at = buf.find(reason_oid, serial_end, stop)
            if at < 0:
                code = 0
            elif buf[at + 5:at + 9] == reason_value:
                code = buf[at + 9]
            else:
                code = _entry(buf, start, stop).code
            yield _hex(buf[start + 2:serial_end]), start, stop, code
        else:
            _, start, stop = der.read_tlv(buf, pos, end)
            entry = _entry(buf, start, stop)
            yield entry.serial, start, stop, entry.code
        pos = stop


def previous_codes(published: list[bytes]) -> dict[str, int]:
    """serial -> reason code of every entry relying parties were last told (the newest
    publication's entry wins): one pass over the bytes, for a delta with many candidates,
    where a byte search per candidate (``previous_entry``) would be quadratic."""
    out: dict[str, int] = {}
    for buf in reversed(published):         # the base first, its delta over it
        for serial, _start, _stop, code in listed_entries(buf):
            out[serial] = code
    return out


def undone_revocations(session: Session, ca_id: int, shard: int | None) -> dict[str, Listed]:
    """Permanent revocations of the previous publication whose row no longer says so: the floor
    entries a full CRL must keep (empty unless the store was written around the lifecycle)."""
    out: dict[str, Listed] = {}
    chunk: dict[str, tuple[bytes, int, int]] = {}

    def check() -> None:
        rows = session.execute(select(_cert.serial, _cert.status, _cert.reason).where(
            _cert.ca_id == ca_id, _cert.serial.in_(list(chunk)))).all()
        kept = {r.serial for r in rows if r.status == "revoked" and r.reason != "certificateHold"}
        out.update({s: _entry(*where) for s, where in chunk.items() if s not in kept})
        chunk.clear()

    for buf in reversed(published_bases(session, ca_id, shard)):   # the base, then its delta
        for serial, start, stop in permanent_entries(buf):
            chunk[serial] = (buf, start, stop)
            if len(chunk) >= _FLOOR_CHUNK:
                check()
    if chunk:
        check()
    return out
