"""The OCSP hot path, shared by the signer role's ``OcspService`` and the status role's
``OcspMirror``: pre-signed records per CA in memory, answered without a database or an HSM.

Imports no PKCS#11 code: the status role builds on it (pki.roles.status).

``lookup``: parse (a fast path for one SHA-1 CertID without extensions), find the CA by
issuerKeyHash, find the record by serial, re-assemble the response. Everything that needs a
signature now (nonce, SHA-256 CertIDs, several certificates, unknown serials, a record not signed
yet or past nextUpdate) becomes a ``LiveJob`` that the HTTP layer hands to ``sign_live`` in a
worker thread: the signer signs it, a status replica forwards it to the signer.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

from pki.clock import Clock
from pki.ocsp import records as rec
from pki.ocsp import response as resp
from pki.ocsp.request import CertId, MalformedRequest, OcspRequest, fast_single_sha1, parse_request

MAX_PENDING_LIVE = 64          # live signatures queued before answering tryLater
UNKNOWN_CACHE = 20_000


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
    der: bytes = b""           # the request as received (a status replica forwards it)


class RecordIndex:
    """Records of every served CA, by issuerKeyHash and serial; the read side of the responder.

    Writers hold ``_lock``; the hot path reads without it (dict reads are atomic)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.states: dict[int, rec.CaState] = {}
        self._by_key: dict[str, dict[bytes, rec.CaState]] = {"sha1": {}, "sha256": {}}
        self._unknown: OrderedDict[tuple[int, bytes], bytes] = OrderedDict()
        self._lock = threading.RLock()
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.generation = 0                     # bumped on every change (HTTP caches)
        self.signed_total = 0
        self.live_pending = 0
        self._oldest: int | None = None

    def now(self) -> int:
        return int(self.clock.now().timestamp())

    def _register(self, state: rec.CaState) -> None:
        with self._lock:
            old = self.states.get(state.ca_id)
            if old is not None:
                for hash_name, key_hash in old.key_hashes.items():
                    self._by_key[hash_name].pop(key_hash, None)
            self.states[state.ca_id] = state
            for hash_name, key_hash in state.key_hashes.items():
                self._by_key[hash_name][key_hash] = state
            self.generation += 1

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
            return LiveJob(state, OcspRequest((_sha1_id(state, serial),), None), der)
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
        return LiveJob(state, request, der)

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
        raise NotImplementedError

    def remember_unknown(self, ca_id: int, serial: bytes, body: bytes) -> None:
        with self._lock:
            self._unknown[(ca_id, serial)] = body
            while len(self._unknown) > UNKNOWN_CACHE:
                self._unknown.popitem(last=False)

    def forget_unknown(self, ca_id: int, serials: list[bytes]) -> None:
        with self._lock:
            for serial in serials:
                self._unknown.pop((ca_id, serial), None)

    # --- observability -------------------------------------------------------------------
    def presigned_count(self) -> int:
        return sum(len(s.records) for s in self.states.values())

    def oldest_this_update(self) -> int | None:
        """thisUpdate of the oldest pre-signed record (as of the last scan)."""
        return self._oldest


def _sha1_id(state: rec.CaState, serial: bytes) -> CertId:
    return CertId("sha1", state.name_hashes["sha1"], state.key_hashes["sha1"], serial)
