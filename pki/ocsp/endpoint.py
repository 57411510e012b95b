"""HTTP binding of the responder (RFC 6960 appendix A, RFC 5019 §5-6): POST and GET, caching
headers, a small response cache keyed by the exact request, Prometheus metrics.

Runs on the server's event loop: answers from memory synchronously; a request that needs a live
signature returns a coroutine that signs in a worker thread (the signer role signs; a status
replica forwards the request to the signer there) (bounded: beyond
``MAX_PENDING_LIVE`` queued signatures the answer is tryLater, so a flood of nonces or random
serials cannot queue unbounded HSM work).
"""

from __future__ import annotations

import base64
import binascii
import bisect
import functools
import hashlib
from collections import OrderedDict
from collections.abc import Awaitable
from concurrent.futures import ThreadPoolExecutor
from email.utils import formatdate
from time import perf_counter
from urllib.parse import unquote_to_bytes

from pki.http import Request, Response
from pki.http.server import Prebuilt, encode_fields
from pki.ocsp import response as resp
from pki.ocsp.lookup import MAX_PENDING_LIVE, Answer, LiveJob, RecordIndex

CONTENT_TYPE = "application/ocsp-response"
REQUEST_TYPE = "application/ocsp-request"
MAX_REQUEST = 64 * 1024
CACHE_BYTES = 8 * 1024 * 1024     # complete responses kept by exact request (LRU)
CACHE_SECONDS = 60                # a cached response is re-read from the records after this
BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0)


@functools.lru_cache(maxsize=4096)
def http_date(epoch: int) -> str:
    return formatdate(epoch, usegmt=True)


class _Entry:
    """A cached answer: the response as the server writes it, valid while ``fresh_until``."""

    __slots__ = ("answer", "etag", "fresh_until", "response", "second")

    def __init__(self, answer: Answer, etag: str, fresh_until: int) -> None:
        self.answer = answer
        self.etag = etag
        self.fresh_until = fresh_until
        self.second = -1
        self.response = Prebuilt(200, answer.body, CONTENT_TYPE)


class OcspEndpoint:
    """The ``/ocsp`` handler for pki.http.server (may return a coroutine: see module doc)."""

    def __init__(self, service: RecordIndex, *, path: str = "/ocsp",
                 executor: ThreadPoolExecutor | None = None,
                 cache_bytes: int = CACHE_BYTES) -> None:
        self.service = service
        self.path = path
        self._prefix = path + "/"
        self.executor = executor or ThreadPoolExecutor(max_workers=2,
                                                       thread_name_prefix="ocsp-sign")
        # Complete responses by exact request: DER (POST, bytes) or path (GET, str).
        self._cache: OrderedDict[bytes | str, _Entry] = OrderedDict()
        self._cache_generation = -1
        self._cache_bytes = 0
        self.cache_limit = cache_bytes
        self.cache_hits = 0
        self.counts: dict[str, int] = {}
        self.buckets = [0] * (len(BUCKETS) + 1)
        self.latency_sum = 0.0
        self.latency_count = 0

    # --- dispatch ----------------------------------------------------------------------
    def __call__(self, req: Request) -> Response | Awaitable[Response] | None:
        started = perf_counter()
        path = req.path
        method = req.method
        # The hot path: a request seen before, answered from the cache of complete responses.
        key: bytes | str | None = None
        if path == self.path:
            if method == "POST":
                ctype = req.headers.get("content-type")
                if ctype is None or ctype == REQUEST_TYPE:
                    key = req.body
        elif method == "GET" and path.startswith(self._prefix) \
                and "if-none-match" not in req.headers:
            key = path
        if key is not None:
            service = self.service
            if self._cache_generation != service.generation:
                self._clear(service.generation)
            entry = self._cache.get(key)
            if entry is not None:
                now = service.now()
                if now < entry.fresh_until:
                    self._cache.move_to_end(key)
                    if entry.second != now:
                        self._refresh(entry, now)
                    self.cache_hits += 1
                    self._observe(entry.answer.kind, started)
                    return entry.response
                self._drop(key)
        if path != self.path and not path.startswith(self._prefix):
            return None
        if method == "POST" and path in (self.path, self._prefix):
            ctype = req.headers.get("content-type", REQUEST_TYPE).split(";")[0].strip().lower()
            if ctype != REQUEST_TYPE:
                return self._plain(415, "OCSP requests are application/ocsp-request\n", started)
            der: bytes | None = req.body
        elif method in ("GET", "HEAD"):
            encoded = path[len(self.path) + 1:]
            der = _decode_get(encoded)
        else:
            out = self._plain(405, "use GET or POST\n", started)
            out.headers.append(("Allow", "GET, HEAD, POST"))
            return out
        if der is None:
            return self._finish(Answer(resp.MALFORMED, "malformed"), started, req)
        if len(der) > MAX_REQUEST:
            return self._plain(413, "OCSP request too large\n", started)
        return self.answer(der, req, started, key)

    def answer(self, der: bytes, req: Request, started: float,
               key: bytes | str | None = None) -> Response | Awaitable[Response]:
        service = self.service
        if not service.ready.is_set() or service.error is not None:
            return self._finish(Answer(resp.TRY_LATER, "trylater"), started, req)
        generation = service.generation      # read before the lookup: a change after it
        if self._cache_generation != generation:   # clears what this request stores
            self._clear(generation)
        found = service.lookup(der)
        if isinstance(found, LiveJob):
            return self._live(found, der, req, started, key)
        return self._finish(found, started, req, remember=key)

    async def _live(self, job: LiveJob, der: bytes, req: Request, started: float,
                    key: bytes | str | None) -> Response:
        import asyncio
        service = self.service
        if service.live_pending >= MAX_PENDING_LIVE:
            return self._finish(Answer(resp.TRY_LATER, "trylater"), started, req)
        service.live_pending += 1
        generation = service.generation
        try:
            loop = asyncio.get_running_loop()
            answer = await loop.run_in_executor(self.executor, service.sign_live, job)
        except Exception:
            answer = Answer(resp.INTERNAL_ERROR, "internalerror")
        finally:
            service.live_pending -= 1
        cacheable = job.request.nonce is None
        # Remember only if nothing changed while signing (the status signed may be stale).
        remember = key if cacheable and generation == service.generation else None
        return self._finish(answer, started, req, remember=remember, nonce=not cacheable)

    # --- the response cache ------------------------------------------------------------
    def _clear(self, generation: int) -> None:
        self._cache.clear()
        self._cache_bytes = 0
        self._cache_generation = generation

    def _drop(self, key: bytes | str) -> None:
        entry = self._cache.pop(key, None)
        if entry is not None:
            self._cache_bytes -= _cost(key, entry)

    def _remember(self, key: bytes | str, entry: _Entry) -> None:
        if self._cache_generation != self.service.generation:
            return                      # a change since this request read its records
        self._drop(key)
        cost = _cost(key, entry)
        while self._cache and self._cache_bytes + cost > self.cache_limit:
            old_key, old = self._cache.popitem(last=False)
            self._cache_bytes -= _cost(old_key, old)
        self._cache[key] = entry
        self._cache_bytes += cost

    def _refresh(self, entry: _Entry, now: int) -> None:
        """Re-encode the headers of a cached response (max-age counts down each second)."""
        answer = entry.answer
        max_age = max(0, answer.next_update - now)
        entry.response.fields = encode_fields(200, CONTENT_TYPE, len(answer.body), [
            ("Cache-Control", f"max-age={max_age}, public, no-transform, must-revalidate"),
            ("ETag", entry.etag),
            ("Last-Modified", http_date(answer.this_update)),
            ("Expires", http_date(answer.next_update)),
        ])
        entry.second = now

    # --- responses ----------------------------------------------------------------------
    def _finish(self, answer: Answer, started: float, req: Request, *,
                remember: bytes | str | None = None, nonce: bool = False) -> Response:
        headers: list[tuple[str, str]] = []
        status = 200
        if answer.next_update and not nonce:
            now = self.service.now()
            etag = '"' + hashlib.sha256(answer.body).hexdigest()[:32] + '"'
            if remember is not None and answer.next_update > now:
                entry = _Entry(answer, etag, min(answer.next_update, now + CACHE_SECONDS))
                self._remember(remember, entry)
            max_age = max(0, answer.next_update - now)
            headers += [
                ("Cache-Control", f"max-age={max_age}, public, no-transform, must-revalidate"),
                ("ETag", etag),
                ("Last-Modified", http_date(answer.this_update)),
                ("Expires", http_date(answer.next_update)),
            ]
            if req.method in ("GET", "HEAD") and req.headers.get("if-none-match") == etag:
                status = 304
        else:
            headers.append(("Cache-Control", "no-store"))
        self._observe(answer.kind, started)
        body = b"" if status == 304 else answer.body
        return Response(status, body, CONTENT_TYPE, headers)

    def _plain(self, status: int, text: str, started: float) -> Response:
        self._observe(f"http{status}", started)
        return Response(status, text.encode(), "text/plain; charset=utf-8",
                        [("Cache-Control", "no-store")])

    def _observe(self, kind: str, started: float) -> None:
        elapsed = perf_counter() - started
        self.counts[kind] = self.counts.get(kind, 0) + 1
        self.latency_sum += elapsed
        self.latency_count += 1
        self.buckets[bisect.bisect_left(BUCKETS, elapsed)] += 1

    # --- metrics ------------------------------------------------------------------------
    def metrics_text(self) -> str:
        out = ["# HELP ocsp_requests_total OCSP requests by answer.",
               "# TYPE ocsp_requests_total counter"]
        for kind, count in sorted(self.counts.items()):
            out.append(f'ocsp_requests_total{{result="{kind}"}} {count}')
        out += ["# HELP ocsp_request_seconds Time to answer an OCSP request.",
                "# TYPE ocsp_request_seconds histogram"]
        cumulative = 0
        for bound, count in zip(BUCKETS, self.buckets, strict=False):
            cumulative += count
            out.append(f'ocsp_request_seconds_bucket{{le="{bound}"}} {cumulative}')
        out.append(f'ocsp_request_seconds_bucket{{le="+Inf"}} {self.latency_count}')
        out.append(f"ocsp_request_seconds_sum {self.latency_sum:.6f}")
        out.append(f"ocsp_request_seconds_count {self.latency_count}")
        oldest = self.service.oldest_this_update()
        age = max(0, self.service.now() - oldest) if oldest is not None else 0
        out += ["# HELP ocsp_presigned_age_seconds Age of the oldest pre-signed response.",
                "# TYPE ocsp_presigned_age_seconds gauge",
                f"ocsp_presigned_age_seconds {age}",
                "# HELP ocsp_presigned_responses Pre-signed responses held.",
                "# TYPE ocsp_presigned_responses gauge",
                f"ocsp_presigned_responses {self.service.presigned_count()}",
                "# HELP ocsp_signatures_total Responses signed by this process.",
                "# TYPE ocsp_signatures_total counter",
                f"ocsp_signatures_total {self.service.signed_total}"]
        return "\n".join(out) + "\n"


def _cost(key: bytes | str, entry: _Entry) -> int:
    """Approximate bytes held by a cache entry (key, body, encoded headers, objects)."""
    return len(key) + len(entry.answer.body) + 600


def _decode_get(encoded: str) -> bytes | None:
    """The DER of a GET request: URL-escaped base64 (RFC 6960 A.1), standard or URL-safe."""
    try:
        raw = unquote_to_bytes(encoded).strip()
        if len(raw) > MAX_REQUEST * 2 or not raw:
            return None
        raw = raw.replace(b"-", b"+").replace(b"_", b"/")
        raw += b"=" * (-len(raw) % 4)
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        return None
