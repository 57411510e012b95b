"""The one HTTP server behind ``cps-admin serve``: asyncio, HTTP/1.0 and 1.1.

Hot-path handlers (pki.http ``Handler``s: OCSP, CRLs, CA certificates) run on the event loop and
answer from memory; a handler may also return an awaitable when it must wait (a live OCSP
signature in a worker thread). Everything else goes to one WSGI app (the login broker and
patient API) run in a thread pool. The server owns ``GET /health`` and ``GET /metrics`` (the
latter private: see ``serve``).

Hostile input never reaches a handler half-parsed and never costs unbounded memory: header and
body sizes are bounded (a body over its path's limit is refused with 413 from its Content-Length
or as its chunks arrive), bodies still arriving share one global budget (503 beyond it), a
client that sends its head or body too slowly gets 408, connections are capped below the
descriptor limit (pki.http.capacity), and pipelined requests are answered strictly in order, in
a loop (never recursion), with reading paused while a backlog is pending. Framing follows RFC
9112 (pki.http.wire): Host required in 1.1, blank lines before a request ignored, absolute-form
targets, chunked request bodies.
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
import logging
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pki.http import Request, Response
from pki.http.capacity import (
    Shedding,
    accept_batch,
    connection_cap,
    guard_accept_errors,
    raise_descriptor_limit,
    widen_backlog,
)
from pki.http.responses import (
    _CLOSE_END,
    _KEEP_ALIVE_END,
    Prebuilt,
    _Date,
    encode_fields,
    status_line,
)
from pki.http.wire import (
    MAX_BLANK_LINES,
    ChunkedBody,
    Fields,
    HttpError,
    Limits,
    _Head,
    parse_head,
)
from pki.http.wsgi import WsgiApp, run_wsgi

__all__ = ["HttpError", "HttpServer", "Limits", "Prebuilt", "encode_fields", "parse_head", "run",
           "serve", "status_line"]

log = logging.getLogger(__name__)

AnyHandler = Callable[[Request], Response | Awaitable[Response] | None]

# Parsed heads of recent requests, by their exact bytes: a keep-alive client repeats the same
# head (same Host, User-Agent, Content-Length), so parsing is one dict lookup. Only heads that
# parsed cleanly are kept; bounded in count and size.
HEAD_CACHE_ENTRIES = 1024
HEAD_CACHE_MAX = 2048
# A whole body this small is answered even when the body budget is spent (it is counted all
# the same): slow senders holding the budget must not stop ordinary requests.
SMALL_BODY = 64 * 1024


class HttpServer:
    def __init__(self, handlers: Sequence[AnyHandler], wsgi_app: WsgiApp | None = None, *,
                 limits: Limits | None = None,
                 readiness: Sequence[Callable[[], bool]] = (),
                 metrics: Sequence[Callable[[], str]] = (),
                 metrics_public: bool = True, metrics_token: str | None = None) -> None:
        """``metrics_public=False``: ``/metrics`` is 404 here unless ``metrics_token`` is set,
        which then must come as ``Authorization: Bearer <token>`` (else 401)."""
        self.handlers = list(handlers)
        self.metrics_public = metrics_public
        self.metrics_token = metrics_token
        self.wsgi_app = wsgi_app
        # A WSGI app may name the requests it answers without waiting on anything (no network,
        # no disk wait, no lock another request holds: CPU only) by an attribute
        # ``answers_without_waiting(method, path) -> bool``. Those are answered on the event
        # loop's thread: the hand-off to a worker thread and back costs more CPU than such a
        # request's own work (tests/httpd: ~70 µs of ~130 for a small answer).
        self.inline: Callable[[str, str], bool] | None = getattr(
            wsgi_app, "answers_without_waiting", None)
        self.limits = limits or Limits()
        self.readiness = list(readiness)
        self.metrics_providers = list(metrics)
        self.executor = ThreadPoolExecutor(max_workers=self.limits.wsgi_threads,
                                           thread_name_prefix="wsgi")
        self.listening = False
        self.date = _Date()
        self.status_counts: dict[int, int] = {}
        self.connections = 0
        self.server_name = "127.0.0.1"
        self.server_port = 0
        self.protocols: set[HttpProtocol] = set()
        # Keep-alive connections waiting for a request, in the order they became idle.
        self.idle: dict[HttpProtocol, None] = {}
        self.head_cache: dict[bytes, _Head] = {}
        self.fields_cache: dict[tuple[bytes, bytes], Fields] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self.max_connections = connection_cap(self.limits.max_connections)
        self.shedding = Shedding(log, "http server", self.max_connections)
        self.buffered_bodies = 0        # bytes reserved by bodies not yet whole (all connections)

    def ready(self) -> bool:
        return self.listening and all(check() for check in self.readiness)

    async def start(self, host: str, port: int, *, reuse_port: bool = False) -> asyncio.Server:
        loop = asyncio.get_running_loop()
        guard_accept_errors(loop, self.shedding)
        server = await loop.create_server(lambda: HttpProtocol(self), host, port,
                                          reuse_address=True, reuse_port=reuse_port or None,
                                          backlog=accept_batch())
        widen_backlog(server)
        return self._listening(server, server.sockets[0].getsockname())

    async def start_socket(self, sock: Any) -> asyncio.Server:
        """Serve on a socket already listening (a gunicorn arbiter's, shared by its workers)."""
        loop = asyncio.get_running_loop()
        guard_accept_errors(loop, self.shedding)
        server = await loop.create_server(lambda: HttpProtocol(self), sock=sock,
                                          backlog=accept_batch())
        return self._listening(server, sock.getsockname())

    async def start_unix(self, path: str) -> asyncio.Server:
        """Listen on a unix socket (an internal interface: the signer role's), mode 0600; its
        directory should be 0700 (the socket exists for a moment before the chmod)."""
        loop = asyncio.get_running_loop()
        server = await loop.create_unix_server(lambda: HttpProtocol(self), path, backlog=128)
        os.chmod(path, 0o600)
        return self._listening(server, path)

    def _listening(self, server: asyncio.Server, sockname: Any) -> asyncio.Server:
        """Record where it listens (a unix socket: localhost) and start the sweeper once."""
        if isinstance(sockname, tuple):
            self.server_name, self.server_port = str(sockname[0]), int(sockname[1])
        else:
            self.server_name, self.server_port = "localhost", 0
        self.listening = True
        if self._sweeper is None:
            self._sweeper = asyncio.ensure_future(self._sweep())
        return server

    def close(self) -> None:
        """Stop the sweeper and the WSGI pool (the listener is closed by its owner)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def _sweep(self) -> None:
        """Time out slow or idle connections (cheaper than a timer per request)."""
        while True:
            await asyncio.sleep(0.1)
            now = time.monotonic()
            for proto in list(self.protocols):
                if proto.deadline and now >= proto.deadline:
                    proto._timeout()

    # --- built-in routes ------------------------------------------------------------------
    def builtin(self, req: Request) -> Response | None:
        if req.path == "/health" and req.method in ("GET", "HEAD"):
            if self.ready():
                return Response(200, b'{"status":"ok"}', "application/json",
                                [("Cache-Control", "no-store")])
            return Response(503, b'{"status":"starting"}', "application/json",
                            [("Cache-Control", "no-store"), ("Retry-After", "1")])
        if req.path == "/metrics" and req.method in ("GET", "HEAD"):
            return self._metrics(req)
        return None

    def _metrics(self, req: Request) -> Response:
        token = self.metrics_token
        if token is not None:
            given = req.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode("latin-1"), f"Bearer {token}".encode()):
                return Response(401, b"metrics need the bearer token\n",
                                headers=[("WWW-Authenticate", 'Bearer realm="metrics"')])
        elif not self.metrics_public:
            return Response(404, b"not found\n")
        return Response(200, self.metrics_text().encode(),
                        "text/plain; version=0.0.4; charset=utf-8")

    # --- capacity: connections and buffered bodies ---------------------------------------------
    def admit_connection(self) -> bool:
        """Room for one more connection: under the cap, or by closing the longest-idle one."""
        if self.connections < self.max_connections:
            return True
        while self.idle:
            oldest = next(iter(self.idle))          # insertion order: idle the longest
            del self.idle[oldest]
            if oldest.idle():
                oldest.evict()
                self.shedding.on_evict()
                return True
        self.shedding.on_shed()
        return False

    def reserve_body(self, size: int) -> None:
        if self.buffered_bodies + size > self.limits.max_buffered_bodies:
            raise HttpError(503, "too many request bodies in flight; retry later")
        self.buffered_bodies += size

    def metrics_text(self) -> str:
        out = ["# HELP http_responses_total HTTP responses by status code.",
               "# TYPE http_responses_total counter"]
        out += [f'http_responses_total{{code="{code}"}} {count}'
                for code, count in sorted(self.status_counts.items())]
        out += ["# HELP http_open_connections Open client connections.",
                "# TYPE http_open_connections gauge", f"http_open_connections {self.connections}",
                "# HELP http_max_connections Connection cap (from RLIMIT_NOFILE).",
                "# TYPE http_max_connections gauge", f"http_max_connections {self.max_connections}",
                "# HELP http_buffered_body_bytes Request body bytes reserved, all connections.",
                "# TYPE http_buffered_body_bytes gauge",
                f"http_buffered_body_bytes {self.buffered_bodies}"]
        text = "\n".join(out) + "\n"
        for provider in self.metrics_providers:
            text += provider()
        return text

    def dispatch(self, req: Request) -> Response | Awaitable[Response]:
        found = self.builtin(req)
        if found is not None:
            return found
        for handler in self.handlers:
            result = handler(req)
            if result is not None:
                return result
        if self.wsgi_app is not None:
            inline = self.inline
            if inline is not None and inline(req.method, req.path):
                return run_wsgi(self.wsgi_app, req, self)
            loop = asyncio.get_running_loop()
            return loop.run_in_executor(self.executor, run_wsgi, self.wsgi_app, req, self)
        return Response(404, b"not found\n")


class HttpProtocol(asyncio.Protocol):
    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.limits = server.limits
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.head: _Head | None = None
        self.chunked: ChunkedBody | None = None
        self.reserved = 0                 # this connection's share of server.buffered_bodies
        self.blank_lines = 0
        self.busy = False                 # a request is being answered
        self.closing = False
        self.counted = False              # in server.connections
        self.processing = False           # inside _process: answers loop, never recurse
        self.paused_reading = False
        self.paused_writing = False
        self.deadline = 0.0
        self.remote = ""
        self.task: asyncio.Future[None] | None = None

    # --- connection events ----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if not self.server.admit_connection():
            self.closing = True           # at the cap and nothing idle: 503, close at once
            transport.write(status_line(503) + b"Content-Length: 0\r\nRetry-After: 1\r\n"
                            + _CLOSE_END)
            transport.close()
            return
        peer = transport.get_extra_info("peername")
        self.remote = str(peer[0]) if isinstance(peer, tuple) else ""
        self.counted = True
        self.server.connections += 1
        self.server.protocols.add(self)
        self.server.idle[self] = None
        self._arm(self.limits.idle_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._forget()
        self.closing = True

    def _forget(self) -> None:
        self._release()
        if self.counted:
            self.counted = False
            self.server.connections -= 1
            self.server.protocols.discard(self)
            self.server.idle.pop(self, None)
            self.server.shedding.check_end(self.server.connections)

    def idle(self) -> bool:
        """A keep-alive connection waiting for its next request, nothing of it received."""
        return not (self.busy or self.buf or self.head is not None or self.closing)

    def evict(self) -> None:
        """Closed to make room at the connection cap (the server counts it out now)."""
        self._forget()
        self._close()

    def pause_writing(self) -> None:
        self.paused_writing = True

    def resume_writing(self) -> None:
        self.paused_writing = False
        self._process()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self.server.idle.pop(self, None)
        if not self.buf and not self.busy and self.head is None and not self.paused_writing:
            # The common case: exactly one whole request whose head was seen before.
            end = data.find(b"\r\n\r\n")
            if end >= 0:
                head = self.server.head_cache.get(data[:end])
                if head is not None and not head.chunked and \
                        len(data) == end + 4 + head.length:
                    try:
                        self._admit(head)
                    except HttpError as exc:
                        self._fail(exc.status, str(exc))
                        return
                    self._start(head, data[end + 4:] if head.length else b"")
                    return
        self.buf += data
        if not self.busy and self.head is None and len(self.buf) == len(data):
            self._arm(self.limits.head_timeout)      # first bytes of a new request
        self._process()
        limit = self.limits.max_header + (self.head.length if self.head else 0)
        if len(self.buf) > limit and not self.paused_reading and self.transport is not None:
            self.transport.pause_reading()           # a backlog of pipelined requests
            self.paused_reading = True

    # --- request assembly ---------------------------------------------------------------------
    def _process(self) -> None:
        """Answer every whole request buffered, in order. Iterative: an answer given while in
        here (a pipeline of synchronous answers) returns to this loop instead of recursing."""
        if self.processing:
            return
        self.processing = True
        try:
            while not self.busy and not self.closing and not self.paused_writing:
                if not self._next():
                    break
        except HttpError as exc:
            self._fail(exc.status, str(exc))
            return
        finally:
            self.processing = False
        if self.paused_reading and not self.busy and len(self.buf) <= self.limits.max_header \
                and self.transport is not None and not self.closing:
            self.transport.resume_reading()
            self.paused_reading = False

    def _next(self) -> bool:
        """Start the next request if it is whole; False when more bytes are needed."""
        buf = self.buf
        if self.head is None:
            head = self._head(buf)
            if head is None:
                return False
            self.head = head
            if head.chunked:
                self.chunked = ChunkedBody(self.limits.body_limit(head.path),
                                           self.limits.max_header)
                self._arm(self.limits.body_timeout)
            elif len(buf) < head.length:
                self._reserve(head.length)           # its body is still on the way
                self._arm(self.limits.body_timeout)
        head = self.head
        if self.chunked is not None:
            done = self.chunked.feed(buf)
            self._reserve(len(self.chunked.body))
            if not done:
                return False
            body = bytes(self.chunked.body)
            self.chunked = None
        else:
            if len(buf) < head.length:
                return False
            body = bytes(buf[:head.length]) if head.length else b""
            del buf[:head.length]
        self.head = None
        self._start(head, body)      # the body stays reserved until it is answered
        return True

    def _head(self, buf: bytearray) -> _Head | None:
        """Parse and admit the next request head, consumed from ``buf``; None if incomplete."""
        limits = self.limits
        while buf[:2] == b"\r\n":                    # blank lines before a request line
            del buf[:2]
            self.blank_lines += 1
            if self.blank_lines > MAX_BLANK_LINES:
                raise HttpError(400, "too many blank lines before the request line")
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > limits.max_header:
                raise HttpError(431, "request header too large")
            return None
        if end + 4 > limits.max_header:
            raise HttpError(431, "request header too large")
        head = self._parse(bytes(buf[:end]))
        self._admit(head)
        del buf[:end + 4]
        self.blank_lines = 0
        return head

    def _reserve(self, total: int) -> None:
        """Hold ``total`` bytes of the global body budget for this connection's pending body."""
        if total > self.reserved:
            self.server.reserve_body(total - self.reserved)
            self.reserved = total

    def _release(self) -> None:
        self.server.buffered_bodies -= self.reserved
        self.reserved = 0

    def _parse(self, raw: bytes) -> _Head:
        cache = self.server.head_cache
        head = cache.get(raw)
        if head is None:
            head = parse_head(raw, self.limits, self.server.fields_cache)
            if len(raw) <= HEAD_CACHE_MAX:
                if len(cache) >= HEAD_CACHE_ENTRIES:
                    cache.clear()
                cache[raw] = head
        return head

    def _admit(self, head: _Head) -> None:
        if head.length or head.chunked:
            if head.length > self.limits.body_limit(head.path):
                raise HttpError(413, "request body too large")
            if head.headers.get("expect", "").lower() == "100-continue" \
                    and self.transport is not None:
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _start(self, head: _Head, body: bytes) -> None:
        try:
            # Counted until answered: a body waiting for a WSGI thread is memory all the same.
            self._reserve(len(body))
        except HttpError as exc:
            if len(body) > SMALL_BODY:
                self._fail(exc.status, str(exc))
                return
            # a small request, already whole, still passes when slow senders hold the budget
            self.server.buffered_bodies += len(body) - self.reserved
            self.reserved = len(body)
        self.busy = True
        self.deadline = 0.0
        req = Request(head.method, head.path, head.query, head.headers, body, self.remote)
        try:
            result = self.server.dispatch(req)
        except Exception:
            log.exception("handler failed for %s %s", head.method, head.path)
            result = Response(500, b"internal error\n")
        if isinstance(result, Response):
            self._respond(head, result)
        else:
            self.task = asyncio.ensure_future(self._await(head, result))

    async def _await(self, head: _Head, pending: Awaitable[Response]) -> None:
        try:
            response = await pending
        except Exception:
            log.exception("handler failed for %s %s", head.method, head.target)
            response = Response(500, b"internal error\n")
        self._respond(head, response)

    # --- responses ----------------------------------------------------------------------------
    def _respond(self, head: _Head, response: Response) -> None:
        self._release()
        if self.closing or self.transport is None:
            return
        # The request was framed correctly, so even an error answer keeps the connection.
        keep = head.keep_alive
        self._write(response, keep, head_only=head.method == "HEAD",
                    http10=head.version == "HTTP/1.0")
        self.busy = False
        if keep:
            if self.buf:
                self._arm(self.limits.head_timeout)
                self._process()
            else:
                self._arm(self.limits.idle_timeout)
                self.server.idle[self] = None
                if self.paused_reading:
                    self._process()
        else:
            self._close()

    def _write(self, response: Response, keep: bool, *, head_only: bool = False,
               http10: bool = False) -> None:
        assert self.transport is not None
        server = self.server
        status = response.status
        counts = server.status_counts
        counts[status] = counts.get(status, 0) + 1
        if type(response) is Prebuilt:
            fields = response.fields
        else:
            fields = encode_fields(status, response.content_type, len(response.body),
                                   response.headers)
        end = (_KEEP_ALIVE_END if http10 else b"\r\n") if keep else _CLOSE_END
        data = status_line(status) + server.date.header() + fields + end
        if not head_only and status != 304 and response.body:
            data += response.body
        self.transport.write(data)

    def _fail(self, status: int, message: str) -> None:
        """Answer a protocol error and close: the rest of the stream cannot be trusted."""
        self.head = None
        self.chunked = None
        self._release()
        self.buf.clear()
        if self.transport is not None and not self.closing:
            self._write(Response(status, (message + "\n").encode()), keep=False)
        self._close()

    def _close(self) -> None:
        self.closing = True
        self._disarm()
        if self.transport is not None:
            self.transport.close()

    # --- timeouts: a deadline per connection, checked by the server's sweeper --------------------
    def _arm(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def _disarm(self) -> None:
        self.deadline = 0.0

    def _timeout(self) -> None:
        self.deadline = 0.0
        if self.busy:
            return
        if self.buf or self.head is not None:
            self._fail(408, "request timeout")
        else:
            self._close()


# --- running ------------------------------------------------------------------------------------
BackgroundTask = Callable[[], Awaitable[None] | None]


class AdminServer(HttpServer):
    """``/metrics`` and ``/health`` of ``main`` on a private address (``--metrics-port``)."""

    def __init__(self, main: HttpServer, token: str | None = None) -> None:
        super().__init__([], limits=Limits(max_connections=64, wsgi_threads=1),
                         metrics_token=token)
        self.main = main

    def ready(self) -> bool:
        return self.main.ready()

    def metrics_text(self) -> str:
        return self.main.metrics_text()


async def run(server: HttpServer, host: str, port: int, *,
              background_tasks: Sequence[BackgroundTask] = (),
              ready_event: threading.Event | None = None,
              stop: asyncio.Event | None = None, reuse_port: bool = False,
              admin: tuple[AdminServer, str, int] | None = None) -> None:
    """Listen, run background tasks, set ``ready_event`` once /health would say ok, until stop.
    ``admin``: a second, private listener (server, host, port) for the metrics."""
    stop = stop or asyncio.Event()
    listener = await server.start(host, port, reuse_port=reuse_port)
    admin_listener = None
    if admin is not None:
        admin_listener = await admin[0].start(admin[1], admin[2])
    loop = asyncio.get_running_loop()
    tasks: list[asyncio.Future[Any]] = []
    for task in background_tasks:
        if inspect.iscoroutinefunction(task):
            tasks.append(asyncio.ensure_future(task()))
        else:
            tasks.append(loop.run_in_executor(None, task))
    try:
        while not server.ready() and not stop.is_set():
            await asyncio.sleep(0.05)
        if ready_event is not None:
            ready_event.set()
        await stop.wait()
    finally:
        for closing in (listener, admin_listener):
            if closing is not None:
                closing.close()
                await closing.wait_closed()
        if admin is not None:
            admin[0].close()
        for pending in tasks:
            pending.cancel()
        server.close()


def serve(host: str, port: int, handlers: Sequence[AnyHandler],
          wsgi_app: WsgiApp | None = None, *,
          background_tasks: Sequence[BackgroundTask] = (),
          ready_event: threading.Event | None = None,
          readiness: Sequence[Callable[[], bool]] = (),
          metrics: Sequence[Callable[[], str]] = (),
          limits: Limits | None = None, reuse_port: bool = False,
          metrics_port: int | None = None, metrics_token: str | None = None) -> None:
    """Run the server in this thread until SIGINT/SIGTERM (what ``cps-admin serve`` calls).

    ``/metrics`` is never public: with ``metrics_port`` it is served on 127.0.0.1:PORT only
    (and asks for ``metrics_token`` if given); with only a token, on the public port behind
    ``Authorization: Bearer``; with neither, nowhere (404)."""
    raise_descriptor_limit()
    server = HttpServer(handlers, wsgi_app, limits=limits, readiness=readiness, metrics=metrics,
                        metrics_public=False,
                        metrics_token=metrics_token if metrics_port is None else None)
    admin = None
    if metrics_port is not None:
        admin = (AdminServer(server, metrics_token), "127.0.0.1", metrics_port)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
        await run(server, host, port, background_tasks=background_tasks,
                  ready_event=ready_event, stop=stop, reuse_port=reuse_port, admin=admin)

    asyncio.run(main())
