"""The signing side of the OCSP responder (signer role): pre-signed records per issuing CA,
kept fresh in the background, written to the store (``ocsp_record``) and Redis for the status
replicas.

Hot path (``lookup``, pki.ocsp.lookup): no database, no HSM. Everything that needs a signature
now (nonce, SHA-256 CertIDs, several certificates, unknown serials, a record not signed yet)
becomes a ``LiveJob`` that ``sign_live`` signs in a worker thread.

Background thread: initial load and pre-sign, a watcher polling ``status_event`` (and new
``certificate`` rows) every ``poll_interval`` seconds, refresh of records nearing nextUpdate,
responder certificate renewal (signs a whole new set with the new key, then swaps). Every signed
record is also upserted into ``ocsp_record`` in the batch's transaction (with its audit record),
and ``ocsp_responder`` names the responder whose set is complete.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Protocol

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from pki import audit
from pki.ca import responder as responders
from pki.ca.authority import CaInfo
from pki.ca.responder import AuthorityLike, Responder
from pki.keytypes import KeyType
from pki.ocsp import records as rec
from pki.ocsp import recordstore
from pki.ocsp import response as resp
from pki.ocsp.lookup import MAX_PENDING_LIVE, UNKNOWN_CACHE, Answer, LiveJob, RecordIndex
from pki.ocsp.redis_tier import RedisTier
from pki.ocsp.signpool import BrokenProcessPool, SignPool
from pki.store.models import Certificate, StatusEvent

__all__ = ["MAX_PENDING_LIVE", "UNKNOWN_CACHE", "Answer", "LiveJob", "OcspService"]

log = logging.getLogger(__name__)

BATCH = 2000                   # records signed per audit record (and per store transaction)
POOL_MIN = 4000                # records at once from which the signing processes help
FILL_CHUNK = 20_000            # records handed to _sign_items at once by the initial fill
EVENTS_PAGE = 10_000           # status events read per watcher cycle (a burst: cycles back to back)
GAP_TTL = 10.0                 # seconds an id gap in status_event is watched for a late commit
LOAD_RETRY = 5.0               # seconds between attempts at the initial load


class OcspAuthority(AuthorityLike, Protocol):
    def issuing_cas(self) -> list[Any]: ...


def _status_fields(row: Any) -> tuple[int, int, int]:
    status = row.status
    if status == "active":
        return int(resp.CertStatus.GOOD), resp.NO_REASON, 0
    at = row.at
    revoked_at = int(at.timestamp()) if at is not None else 0
    if status == "hold":
        return resp.CertStatus.REVOKED, resp.REASON_CODES["certificateHold"], revoked_at
    return resp.CertStatus.REVOKED, resp.REASON_CODES.get(row.reason or "", resp.NO_REASON), \
        revoked_at


_HOLD = resp.REASON_CODES["certificateHold"]
# What a record is built from (``_status_fields``): never the DER; the table's Core columns
# and one time (revocation, else status change, else issuance), parsed once per row: at an
# incident's 600,000 rows the ORM's per-row work and three date parses were a third of the
# signer's thread.
_CERT = Certificate.metadata.tables[Certificate.__tablename__].c
_STATUS_COLUMNS = (_CERT.id, _CERT.ca_id, _CERT.serial, _CERT.status, _CERT.reason,
                   func.coalesce(_CERT.revoked_at, _CERT.status_changed_at,
                                 _CERT.created_at).label("at"))
# A permanent revocation may only be re-stated with a compromise reason (RFC 5280 §5.3.1: the
# reason may be corrected towards keyCompromise), never undone, put on hold or back-dated.
_ESCALATIONS = frozenset(resp.REASON_CODES[r] for r in ("keyCompromise", "cACompromise",
                                                        "aACompromise"))


def refused(floor: bytes | None, status: int, reason: int, revoked_at: int) -> bool:
    """True when a status read from the store undoes a permanent revocation the signer already
    signed (``floor``): back to good, to hold, or another revocation time. The lifecycle never
    writes such a row (revoked is final); a public role with write access to the store could."""
    if floor is None:
        return False
    f_status, f_reason, f_at = rec.status_of(floor)
    if f_status != resp.CertStatus.REVOKED or f_reason == _HOLD:
        return False
    if status != resp.CertStatus.REVOKED or reason == _HOLD or revoked_at != f_at:
        return True
    return reason != f_reason and reason not in _ESCALATIONS


def ca_state(ca: CaInfo, responder: Responder) -> rec.CaState:
    return rec.CaState(ca.id, ca.slug, ca.certificate, responder.der,
                       responder.signer.algorithm_identifier, responder.not_after,
                       responder.signer)


def _even_hex(serial: str) -> str:
    """A serial as the responder key's label spells it (an even number of hex digits)."""
    return "0" + serial if len(serial) % 2 else serial


class OcspService(RecordIndex):
    """Pre-signed OCSP answers for every certificate of every issuing CA of an Authority."""

    def __init__(self, auth: OcspAuthority, *, redis_url: str | None = None,
                 redis_prefix: str = "cps:", poll_interval: float = 0.2,
                 maintenance_interval: float = 30.0,
                 responder_key_type: KeyType | None = None,
                 sign_processes: int | None = None) -> None:
        super().__init__(auth.clock)
        self.auth = auth
        self.config = auth.config.ocsp
        self.poll_interval = poll_interval
        self.responder_key_type = responder_key_type
        self.maintenance_interval = maintenance_interval
        url = redis_url if redis_url is not None else self.config.redis_url
        self.redis = RedisTier(url, redis_prefix) if url else None
        self.writer = recordstore.RecordWriter(auth.store)
        self._responders: dict[int, Responder] = {}
        self._redis_down = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._high_water = 0
        self._gaps: dict[int, float] = {}
        self._done: set[int] = set()
        self._max_cert_id = 0
        self._rebuilding: dict[int, set[str]] = {}
        self._refusals: set[tuple[int, str, tuple[int, int, int]]] = set()
        processes = (sign_processes if sign_processes is not None
                     else getattr(self.config, "sign_processes", 0))
        home = getattr(auth.config, "home", None)
        self.pool = SignPool(home, processes) if processes > 0 and home is not None else None
        self._backlog = False

    # --- life cycle ------------------------------------------------------------------
    def start(self, *, wait: bool = False, timeout: float | None = None) -> None:
        self._thread = threading.Thread(target=self._run, name="ocsp-presigner", daemon=True)
        self._thread.start()
        if wait and not self.ready.wait(timeout):
            raise TimeoutError("OCSP pre-signing did not finish in time")
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self.pool is not None:
            self.pool.close()

    def load(self) -> None:
        """Initial load: responders, every certificate's status, pre-signing (blocking)."""
        with self.auth.store.session() as session:
            self._high_water = session.execute(
                select(StatusEvent.id).order_by(StatusEvent.id.desc()).limit(1)
            ).scalar_one_or_none() or 0
        for ca in self.auth.issuing_cas():
            responder = responders.ensure(self.auth, ca, key_type=self.responder_key_type)
            state = ca_state(ca, responder)
            self._fill(state, "initial")
            self._activate(state, responder)
        self.ready.set()

    def _activate(self, state: rec.CaState, responder: Responder) -> None:
        """Serve ``state`` here, and tell the status replicas its set is complete."""
        self._register(state)
        self._responders[state.ca_id] = responder
        self.writer.set_responder(state.ca_id, state.responder_serial, state.responder_der,
                                  state.algorithm, state.responder_not_after)

    def _run(self) -> None:
        while True:
            try:
                self.load()
                self.error = None
                break
            except Exception as exc:   # the store or the HSM away: tryLater meanwhile, retry
                log.exception("OCSP initial load failed; retrying in %.0f s", LOAD_RETRY)
                self.error = exc
                self.ready.set()
                if self._stop.wait(LOAD_RETRY):
                    return
        next_maintenance = time.monotonic() + self.maintenance_interval
        while not self._stop.wait(0 if self._backlog else self.poll_interval):
            try:
                self.poll()
                if time.monotonic() >= next_maintenance:
                    self.maintain()
                    next_maintenance = time.monotonic() + self.maintenance_interval
            except Exception:
                log.exception("OCSP background cycle failed; retrying")

    # --- live signatures ----------------------------------------------------------------
    def sign_live(self, job: LiveJob) -> Answer:
        """Answer a request that needs a signature now (runs in a worker thread)."""
        state, request = job.state, job.request
        now = self.now()
        next_update = now + self.config.validity_hours * 3600
        singles = []
        kinds = []
        for cid in request.cert_ids:
            record = state.records.get(cid.serial)
            if record is None:
                status, reason, revoked_at = int(resp.CertStatus.UNKNOWN), resp.NO_REASON, 0
            else:
                status, reason, revoked_at = rec.status_of(record)
            kinds.append(("good", "revoked", "unknown")[status])
            singles.append(resp.single_response(
                resp.cert_id(cid.hash_name, cid.issuer_name_hash, cid.issuer_key_hash,
                             cid.serial),
                resp.cert_status(status, revoked_at, reason), now, next_update))
        cid = request.cert_ids[0]
        single_sha1 = len(request.cert_ids) == 1 and request.nonce is None \
            and cid.hash_name == "sha1"
        if single_sha1 and kinds[0] != "unknown":
            # A known certificate whose record was not signed yet (or went stale): sign it into
            # the store so the next request is served from memory.
            record = state.records[cid.serial]
            status, reason, revoked_at = rec.status_of(record)
            header = rec.pack(now, now, next_update, status, reason, revoked_at)
            with self._lock:
                signed = state.sign(cid.serial, header)
                kept = rec.same_status(state.records.get(cid.serial, b""), status, reason,
                                       revoked_at)
                if kept:
                    state.records[cid.serial] = signed
                    self.signed_total += 1
            if kept and self.states.get(state.ca_id) is state:
                self._persist(state, {cid.serial: signed})
            return Answer(state.assemble(cid.serial, signed), kinds[0], now, next_update)
        tbs = resp.response_data(state.responder_id, now, singles, request.nonce)
        body = resp.successful(tbs, state.algorithm, state.sign_tbs(tbs), state.certs)
        kind = kinds[0] if len(kinds) == 1 else "multi"
        if single_sha1 and request.nonce is None:
            self.remember_unknown(state.ca_id, cid.serial, body)
        return Answer(body, kind, now, next_update)

    # --- status changes ----------------------------------------------------------------
    def on_status_change(self, serials: Iterable[str]) -> int:
        """Re-sign these certificates now (call after the revoke/hold/release committed)."""
        wanted = list(serials)
        rows: list[Any] = []
        with self.auth.store.read() as session:
            for i in range(0, len(wanted), 500):
                rows.extend(session.connection().execute(
                    select(*_STATUS_COLUMNS).where(_CERT.serial.in_(wanted[i:i + 500]))))
        return self._apply(rows, "status-change")

    def poll(self) -> int:
        """One watcher tick: new status events (with a look-back for late commits), new rows."""
        floor = min(self._gaps) - 1 if self._gaps else self._high_water
        # Only the columns a record needs (no DER, no ORM objects): an incident's burst is
        # hundreds of thousands of rows, read EVENTS_PAGE at a time, cycles back to back.
        with self.auth.store.read() as session:
            events = session.execute(
                select(StatusEvent.id, StatusEvent.certificate_id).where(StatusEvent.id > floor)
                .order_by(StatusEvent.id).limit(EVENTS_PAGE)).all()
            fresh = [e for e in events if e.id not in self._done]
            cert_ids = sorted({e.certificate_id for e in fresh})
            rows: list[Any] = []
            for i in range(0, len(cert_ids), 5000):
                rows.extend(session.connection().execute(select(*_STATUS_COLUMNS).where(
                    _CERT.id.in_(cert_ids[i:i + 5000]))))
            new_rows = list(session.connection().execute(
                select(*_STATUS_COLUMNS).where(_CERT.id > self._max_cert_id)
                .order_by(_CERT.id).limit(20_000)))
        self._backlog = len(events) >= EVENTS_PAGE or len(new_rows) >= 20_000
        # Marked seen only once signed and stored: a failed cycle reads the same events again.
        count = self._apply(rows + new_rows, "status-change")
        self._track_events([e.id for e in events])
        if new_rows:
            self._max_cert_id = max(self._max_cert_id, new_rows[-1].id)
        return count

    def _track_events(self, ids: list[int]) -> None:
        now = time.monotonic()
        self._done.update(ids)
        for i in ids:
            self._gaps.pop(i, None)
        if ids:
            top = max(ids)
            for missing in range(self._high_water + 1, top):
                if missing not in self._done and missing not in self._gaps \
                        and top - missing < 10_000:
                    self._gaps[missing] = now
            self._high_water = max(self._high_water, top)
        for gap, since in list(self._gaps.items()):
            if now - since > GAP_TTL:
                del self._gaps[gap]
        floor = min(self._gaps) if self._gaps else self._high_water
        self._done = {i for i in self._done if i >= floor}

    def _apply(self, rows: list[Any], why: str) -> int:
        """Sign new or changed records for these certificate rows; returns how many."""
        by_ca: dict[int, list[tuple[bytes, int, int, int]]] = {}
        for row in rows:
            state = self.states.get(row.ca_id)
            if state is None:
                continue
            serial = rec.serial_content(row.serial)
            status, reason, revoked_at = _status_fields(row)
            current = state.records.get(serial)
            if current is not None and rec.same_status(current, status, reason, revoked_at):
                continue
            if refused(current, status, reason, revoked_at):
                self._refuse(state, row.serial, (status, reason, revoked_at))
                continue
            by_ca.setdefault(row.ca_id, []).append((serial, status, reason, revoked_at))
            if row.ca_id in self._rebuilding:
                self._rebuilding[row.ca_id].add(row.serial)
        count = 0
        for ca_id, items in by_ca.items():
            state = self.states[ca_id]
            count += self._sign_items(state, state.records, items, why)
            self.forget_unknown(ca_id, [serial for serial, *_ in items])
            with self._lock:
                self.generation += 1
        return count

    def _floor(self, ca_id: int, serial: bytes, found: bytes | None) -> bytes | None:
        """What the signer already signed for a certificate: the record it serves (a responder
        renewal rebuilds from it) or, at start, the one stored in ``ocsp_record``."""
        old = self.states.get(ca_id)
        held = old.records.get(serial) if old is not None else None
        for record in (held, found):
            if record is not None and refused(record, resp.CertStatus.GOOD, resp.NO_REASON, 0):
                return record
        return held or found

    def _refuse(self, state: rec.CaState, serial: str, claim: tuple[int, int, int]) -> None:
        """Keep serving the revocation; say so loudly, once per certificate and claim."""
        key = (state.ca_id, serial, claim)
        if key in self._refusals:
            return
        self._refusals.add(key)
        status, reason, revoked_at = claim
        claimed = {"status": ("good", "revoked", "unknown")[status],
                   "reason": None if reason == resp.NO_REASON else reason,
                   "revoked_at": revoked_at or None}
        log.critical("certificate %s of %s is permanently revoked but the store now says %s: "
                     "not signed, the revocation stays served", serial, state.slug, claimed)
        try:
            with self.auth.store.session() as session:
                audit.append(session, "ocsp.status_refused", serial,
                             {"ca": state.slug, "claimed": claimed}, clock=self.clock)
        except Exception:   # the refusal holds without its audit record; the log has it
            log.exception("could not audit the refused status of %s", serial)

    # --- pre-signing -------------------------------------------------------------------
    def _rows(self, ca_id: int, page: int = 20_000) -> Iterator[Any]:
        """Every certificate of a CA, by keyset pages: no transaction stays open while the
        caller signs and audits (SQLite sessions take the write lock at BEGIN)."""
        last = 0
        while True:
            with self.auth.store.read() as session:
                rows = session.connection().execute(
                    select(*_STATUS_COLUMNS).where(_CERT.ca_id == ca_id, _CERT.id > last)
                    .order_by(_CERT.id).limit(page)).all()
            if not rows:
                return
            yield from rows
            last = rows[-1].id

    def _fill(self, state: rec.CaState, why: str) -> None:
        """Load every certificate of the CA and sign what the store (or Redis) does not already
        hold signed by this responder, fresh and with the current status."""
        target = state.records
        shared = recordstore.load(self.auth.store, state.ca_id, state.responder_serial)
        from_redis = not shared and self.redis is not None
        if self.redis is not None and not shared:
            shared = self.redis.load(state.slug, state.responder_serial)
        copy: dict[bytes, bytes] = {}          # reused from Redis, missing from the store
        fresh_after = self.now() + self.config.refresh_before_hours * 3600
        items: list[tuple[bytes, int, int, int]] = []
        # Streamed in batches so that the transient list never holds the whole population.
        for row in self._rows(state.ca_id):
            self._max_cert_id = max(self._max_cert_id, row.id)
            status, reason, revoked_at = _status_fields(row)
            serial = rec.serial_content(row.serial)
            found = shared.get(serial)
            floor = self._floor(state.ca_id, serial, found)
            if refused(floor, status, reason, revoked_at):
                self._refuse(state, row.serial, (status, reason, revoked_at))
                assert floor is not None
                status, reason, revoked_at = rec.status_of(floor)
            if found is not None and rec.same_status(found, status, reason, revoked_at) \
                    and rec.unpack(found)[2] > fresh_after:
                target[serial] = found
                if from_redis:
                    copy[serial] = found
                    if len(copy) >= BATCH:
                        self.writer.write(state.ca_id, state.responder_serial, copy)
                        copy = {}
                continue
            items.append((serial, status, reason, revoked_at))
            if len(items) >= FILL_CHUNK:
                self._sign_items(state, target, items, why)
                items = []
        self._sign_items(state, target, items, why)
        if copy:
            self.writer.write(state.ca_id, state.responder_serial, copy)

    def _sign_items(self, state: rec.CaState, target: dict[bytes, bytes],
                    items: list[tuple[bytes, int, int, int]], why: str) -> int:
        """Sign and store ``items``, BATCH per transaction and audit record. A large burst is
        signed by the pool's processes while this thread stores the previous batch."""
        pool = self.pool if self.pool is not None and not self.pool.broken \
            and len(items) >= POOL_MIN and state.signer is not None else None
        pending: tuple[dict[bytes, bytes], int, int, list[Any]] | None = None
        for start in range(0, len(items), BATCH):
            chunk = items[start:start + BATCH]
            now = self.now()
            next_update = now + self.config.validity_hours * 3600
            headers = {serial: rec.pack(now, now, next_update, status, reason, revoked_at)
                       for serial, status, reason, revoked_at in chunk}
            if pool is not None:
                label = responders.key_label(state.slug, _even_hex(state.responder_serial))
                futures = pool.submit(state, label, headers)
                if pending is not None:
                    self._finish(state, target, pending, why)
                pending = (headers, now, next_update, futures)
                continue
            signed = {serial: state.sign(serial, header) for serial, header in headers.items()}
            self._store_batch(state, target, signed, now, next_update, why)
        if pending is not None:
            self._finish(state, target, pending, why)
        return len(items)

    def _finish(self, state: rec.CaState, target: dict[bytes, bytes],
                pending: tuple[dict[bytes, bytes], int, int, list[Any]], why: str) -> None:
        """Wait for a batch the pool signs, then store it (signed here if a process died)."""
        headers, now, next_update, futures = pending
        assert self.pool is not None
        try:
            records = self.pool.gather(futures)
        except BrokenProcessPool:
            log.exception("OCSP signing process died; signing in the signer from now on")
            self.pool.broken = True
            signed = {serial: state.sign(serial, header) for serial, header in headers.items()}
        else:
            signed = dict(zip(headers, records, strict=True))
        self._store_batch(state, target, signed, now, next_update, why)

    def _store_batch(self, state: rec.CaState, target: dict[bytes, bytes],
                     signed: dict[bytes, bytes], now: int, next_update: int, why: str) -> None:
        details = {"count": len(signed), "why": why,
                   "responder_serial": state.responder_serial,
                   "this_update": dt.datetime.fromtimestamp(now, dt.UTC).isoformat(),
                   "next_update": dt.datetime.fromtimestamp(next_update, dt.UTC).isoformat()}

        def audit_batch(session: Session, details: dict[str, Any] = details) -> None:
            audit.append(session, "ocsp.presign", state.slug, details, clock=self.clock)

        # Stored before it is held: a batch the store refused is not in memory either, so
        # the retry (next watcher cycle) sees the status as changed and signs it again.
        self._persist(state, signed, audit_batch)
        with self._lock:
            target.update(signed)
            self.signed_total += len(signed)
            if self._oldest is None:
                self._oldest = now

    def _persist(self, state: rec.CaState, signed: Mapping[bytes, bytes],
                 also: Any = None) -> None:
        """The store (the source of truth: one transaction with the batch's audit record), then
        Redis, best effort: Redis down delays no status change."""
        self.writer.write(state.ca_id, state.responder_serial, signed, also)
        if self.redis is None:
            return
        try:
            self.redis.store(state.slug, state.responder_serial, signed,
                             state.responder_not_after)
        except Exception as exc:   # redis.RedisError, OSError: logged once per outage
            if not self._redis_down:
                log.warning("Redis unavailable, records go to the store only: %s", exc)
            self._redis_down = True
        else:
            if self._redis_down:
                log.warning("Redis reachable again")
            self._redis_down = False

    def maintain(self) -> None:
        """Renew responders nearing expiry; re-sign records nearing nextUpdate."""
        oldest: int | None = None
        for ca in self.auth.issuing_cas():
            state = self.states.get(ca.id)
            if state is None:
                continue
            if responders.needs_renewal(self.auth, self._responders.get(ca.id)):
                self._renew(ca, state)
                continue
            due = self.now() + self.config.refresh_before_hours * 3600
            stale: list[tuple[bytes, int, int, int]] = []
            for serial, record in list(state.records.items()):
                _, this_update, next_update, status, reason, revoked_at = rec.unpack(record)
                if next_update <= due:
                    stale.append((serial, status, reason, revoked_at))
                elif oldest is None or this_update < oldest:
                    oldest = this_update
            if stale:
                self._sign_items(state, state.records, stale, "refresh")
                oldest = min(oldest or self.now(), self.now())
        self._oldest = oldest

    def _renew(self, ca: Any, old: rec.CaState) -> None:
        responder = responders.issue(self.auth, ca, key_type=self.responder_key_type)
        new = ca_state(ca, responder)
        self._rebuilding[ca.id] = set()
        try:
            self._fill(new, "renewal")
            self._activate(new, responder)
        finally:
            changed = self._rebuilding.pop(ca.id, set())
        if changed:
            self.on_status_change(changed)
