"""The status role's OCSP responder: the signer's pre-signed records, mirrored from the store.

No key, no PKCS#11 module (nothing here imports pki.hsm or pki.ca). The mirror loads, for every
issuing CA, the records of the responder certificate named in ``ocsp_responder`` (a set the
signer completed), then polls ``ocsp_record`` for ``seq > last`` every ``poll_interval`` (a new
status is served within ``poll_interval`` + the signer's own delay) and ``ocsp_responder`` for a
renewal (then reloads that CA). The hot path is ``RecordIndex.lookup``, the very code the signer
answers with: same bytes.

A request that needs a signature now (nonce, SHA-256 CertID, several CertIDs, unknown serial,
stale record) is forwarded as is to the signer's ``POST /ocsp-live`` on its unix socket; the
signer unreachable or busy → tryLater, and pre-signed answers keep flowing. Each client address
has a small budget of forwarded requests (``LiveBudget``, a token bucket): beyond it tryLater,
so no one client keeps the signer busy (issue 13); pre-signed answers are not budgeted.

The store unreachable: the records held keep being served until their nextUpdate; the outage is
logged once (and its end), and polling resumes by itself.
"""

from __future__ import annotations

import http.client
import logging
import socket
import threading
import time
from collections.abc import Collection
from pathlib import Path

from pki.clock import SYSTEM_CLOCK, Clock
from pki.crl.reader import StoreCas
from pki.crl.scope import ROOT_ROLE
from pki.http import Request, Response
from pki.ocsp import records as rec
from pki.ocsp import recordstore
from pki.ocsp import response as resp
from pki.ocsp.endpoint import OcspEndpoint
from pki.ocsp.lookup import Answer, LiveJob, RecordIndex
from pki.store.db import Store

log = logging.getLogger(__name__)

LIVE_PATH = "/ocsp-live"
KIND_HEADER = "X-OCSP-Kind"
THIS_UPDATE_HEADER = "X-OCSP-This-Update"
NEXT_UPDATE_HEADER = "X-OCSP-Next-Update"
SCAN_INTERVAL = 300.0          # seconds between scans for the oldest thisUpdate (metrics)
LIVE_RATE = 5.0                # live requests forwarded per second per client address...
LIVE_BURST = 20                # ...after a burst of this many
LIVE_CLIENTS = 65_536          # addresses tracked; beyond, the full buckets are forgotten


class LiveBudget:
    """A token bucket per client address for the requests forwarded to the signer."""

    def __init__(self, rate: float = LIVE_RATE, burst: int = LIVE_BURST,
                 max_clients: int = LIVE_CLIENTS) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.max_clients = max_clients
        self._buckets: dict[str, tuple[float, float]] = {}     # address -> (tokens, at)
        self.refused = 0

    def take(self, client: str, now: float | None = None) -> bool:
        """One forwarded request for ``client`` now, or False (answer tryLater)."""
        now = time.monotonic() if now is None else now
        tokens, at = self._buckets.get(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens < 1.0:
            self._buckets[client] = (tokens, now)
            self.refused += 1
            return False
        if client not in self._buckets and len(self._buckets) >= self.max_clients:
            self._forget_full(now)
        self._buckets[client] = (tokens - 1.0, now)
        return True

    def _forget_full(self, now: float) -> None:
        """Drop the buckets that have refilled (they hold nothing); if none, the oldest half."""
        full = [c for c, (t, at) in self._buckets.items()
                if t + (now - at) * self.rate >= self.burst]
        for client in full or list(self._buckets)[: len(self._buckets) // 2]:
            del self._buckets[client]


def client_address(req: Request, trusted: Collection[str]) -> str:
    """The client of ``req``: its peer, or from a peer in ``trusted`` (the supervisor's
    front) the rightmost ``X-Forwarded-For`` hop."""
    if req.remote in trusted:
        hop = req.headers.get("x-forwarded-for", "").rsplit(",", 1)[-1].strip()
        if hop:
            return hop
    return req.remote


class ForwardingEndpoint(OcspEndpoint):
    """``/ocsp`` of a status replica: a live request over its client's budget is tryLater."""

    def __init__(self, service: RecordIndex, *, budget: LiveBudget | None = None,
                 trusted: Collection[str] = (), **options: object) -> None:
        super().__init__(service, **options)  # type: ignore[arg-type]
        self.budget = budget or LiveBudget()
        self.trusted = frozenset(trusted)

    async def _live(self, job: LiveJob, der: bytes, req: Request, started: float,
                    key: bytes | str | None) -> Response:
        if not self.budget.take(client_address(req, self.trusted)):
            return self._finish(Answer(resp.TRY_LATER, "trylater"), started, req)
        return await super()._live(job, der, req, started, key)


class Outage:
    """Logs a dependency going away once, and its return once (not once per poll)."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.down_since: float | None = None

    def failed(self, exc: BaseException) -> None:
        if self.down_since is None:
            self.down_since = time.monotonic()
            log.error("%s unreachable, serving what is held: %s", self.what,
                      str(exc).splitlines()[0] if str(exc) else type(exc).__name__)

    def ok(self) -> None:
        if self.down_since is not None:
            log.warning("%s reachable again after %.1f s", self.what,
                        time.monotonic() - self.down_since)
            self.down_since = None


class UnixConnection(http.client.HTTPConnection):
    """HTTP/1.1 over a unix socket (the signer's internal interface)."""

    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = str(path)

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class SignerClient:
    """``POST /ocsp-live`` to the signer; any failure is tryLater (never an exception)."""

    def __init__(self, path: Path, timeout: float = 5.0) -> None:
        self.path = path
        self.timeout = timeout
        self.outage = Outage(f"signer ({path})")

    def ask(self, der: bytes) -> Answer:
        conn = UnixConnection(self.path, self.timeout)
        try:
            conn.request("POST", LIVE_PATH, der, {"Content-Type": "application/ocsp-request"})
            reply = conn.getresponse()
            body = reply.read()
            if reply.status != 200:
                raise OSError(f"signer answered HTTP {reply.status}")
            kind = reply.getheader(KIND_HEADER, "signed")
            this_update = int(reply.getheader(THIS_UPDATE_HEADER, "0"))
            next_update = int(reply.getheader(NEXT_UPDATE_HEADER, "0"))
        except (OSError, http.client.HTTPException, ValueError) as exc:
            self.outage.failed(exc)
            return Answer(resp.TRY_LATER, "trylater")
        finally:
            conn.close()
        self.outage.ok()
        return Answer(body, kind, this_update, next_update)


class OcspMirror(RecordIndex):
    """Pre-signed OCSP answers of every issuing CA, read from the store; no signing here."""

    def __init__(self, store: Store, cas: StoreCas, *, signer: SignerClient | None = None,
                 clock: Clock = SYSTEM_CLOCK, poll_interval: float = 0.25) -> None:
        super().__init__(clock)
        self.store = store
        self.cas = cas
        self.signer = signer
        self.poll_interval = poll_interval
        self.outage = Outage("store (ocsp_record)")
        self._last = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_scan = 0.0
        self._waiting = False

    # --- life cycle ------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="ocsp-mirror", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self.ready.is_set():
                    self.poll()
                else:
                    self.load()
                self.outage.ok()
            except Exception as exc:   # the store away: keep serving, retry next tick
                self.outage.failed(exc)
            self._stop.wait(self.poll_interval)

    def load(self) -> bool:
        """Every CA's records for its current responder (blocking), then ``ready``; False (not
        ready, try again) while the signer has not completed every issuing CA's first set."""
        last = recordstore.max_seq(self.store)   # read first: a write after it is polled again
        self.cas.reload()
        rows = recordstore.responders(self.store)
        missing = [c.slug for c in self.cas.cas() if c.role != ROOT_ROLE and c.id not in rows]
        if missing:
            if not self._waiting:
                log.warning("waiting for the signer's first OCSP records of %s",
                            ", ".join(missing))
            self._waiting = True
            return False
        self._last = last
        for row in rows.values():
            self._load_ca(row)
        self._scan()
        self.ready.set()
        return True

    def _load_ca(self, row: recordstore.ResponderRow) -> None:
        ca = self.cas.by_id(row.ca_id)
        if ca is None:
            self.cas.reload()
            ca = self.cas.by_id(row.ca_id)
            if ca is None:
                return
        state = rec.CaState(ca.id, ca.slug, ca.certificate, row.der, row.algorithm,
                            row.not_after)
        state.records = recordstore.load(self.store, ca.id, state.responder_serial)
        self._register(state)
        log.info("OCSP %s: %d records of responder %s", ca.slug, len(state.records),
                 state.responder_serial)

    # --- catching up -----------------------------------------------------------------------
    def poll(self) -> int:
        """Apply the records written since the last poll; reload a CA whose responder changed.
        Returns how many records changed."""
        applied = 0
        for page in recordstore.changes(self.store, self._last):
            touched: dict[int, list[bytes]] = {}
            for ca_id, responder_serial, serial, record, seq in page:
                state = self.states.get(ca_id)
                if state is not None and state.responder_serial == responder_serial:
                    state.records[serial] = record
                    touched.setdefault(ca_id, []).append(serial)
                self._last = seq
            for ca_id, serials in touched.items():
                self.forget_unknown(ca_id, serials)
                applied += len(serials)
            if touched:
                with self._lock:
                    self.generation += 1
        for row in recordstore.responders(self.store).values():
            state = self.states.get(row.ca_id)
            if state is None or state.responder_serial != row.responder_serial:
                self._load_ca(row)
        if time.monotonic() >= self._next_scan:
            self._scan()
        return applied

    def _scan(self) -> None:
        oldest: int | None = None
        for state in list(self.states.values()):
            for record in list(state.records.values()):
                this_update = rec.unpack(record)[1]
                if oldest is None or this_update < oldest:
                    oldest = this_update
        self._oldest = oldest
        self._next_scan = time.monotonic() + SCAN_INTERVAL

    # --- live requests -----------------------------------------------------------------------
    def sign_live(self, job: LiveJob) -> Answer:
        """Forward to the signer (runs in the endpoint's worker thread)."""
        if self.signer is None or not job.der:
            return Answer(resp.TRY_LATER, "trylater")
        answer = self.signer.ask(job.der)
        request = job.request
        if answer.kind == "unknown" and request.nonce is None and len(request.cert_ids) == 1 \
                and request.cert_ids[0].hash_name == "sha1":
            self.remember_unknown(job.state.ca_id, request.cert_ids[0].serial, answer.body)
        return answer

