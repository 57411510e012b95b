"""The one HTTP server behind ``cps-admin serve``: asyncio, HTTP/1.0 and 1.1.

Hot-path handlers (pki.http ``Handler``s: OCSP, CRLs, CA certificates) run on the event loop and
answer from memory; a handler may also return an awaitable when it must wait (a live OCSP
signature in a worker thread). Everything else goes to one WSGI app (the login broker and
patient API) run in a thread pool. The server owns ``GET /health`` and ``GET /metrics``.

Hostile input never reaches a handler half-parsed and never costs unbounded memory: header and
body sizes are bounded (a body over its path's limit is refused with 413 from its Content-Length,
before any of it is read), a client that sends its head or body too slowly gets 408, pipelined
requests are answered strictly in order and reading pauses while a backlog is pending.
"""

from __future__ import annotations

import asyncio
import inspect
import io
import logging
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote_to_bytes

from pki.http import Request, Response

log = logging.getLogger(__name__)

AnyHandler = Callable[[Request], Response | Awaitable[Response] | None]
WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

_METHOD = re.compile(rb"^[A-Z]{1,16}$")
# Control characters other than HTAB, and CR or LF that are not a CRLF pair.
_CTL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]|\r(?!\n)|(?<!\r)\n")
_FIELD = re.compile(rb"\r\n([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*([^\r\n]*)")
_BAD_TARGET = re.compile(rb"[\x00-\x20\x7f]")
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "upgrade",
               "proxy-connection", "te", "trailer"}


@dataclass(frozen=True)
class Limits:
    max_header: int = 16 * 1024          # request line + headers
    max_headers: int = 100
    max_body: int = 1024 * 1024          # default for WSGI paths
    body_limits: tuple[tuple[str, int], ...] = (("/ocsp", 64 * 1024),)
    head_timeout: float = 10.0           # from the first byte of a request to its blank line
    body_timeout: float = 30.0
    idle_timeout: float = 30.0           # keep-alive connection with nothing pending
    wsgi_threads: int = 8

    def body_limit(self, path: str) -> int:
        for prefix, limit in self.body_limits:
            if path == prefix or path.startswith(prefix + "/"):
                return limit
        return self.max_body


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class _Head:
    method: str
    target: str
    version: str
    headers: dict[str, str]     # shared by identical heads (see HEAD_CACHE): never mutate
    keep_alive: bool
    length: int
    path: str = ""
    query: str = ""


@dataclass
class Prebuilt(Response):
    """A response whose header lines are already encoded (a handler's cache of hot answers).

    ``fields`` holds every header line after Date and before Connection, CRLF-terminated (build
    it with ``encode_fields``); the server adds the status line, Date and Connection. The same
    object may be returned for many requests: the server never mutates it.
    """

    fields: bytes = b""


# Parsed heads of recent requests, by their exact bytes: a keep-alive client repeats the same
# head (same Host, User-Agent, Content-Length), so parsing is one dict lookup. Only heads that
# parsed cleanly are kept; bounded in count and size.
HEAD_CACHE_ENTRIES = 1024
HEAD_CACHE_MAX = 2048


def encode_fields(status: int, content_type: str, body_length: int,
                  headers: Iterable[tuple[str, str]]) -> bytes:
    """Header lines (after Date, before Connection) as the server writes them."""
    lines = ["Server: cps-pki"]
    if status != 304:
        lines.append(f"Content-Type: {content_type}")
    lines.append(f"Content-Length: {body_length if status != 304 else 0}")
    for name, value in headers:
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
            continue                      # header injection from an app: drop the header
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n").encode("latin-1", "replace")


_STATUS_LINES: dict[int, bytes] = {}


def status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Unknown"
        line = f"HTTP/1.1 {status} {phrase}\r\n".encode("latin-1", "replace")
        if len(_STATUS_LINES) < 128:
            _STATUS_LINES[status] = line
    return line


class _Date:
    """The Date header line, formatted once per second."""

    def __init__(self) -> None:
        self.second = -1
        self.value = ""
        self.line = b""

    def get(self) -> str:
        self.header()
        return self.value

    def header(self) -> bytes:
        """``Date: ...\\r\\n`` for the current second."""
        now = int(time.time())
        if now != self.second:
            self.value = formatdate(now, usegmt=True)
            self.line = b"Date: " + self.value.encode("ascii") + b"\r\n"
            self.second = now
        return self.line


_KEEP_ALIVE_END = b"Connection: keep-alive\r\n\r\n"
_CLOSE_END = b"Connection: close\r\n\r\n"


class HttpServer:
    def __init__(self, handlers: Sequence[AnyHandler], wsgi_app: WsgiApp | None = None, *,
                 limits: Limits | None = None,
                 readiness: Sequence[Callable[[], bool]] = (),
                 metrics: Sequence[Callable[[], str]] = ()) -> None:
        self.handlers = list(handlers)
        self.wsgi_app = wsgi_app
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
        self.head_cache: dict[bytes, _Head] = {}
        self._sweeper: asyncio.Task[None] | None = None

    def ready(self) -> bool:
        return self.listening and all(check() for check in self.readiness)

    async def start(self, host: str, port: int, *, reuse_port: bool = False) -> asyncio.Server:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: HttpProtocol(self), host, port,
                                          reuse_address=True, reuse_port=reuse_port or None,
                                          backlog=1024)
        sockname = server.sockets[0].getsockname()
        self.server_name, self.server_port = str(sockname[0]), int(sockname[1])
        self.listening = True
        self._sweeper = asyncio.ensure_future(self._sweep())
        return server

    async def start_unix(self, path: str) -> asyncio.Server:
        """Listen on a unix socket (an internal interface: the signer role's), mode 0600; its
        directory should be 0700 (the socket exists for a moment before the chmod)."""
        loop = asyncio.get_running_loop()
        server = await loop.create_unix_server(lambda: HttpProtocol(self), path, backlog=128)
        os.chmod(path, 0o600)
        self.server_name, self.server_port = "localhost", 0
        self.listening = True
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
            return Response(200, self.metrics_text().encode(),
                            "text/plain; version=0.0.4; charset=utf-8")
        return None

    def metrics_text(self) -> str:
        out = ["# HELP http_responses_total HTTP responses by status code.",
               "# TYPE http_responses_total counter"]
        out += [f'http_responses_total{{code="{code}"}} {count}'
                for code, count in sorted(self.status_counts.items())]
        out += ["# HELP http_open_connections Open client connections.",
                "# TYPE http_open_connections gauge", f"http_open_connections {self.connections}"]
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
        self.busy = False                 # a request is being answered
        self.closing = False
        self.paused_reading = False
        self.paused_writing = False
        self.deadline = 0.0
        self.remote = ""
        self.task: asyncio.Future[None] | None = None

    # --- connection events ----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.remote = str(peer[0]) if isinstance(peer, tuple) else ""
        self.server.connections += 1
        self.server.protocols.add(self)
        self._arm(self.limits.idle_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections -= 1
        self.server.protocols.discard(self)
        self.closing = True

    def pause_writing(self) -> None:
        self.paused_writing = True

    def resume_writing(self) -> None:
        self.paused_writing = False
        self._process()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        if not self.buf and not self.busy and self.head is None and not self.paused_writing:
            # The common case: exactly one whole request whose head was seen before.
            end = data.find(b"\r\n\r\n")
            if end >= 0:
                head = self.server.head_cache.get(data[:end])
                if head is not None and len(data) == end + 4 + head.length:
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
        limits = self.limits
        while not self.busy and not self.closing and not self.paused_writing:
            try:
                buf = self.buf
                if self.head is None:
                    end = buf.find(b"\r\n\r\n")
                    if end < 0:
                        if len(buf) > limits.max_header:
                            raise HttpError(431, "request header too large")
                        break
                    if end + 4 > limits.max_header:
                        raise HttpError(431, "request header too large")
                    head = self._parse(bytes(buf[:end]))
                    self._admit(head)
                    self.head = head
                    length = head.length
                    if len(buf) >= end + 4 + length:         # the whole request is here
                        body = bytes(buf[end + 4:end + 4 + length]) if length else b""
                        del buf[:end + 4 + length]
                        self.head = None
                        self._start(head, body)
                        continue
                    del buf[:end + 4]
                    if length:
                        self._arm(limits.body_timeout)
                head = self.head
                if len(buf) < head.length:
                    break
                body = bytes(buf[:head.length])
                del buf[:head.length]
                self.head = None
                self._start(head, body)
            except HttpError as exc:
                self._fail(exc.status, str(exc))
                return
        if self.paused_reading and not self.busy and len(self.buf) <= limits.max_header \
                and self.transport is not None and not self.closing:
            self.transport.resume_reading()
            self.paused_reading = False

    def _parse(self, raw: bytes) -> _Head:
        cache = self.server.head_cache
        head = cache.get(raw)
        if head is None:
            head = parse_head(raw, self.limits)
            if len(raw) <= HEAD_CACHE_MAX:
                if len(cache) >= HEAD_CACHE_ENTRIES:
                    cache.clear()
                cache[raw] = head
        return head

    def _admit(self, head: _Head) -> None:
        if head.length:
            if head.length > self.limits.body_limit(head.path):
                raise HttpError(413, "request body too large")
            if head.headers.get("expect", "").lower() == "100-continue" \
                    and self.transport is not None:
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _start(self, head: _Head, body: bytes) -> None:
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


def parse_head(raw: bytes, limits: Limits) -> _Head:
    if _CTL.search(raw):
        raise HttpError(400, "control character in request head")
    lines = raw.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        raise HttpError(400, "malformed request line")
    method, target, version = parts
    if not _METHOD.match(method):
        raise HttpError(400, "malformed method")
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise HttpError(400, "unsupported HTTP version")
    if target.startswith((b"http://", b"https://")):
        slash = target.find(b"/", target.find(b"//") + 2)
        target = target[slash:] if slash > 0 else b"/"
    if not target.startswith(b"/") or _BAD_TARGET.search(target):
        raise HttpError(400, "malformed request target")
    if len(lines) - 1 > limits.max_headers:
        raise HttpError(431, "too many header fields")
    # One regex pass over all fields; a line it does not match is malformed (e.g. obs-fold).
    fields = _FIELD.findall(raw, len(lines[0]))
    if len(fields) != len(lines) - 1:
        raise HttpError(400, "malformed header field")
    headers: dict[str, str] = {}
    for name, value in fields:
        key = name.decode("ascii").lower()
        text = value.rstrip(b" \t").decode("latin-1")
        if key in headers:
            if key in ("content-length", "host", "transfer-encoding"):
                if headers[key] != text:
                    raise HttpError(400, f"conflicting {key} fields")
                continue
            headers[key] = headers[key] + ", " + text
        else:
            headers[key] = text
    if "transfer-encoding" in headers:
        raise HttpError(411, "chunked bodies are not accepted; send Content-Length")
    length = 0
    if "content-length" in headers:
        declared = headers["content-length"]
        if not declared.isdigit() or not declared.isascii() or len(declared) > 12:
            raise HttpError(400, "malformed Content-Length")
        length = int(declared)
    ver = version.decode()
    connection = headers.get("connection", "").lower()
    keep_alive = "close" not in connection if ver == "HTTP/1.1" else "keep-alive" in connection
    text_target = target.decode("latin-1")
    path, _, query = text_target.partition("?")
    return _Head(method.decode(), text_target, ver, headers, keep_alive, length, path, query)


def run_wsgi(app: WsgiApp, req: Request, server: HttpServer) -> Response:
    """Call a WSGI app (PEP 3333) in a worker thread and collect its whole answer."""
    environ: dict[str, Any] = {
        "REQUEST_METHOD": req.method, "SCRIPT_NAME": "",
        "PATH_INFO": unquote_to_bytes(req.path).decode("latin-1"),
        "QUERY_STRING": req.query, "SERVER_NAME": server.server_name,
        "SERVER_PORT": str(server.server_port), "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": req.remote, "CONTENT_TYPE": req.headers.get("content-type", ""),
        "CONTENT_LENGTH": str(len(req.body)) if req.body else "",
        "wsgi.version": (1, 0), "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(req.body),
        "wsgi.errors": sys.stderr, "wsgi.multithread": True, "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    for name, value in req.headers.items():
        if name not in ("content-type", "content-length"):
            environ["HTTP_" + name.upper().replace("-", "_")] = value
    captured: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]],
                       exc_info: Any = None) -> Callable[[bytes], None]:
        captured["status"], captured["headers"] = status, headers
        return lambda _data: None

    result = app(environ, start_response)
    try:
        body = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    status = int(str(captured.get("status", "500")).split(" ", 1)[0])
    ctype = "application/octet-stream"
    headers = []
    for name, value in captured.get("headers", []):
        if name.lower() == "content-type":
            ctype = value
        elif name.lower() not in _HOP_BY_HOP:
            headers.append((name, value))
    return Response(status, body, ctype, headers)


# --- running ------------------------------------------------------------------------------------
BackgroundTask = Callable[[], Awaitable[None] | None]


async def run(server: HttpServer, host: str, port: int, *,
              background_tasks: Sequence[BackgroundTask] = (),
              ready_event: threading.Event | None = None,
              stop: asyncio.Event | None = None, reuse_port: bool = False) -> None:
    """Listen, run background tasks, set ``ready_event`` once /health would say ok, until stop."""
    stop = stop or asyncio.Event()
    listener = await server.start(host, port, reuse_port=reuse_port)
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
        listener.close()
        await listener.wait_closed()
        for pending in tasks:
            pending.cancel()
        server.close()


def serve(host: str, port: int, handlers: Sequence[AnyHandler],
          wsgi_app: WsgiApp | None = None, *,
          background_tasks: Sequence[BackgroundTask] = (),
          ready_event: threading.Event | None = None,
          readiness: Sequence[Callable[[], bool]] = (),
          metrics: Sequence[Callable[[], str]] = (),
          limits: Limits | None = None, reuse_port: bool = False) -> None:
    """Run the server in this thread until SIGINT/SIGTERM (what ``cps-admin serve`` calls)."""
    server = HttpServer(handlers, wsgi_app, limits=limits, readiness=readiness, metrics=metrics)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
        await run(server, host, port, background_tasks=background_tasks,
                  ready_event=ready_event, stop=stop, reuse_port=reuse_port)

    asyncio.run(main())
