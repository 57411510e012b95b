"""The OCSP responder's state: pre-signed records per issuing CA, kept fresh in the background.

Hot path (``lookup``): parse (a fast path for one SHA-1 CertID without extensions), find the CA
by issuerKeyHash, find the record by serial, re-assemble the response. No database, no HSM.
Everything that needs a signature now (nonce, SHA-256 CertIDs, several certificates, unknown
serials, a record not signed yet) becomes a ``LiveJob`` that the HTTP layer runs in a thread.

Background thread: initial load and pre-sign, a watcher polling ``status_event`` (and new
``certificate`` rows) every ``poll_interval`` seconds, refresh of records nearing nextUpdate,
responder certificate renewal (signs a whole new set with the new key, then swaps).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography import x509
from sqlalchemy import select

from pki import audit
from pki.ca import responder as responders
from pki.ca.responder import AuthorityLike
from pki.keytypes import KeyType
from pki.ocsp import records as rec
from pki.ocsp import response as resp
from pki.ocsp.redis_tier import RedisTier
from pki.ocsp.request import MalformedRequest, OcspRequest, fast_single_sha1, parse_request
from pki.store.models import Certificate, StatusEvent

log = logging.getLogger(__name__)

BATCH = 2000                   # records signed per audit record
GAP_TTL = 10.0                 # seconds an id gap in status_event is watched for a late commit
MAX_PENDING_LIVE = 64          # live signatures queued before answering tryLater
UNKNOWN_CACHE = 20_000


class IssuingCa(Protocol):
    @property
    def id(self) -> int: ...
    @property
    def slug(self) -> str: ...
    @property
    def certificate(self) -> x509.Certificate: ...


class OcspAuthority(AuthorityLike, Protocol):
    def issuing_cas(self) -> list[Any]: ...


@dataclass(frozen=True)
class Answer:
    body: bytes
    kind: str                  # good | revoked | unknown | malformed | unauthorized | ...
    this_update: int = 0
    next_update: int = 0


@dataclass(frozen=True)
class LiveJob:
    state: rec.CaState
    request: OcspRequest


def _status_fields(row: Any) -> tuple[int, int, int]:
    status = row.status
    if status == "active":
        return int(resp.CertStatus.GOOD), resp.NO_REASON, 0
    at = row.revoked_at or row.status_changed_at or row.created_at
    revoked_at = int(at.timestamp()) if at is not None else 0
    if status == "hold":
        return resp.CertStatus.REVOKED, resp.REASON_CODES["certificateHold"], revoked_at
    return resp.CertStatus.REVOKED, resp.REASON_CODES.get(row.reason or "", resp.NO_REASON), \
        revoked_at


class OcspService:
    """Pre-signed OCSP answers for every certificate of every issuing CA of an Authority."""

    def __init__(self, auth: OcspAuthority, *, redis_url: str | None = None,
                 redis_prefix: str = "cps:", poll_interval: float = 0.2,
                 maintenance_interval: float = 30.0,
                 responder_key_type: KeyType | None = None) -> None:
        self.auth = auth
        self.clock = auth.clock
        self.config = auth.config.ocsp
        self.poll_interval = poll_interval
        self.responder_key_type = responder_key_type
        self.maintenance_interval = maintenance_interval
        url = redis_url if redis_url is not None else self.config.redis_url
        self.redis = RedisTier(url, redis_prefix) if url else None
        self.states: dict[int, rec.CaState] = {}
        self._by_key: dict[str, dict[bytes, rec.CaState]] = {"sha1": {}, "sha256": {}}
        self._unknown: OrderedDict[tuple[int, bytes], bytes] = OrderedDict()
        self._lock = threading.RLock()          # writers only; the hot path reads without it
        self._stop = threading.Event()
        self.ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._high_water = 0
        self._gaps: dict[int, float] = {}
        self._done: set[int] = set()
        self._max_cert_id = 0
        self._rebuilding: dict[int, set[str]] = {}
        self.generation = 0                     # bumped on every status change (HTTP caches)
        self.signed_total = 0
        self.live_pending = 0
        self.error: BaseException | None = None
        self._oldest: int | None = None

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

    def load(self) -> None:
        """Initial load: responders, every certificate's status, pre-signing (blocking)."""
        with self.auth.store.session() as session:
            self._high_water = session.execute(
                select(StatusEvent.id).order_by(StatusEvent.id.desc()).limit(1)
            ).scalar_one_or_none() or 0
        for ca in self.auth.issuing_cas():
            responder = responders.ensure(self.auth, ca, key_type=self.responder_key_type)
            state = rec.CaState(ca.id, ca.slug, ca.certificate, responder)
            self._fill(state, "initial")
            self._register(state)
        self.ready.set()

    def _register(self, state: rec.CaState) -> None:
        with self._lock:
            self.states[state.ca_id] = state
            for hash_name, key_hash in state.key_hashes.items():
                self._by_key[hash_name][key_hash] = state
            self.generation += 1

    def _run(self) -> None:
        try:
            self.load()
        except BaseException as exc:
            log.exception("OCSP initial load failed")
            self.error = exc
            self.ready.set()
            return
        next_maintenance = time.monotonic() + self.maintenance_interval
        while not self._stop.wait(self.poll_interval):
            try:
                self.poll()
                if time.monotonic() >= next_maintenance:
                    self.maintain()
                    next_maintenance = time.monotonic() + self.maintenance_interval
            except Exception:
                log.exception("OCSP background cycle failed; retrying")

    # --- the hot path ----------------------------------------------------------------
    def now(self) -> int:
        return int(self.clock.now().timestamp())

    def lookup(self, der: bytes) -> Answer | LiveJob:
        fast = fast_single_sha1(der)
        if fast is not None:
            name_hash, key_hash, serial = fast
            state = self._by_key["sha1"].get(key_hash)
            if state is None or state.name_hashes["sha1"] != name_hash:
                return Answer(resp.UNAUTHORIZED, "unauthorized")
            record = state.records.get(serial)
            if record is not None and len(record) > rec.HEADER_SIZE:
                _, this_update, next_update, status, _, _ = rec.unpack(record)
                if next_update > self.now():
                    kind = "good" if status == resp.CertStatus.GOOD else "revoked"
                    return Answer(state.assemble(serial, record), kind, this_update, next_update)
            elif record is None:
                cached = self._unknown.get((state.ca_id, serial))
                if cached is not None:
                    return Answer(cached, "unknown", 0, 0)
            return LiveJob(state, OcspRequest((_sha1_id(state, serial),), None))
        try:
            request = parse_request(der)
        except MalformedRequest:
            return Answer(resp.MALFORMED, "malformed")
        state = None
        for cid in request.cert_ids:
            found = self._by_key[cid.hash_name].get(cid.issuer_key_hash)
            if found is None or found.name_hashes[cid.hash_name] != cid.issuer_name_hash \
                    or (state is not None and found is not state):
                # One delegated responder per CA: a request spanning CAs cannot be signed once.
                return Answer(resp.UNAUTHORIZED, "unauthorized")
            state = found
        assert state is not None
        return LiveJob(state, request)

    def presigned_status(self, name_hash: bytes, key_hash: bytes, serial: bytes
                         ) -> tuple[int, int, int, int, int] | None:
        """Read-only, for a relying party in this process: ``(status, reason, revoked_at,
        this_update, next_update)`` of the pre-signed record that ``lookup`` would answer for
        this SHA-1 CertID (``serial`` = INTEGER content octets), or None when ``lookup`` would
        not answer it from memory (unknown CA or serial, not signed yet, past nextUpdate)."""
        state = self._by_key["sha1"].get(key_hash)
        if state is None or state.name_hashes["sha1"] != name_hash:
            return None
        record = state.records.get(serial)
        if record is None or len(record) <= rec.HEADER_SIZE:
            return None
        _, this_update, next_update, status, reason, revoked_at = rec.unpack(record)
        if next_update <= self.now():
            return None
        return status, reason, revoked_at, this_update, next_update

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
                if rec.same_status(state.records.get(cid.serial, b""), status, reason,
                                   revoked_at):
                    state.records[cid.serial] = signed
                    self.signed_total += 1
            return Answer(state.assemble(cid.serial, signed), kinds[0], now, next_update)
        tbs = resp.response_data(state.responder_id, now, singles, request.nonce)
        body = resp.successful(tbs, state.algorithm, state.responder.signer.sign(tbs), state.certs)
        kind = kinds[0] if len(kinds) == 1 else "multi"
        if single_sha1 and request.nonce is None:
            with self._lock:
                self._unknown[(state.ca_id, cid.serial)] = body
                while len(self._unknown) > UNKNOWN_CACHE:
                    self._unknown.popitem(last=False)
        return Answer(body, kind, now, next_update)

    # --- status changes ----------------------------------------------------------------
    def on_status_change(self, serials: Iterable[str]) -> int:
        """Re-sign these certificates now (call after the revoke/hold/release committed)."""
        wanted = list(serials)
        rows: list[Any] = []
        with self.auth.store.session() as session:
            for i in range(0, len(wanted), 500):
                rows.extend(session.execute(
                    select(Certificate).where(Certificate.serial.in_(wanted[i:i + 500]))
                ).scalars())
        return self._apply(rows, "status-change")

    def poll(self) -> int:
        """One watcher tick: new status events (with a look-back for late commits), new rows."""
        floor = min(self._gaps) - 1 if self._gaps else self._high_water
        with self.auth.store.session() as session:
            events = session.execute(
                select(StatusEvent.id, StatusEvent.certificate_id).where(StatusEvent.id > floor)
                .order_by(StatusEvent.id).limit(5000)).all()
            fresh = [e for e in events if e.id not in self._done]
            cert_ids = {e.certificate_id for e in fresh}
            rows = list(session.execute(select(Certificate).where(
                Certificate.id.in_(cert_ids))).scalars()) if cert_ids else []
            new_rows = list(session.execute(
                select(Certificate).where(Certificate.id > self._max_cert_id)
                .order_by(Certificate.id).limit(20_000)).scalars())
        self._track_events([e.id for e in events])
        if new_rows:
            self._max_cert_id = max(self._max_cert_id, new_rows[-1].id)
        return self._apply(rows + new_rows, "status-change")

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
            by_ca.setdefault(row.ca_id, []).append((serial, status, reason, revoked_at))
            if row.ca_id in self._rebuilding:
                self._rebuilding[row.ca_id].add(row.serial)
        count = 0
        for ca_id, items in by_ca.items():
            state = self.states[ca_id]
            count += self._sign_items(state, state.records, items, why)
            with self._lock:
                for serial, *_ in items:
                    self._unknown.pop((ca_id, serial), None)
                self.generation += 1
        return count

    # --- pre-signing -------------------------------------------------------------------
    def _rows(self, ca_id: int, page: int = 20_000) -> Iterator[Any]:
        """Every certificate of a CA, by keyset pages: no transaction stays open while the
        caller signs and audits (SQLite sessions take the write lock at BEGIN)."""
        last = 0
        while True:
            with self.auth.store.session() as session:
                rows = session.execute(
                    select(Certificate.id, Certificate.serial, Certificate.status,
                           Certificate.reason, Certificate.revoked_at,
                           Certificate.status_changed_at, Certificate.created_at)
                    .where(Certificate.ca_id == ca_id, Certificate.id > last)
                    .order_by(Certificate.id).limit(page)).all()
            if not rows:
                return
            yield from rows
            last = rows[-1].id

    def _fill(self, state: rec.CaState, why: str) -> None:
        """Load every certificate of the CA and sign what Redis does not already hold."""
        target = state.records
        shared = self.redis.load(state.slug, state.responder_serial) if self.redis else {}
        fresh_after = self.now() + self.config.refresh_before_hours * 3600
        items: list[tuple[bytes, int, int, int]] = []
        # Streamed in batches so that the transient list never holds the whole population.
        for row in self._rows(state.ca_id):
            self._max_cert_id = max(self._max_cert_id, row.id)
            status, reason, revoked_at = _status_fields(row)
            serial = rec.serial_content(row.serial)
            found = shared.get(serial)
            if found is not None and rec.same_status(found, status, reason, revoked_at) \
                    and rec.unpack(found)[2] > fresh_after:
                target[serial] = found
                continue
            items.append((serial, status, reason, revoked_at))
            if len(items) >= BATCH:
                self._sign_items(state, target, items, why)
                items = []
        self._sign_items(state, target, items, why)

    def _sign_items(self, state: rec.CaState, target: dict[bytes, bytes],
                    items: list[tuple[bytes, int, int, int]], why: str) -> int:
        for start in range(0, len(items), BATCH):
            chunk = items[start:start + BATCH]
            now = self.now()
            next_update = now + self.config.validity_hours * 3600
            signed = {}
            for serial, status, reason, revoked_at in chunk:
                header = rec.pack(now, now, next_update, status, reason, revoked_at)
                signed[serial] = state.sign(serial, header)
            with self._lock:
                target.update(signed)
                self.signed_total += len(signed)
                if self._oldest is None:
                    self._oldest = now
            if self.redis is not None:
                self.redis.store(state.slug, state.responder_serial, signed,
                                 state.responder.not_after)
            with self.auth.store.session() as session:
                audit.append(session, "ocsp.presign", state.slug,
                             {"count": len(signed), "why": why,
                              "responder_serial": state.responder_serial,
                              "this_update": dt.datetime.fromtimestamp(now, dt.UTC).isoformat(),
                              "next_update": dt.datetime.fromtimestamp(
                                  next_update, dt.UTC).isoformat()},
                             clock=self.clock)
        return len(items)

    def maintain(self) -> None:
        """Renew responders nearing expiry; re-sign records nearing nextUpdate."""
        oldest: int | None = None
        for ca in self.auth.issuing_cas():
            state = self.states.get(ca.id)
            if state is None:
                continue
            if responders.needs_renewal(self.auth, state.responder):
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
        new = rec.CaState(ca.id, ca.slug, ca.certificate, responder)
        self._rebuilding[ca.id] = set()
        try:
            self._fill(new, "renewal")
            self._register(new)
        finally:
            changed = self._rebuilding.pop(ca.id, set())
        if changed:
            self.on_status_change(changed)

    # --- observability -------------------------------------------------------------------
    def presigned_count(self) -> int:
        return sum(len(s.records) for s in self.states.values())

    def oldest_this_update(self) -> int | None:
        """thisUpdate of the oldest pre-signed record (as of the last maintenance scan)."""
        return self._oldest


def _sha1_id(state: rec.CaState, serial: bytes) -> Any:
    from pki.ocsp.request import CertId
    return CertId("sha1", state.name_hashes["sha1"], state.key_hashes["sha1"], serial)
