"""The supervisor's front: one address routed by path to the role children (docs/roles.md).

``cps-admin serve`` without a role listens here and forwards each request to the loopback port
of the role that owns its path, so every URL of the single-process server keeps working. It is
the single-machine default; production puts HAProxy in front of replicas (docs/deployment.md),
and benches target a role's own port.

Plain asyncio streams, one upstream connection per request (``Connection: close`` to the
role). Toward the client: HTTP/1.1 keep-alive and pipelining in order, request heads parsed and
bounded by ``pki.http.server.parse_head`` (same limits as the roles), bodies bounded per path,
timeouts on every read, a connection cap. A role that is down or restarting answers 503 at
once (its port refuses), one that answers garbage 502, one that hangs 504 — never a hang here.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field

from pki.http.capacity import (
    Shedding,
    accept_batch,
    connection_cap,
    guard_accept_errors,
    raise_descriptor_limit,
    widen_backlog,
)
from pki.http.server import status_line
from pki.http.wire import MAX_BLANK_LINES, HttpError, Limits, _Head, chunk_size, parse_head

log = logging.getLogger("cps.front")

# (path prefix, role). A prefix ending in "/" matches below it; any other matches itself and
# below "prefix/". Unlisted paths (the broker's sign-in pages, static files) go to the broker.
ROUTES: tuple[tuple[str, str], ...] = (
    ("/ocsp", "status"), ("/crl/", "status"), ("/ca/", "status"),
    ("/login", "broker"), ("/.well-known/", "broker"), ("/introspect", "broker"),
    ("/api/", "broker"), ("/openapi.json", "broker"),
    ("/patient", "patient"), ("/espace", "patient"),
    ("/tsa", "tsa"),
)
DEFAULT_ROLE = "broker"
# Never routed: /metrics is for operators, on each status replica's --metrics-port (127.0.0.1).
PRIVATE = ("/metrics",)

# Request fields the front owns: hop-by-hop ones, and the forwarding fields only it may set.
_DROP_REQUEST = {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
                 b"upgrade", b"transfer-encoding", b"expect", b"x-forwarded-for",
                 b"x-forwarded-proto", b"x-forwarded-host", b"forwarded"}
_DROP_RESPONSE = {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
                  b"upgrade", b"transfer-encoding"}
_COPY = 64 * 1024
TSA_MAX_QUERY = 4 * 1024


@dataclass(frozen=True)
class FrontLimits:
    # Head size, header count, body size per path (a time-stamp query is small: the tsa role's
    # own bound, cps_sign.tsa.MAX_QUERY, so the front never buffers more for it).
    request: Limits = field(default_factory=lambda: Limits(
        body_limits=(*Limits().body_limits, ("/tsa", TSA_MAX_QUERY))))
    idle_timeout: float = 30.0          # keep-alive connection waiting for a request head
    connect_timeout: float = 2.0
    backend_timeout: float = 60.0       # a role's answer head, and each read of its body
    max_response_head: int = 64 * 1024
    # Client connections at once; None: from RLIMIT_NOFILE, two descriptors each (the
    # client's and the role's).
    max_connections: int | None = None


def route(path: str) -> str:
    """The role that serves ``path``."""
    for prefix, role in ROUTES:
        if prefix.endswith("/"):
            if path.startswith(prefix):
                return role
        elif path == prefix or path.startswith(prefix + "/"):
            return role
    return DEFAULT_ROLE


class BackendError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Front:
    """Routes requests to ``backends`` (role -> loopback port); answers ``/health`` itself.

    Forwarding fields: the roles trust the front (the supervisor tells them), so what it sets
    is what they believe. ``X-Forwarded-For`` is the front's peer; ``X-Forwarded-Proto`` the
    front's own scheme (http). Only from a peer in ``trusted_proxies`` (login.json's, a proxy
    before the front) are that peer's ``X-Forwarded-For`` (the peer appended) and
    ``X-Forwarded-Proto`` passed on; anyone else's are dropped, being the client's own words."""

    def __init__(self, backends: Mapping[str, int], waiting: Callable[[], Sequence[str]],
                 limits: FrontLimits | None = None, trusted_proxies: Sequence[str] = ()) -> None:
        self.backends = backends
        self.trusted = tuple(ipaddress.ip_network(n, strict=False) for n in trusted_proxies)
        self.waiting = waiting              # roles not ready yet: /health is ok when empty
        self.limits = limits or FrontLimits()
        self.connections = 0
        self.max_connections = connection_cap(self.limits.max_connections, per_connection=2)
        self.shedding = Shedding(log, "front", self.max_connections)
        # Connections waiting for their next request, oldest first: closed to make room.
        self.idle: dict[asyncio.StreamWriter, None] = {}

    async def start(self, host: str, port: int) -> asyncio.Server:
        raise_descriptor_limit()
        self.max_connections = connection_cap(self.limits.max_connections, per_connection=2)
        self.shedding.cap = self.max_connections
        guard_accept_errors(asyncio.get_running_loop(), self.shedding)
        server = await asyncio.start_server(self._client, host, port, backlog=accept_batch(),
                                            limit=self.limits.request.max_header + 4,
                                            reuse_address=True)
        widen_backlog(server)
        return server

    def _admit(self) -> bool:
        """Room for one more client: under the cap, or by closing the longest-idle one."""
        if self.connections < self.max_connections:
            return True
        if not self.idle:
            self.shedding.on_shed()
            return False
        oldest = next(iter(self.idle))
        del self.idle[oldest]
        oldest.close()                 # its pending read ends; its task counts it out
        self.shedding.on_evict()
        return True

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self._admit():
            writer.write(_simple(503, "too many connections", keep=False, retry=True))
            await _close(writer)
            return
        self.connections += 1
        peer = writer.get_extra_info("peername")
        remote = str(peer[0]) if isinstance(peer, tuple) else ""
        try:
            while await self._exchange(reader, writer, remote):
                pass
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass                   # includes TimeoutError: a client or role gone mid-answer
        finally:
            self.idle.pop(writer, None)
            self.connections -= 1
            self.shedding.check_end(self.connections)
            await _close(writer)

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        remote: str) -> bool:
        """One request and its answer; True when the connection stays open for another."""
        limits = self.limits.request
        self.idle[writer] = None
        try:
            raw = await self._read_head(reader)
        except (asyncio.IncompleteReadError, TimeoutError):
            return False            # the client closed or idled out between requests
        except asyncio.LimitOverrunError:
            return await _refuse(writer, 431, "request header too large")
        except HttpError as exc:
            return await _refuse(writer, exc.status, str(exc))
        finally:
            self.idle.pop(writer, None)
        try:
            head = parse_head(raw[:-4], limits)
            if head.length > limits.body_limit(head.path):
                raise HttpError(413, "request body too large")
            if (head.length or head.chunked) and \
                    head.headers.get("expect", "").lower() == "100-continue":
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            body = await asyncio.wait_for(_read_body(reader, head, limits), limits.body_timeout)
        except HttpError as exc:
            return await _refuse(writer, exc.status, str(exc))
        except TimeoutError:
            return await _refuse(writer, 408, "request timeout")
        keep = head.keep_alive
        if head.path == "/health" and head.method in ("GET", "HEAD"):
            writer.write(self._health(keep, head.method == "HEAD"))
            await writer.drain()
            return keep
        if any(head.path == p or head.path.startswith(p + "/") for p in PRIVATE):
            writer.write(_simple(404, "not found", keep, head_only=head.method == "HEAD"))
            await writer.drain()
            return keep
        role = route(head.path)
        listed = head.headers.get("connection", "").encode("latin-1").lower()
        chain, proto = remote, "http"
        if self._trusted(remote):
            chain, proto = _forwarded(head.headers, remote)
        upstream = _upstream_head(raw, head.method, head.target, chain, listed,
                                  host=head.headers.get("host"),
                                  length=len(body) if head.chunked else None,
                                  proto=proto) + body
        try:
            return await self._forward(role, upstream, writer, head.method,
                                       head.version == "HTTP/1.0", keep)
        except BackendError as exc:
            log.warning("%s %s -> %s: %s", head.method, head.path, role, exc)
            answer = json.dumps({"error": "role_unavailable", "role": role,
                                 "detail": str(exc)}).encode()
            writer.write(_simple(exc.status, answer, keep, "application/json",
                                 retry=exc.status == 503, head_only=head.method == "HEAD"))
            await writer.drain()
            return keep

    def _trusted(self, remote: str) -> bool:
        if not self.trusted:
            return False
        try:
            addr = ipaddress.ip_address(remote)
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr in net for net in self.trusted)

    async def _read_head(self, reader: asyncio.StreamReader) -> bytes:
        """The next request head, blank lines before it skipped (RFC 9112 §2.2)."""
        for _ in range(MAX_BLANK_LINES + 1):
            raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"),
                                         self.limits.idle_timeout)
            while raw.startswith(b"\r\n") and len(raw) > 4:
                raw = raw[2:]
            if raw != b"\r\n\r\n":
                return raw
        raise HttpError(400, "too many blank lines before the request line")

    def _health(self, keep: bool, head_only: bool) -> bytes:
        waiting = list(self.waiting())
        if waiting:
            body = json.dumps({"status": "starting", "waiting": waiting}).encode()
            return _simple(503, body, keep, "application/json", retry=True, head_only=head_only)
        return _simple(200, b'{"status":"ok"}', keep, "application/json", head_only=head_only)

    async def _forward(self, role: str, upstream: bytes, writer: asyncio.StreamWriter,
                       method: str, http10: bool, keep: bool) -> bool:
        """Send the request to ``role``, relay its answer; BackendError before any byte."""
        limits = self.limits
        port = self.backends.get(role)
        if port is None:
            raise BackendError(404, f"the {role} role is not running in this server")
        try:
            breader, bwriter = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port, limit=limits.max_response_head),
                limits.connect_timeout)
        except (OSError, TimeoutError) as exc:
            raise BackendError(503, f"the {role} role is not answering ({exc or 'timeout'})") \
                from None
        try:
            bwriter.write(upstream)
            status, fields = await self._response_head(breader)
            return await self._relay(breader, writer, status, fields, method, http10, keep)
        finally:
            await _close(bwriter)

    async def _response_head(self, breader: asyncio.StreamReader) -> tuple[int, list[bytes]]:
        timeout = self.limits.backend_timeout
        while True:
            try:
                raw = await asyncio.wait_for(breader.readuntil(b"\r\n\r\n"), timeout)
            except TimeoutError:
                raise BackendError(504, "no answer in time") from None
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
                raise BackendError(502, "closed or overlong answer head") from None
            lines = raw[:-4].split(b"\r\n")
            parts = lines[0].split(b" ", 2)
            if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
                raise BackendError(502, "malformed status line")
            status = int(parts[1])
            if not 100 <= status < 200:          # interim answers are not relayed
                return status, lines[1:]

    async def _relay(self, breader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     status: int, fields: list[bytes], method: str, http10: bool,
                     keep: bool) -> bool:
        length: int | None = None
        chunked = False
        out = [status_line(status).rstrip(b"\r\n")]
        for line in fields:
            name, _, value = line.partition(b":")
            key = name.strip().lower()
            if key == b"content-length":
                if not value.strip().isdigit():
                    raise BackendError(502, "malformed Content-Length")
                length = int(value.strip())
            elif key == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            if key not in _DROP_RESPONSE:
                out.append(line)
        no_body = method == "HEAD" or status in (204, 304)
        if not no_body and length is None:
            if chunked and not http10:
                out.append(b"Transfer-Encoding: chunked")
            else:
                keep = False               # the answer ends when the connection does
        out.append(b"Connection: keep-alive" if keep else b"Connection: close")
        writer.write(b"\r\n".join(out) + b"\r\n\r\n")
        timeout = self.limits.backend_timeout
        if no_body:
            pass
        elif length is not None:
            await _copy_exact(breader, writer, length, timeout)
        elif chunked:
            await _copy_chunked(breader, writer, timeout, rechunk=not http10)
        else:
            while data := await asyncio.wait_for(breader.read(_COPY), timeout):
                writer.write(data)
                await writer.drain()
        await writer.drain()
        return keep


def _forwarded(headers: Mapping[str, str], remote: str) -> tuple[str, str]:
    """(X-Forwarded-For, X-Forwarded-Proto) to pass on for a trusted proxy ``remote``: its
    chain with itself appended, and the scheme it reports (http when none or unreadable)."""
    chain = headers.get("x-forwarded-for", "").strip()
    proto = headers.get("x-forwarded-proto", "").split(",")[-1].strip().lower()
    return (f"{chain}, {remote}" if chain else remote,
            proto if proto in ("http", "https") else "http")


def _upstream_head(raw: bytes, method: str, target: str, remote: str,
                   connection: bytes = b"", *, host: str | None = None,
                   length: int | None = None, proto: str = "http") -> bytes:
    """The request head for a role: the client's fields minus hop-by-hop ones (fixed, and those
    its Connection field names), plus the forwarding fields (``remote``: X-Forwarded-For,
    ``proto``: X-Forwarded-Proto). ``host``: the parsed Host (an absolute-form target's
    authority replaces the field); ``length``: a de-chunked body's."""
    drop = _DROP_REQUEST | {name.strip() for name in connection.split(b",")}
    lines = [f"{method} {target} HTTP/1.1".encode("latin-1")]
    for line in raw[:-4].split(b"\r\n")[1:]:
        name = line.partition(b":")[0].strip().lower()
        if name == b"host" and host is not None:
            lines.append(b"Host: " + host.encode("latin-1"))
            host = None
        elif name not in drop:
            lines.append(line)
    if host is not None:
        lines.append(b"Host: " + host.encode("latin-1"))
    if length is not None:
        lines.append(b"Content-Length: %d" % length)
    lines += [b"X-Forwarded-For: " + remote.encode("ascii", "replace"),
              b"X-Forwarded-Proto: " + proto.encode("ascii"), b"Connection: close"]
    return b"\r\n".join(lines) + b"\r\n\r\n"


async def _read_body(reader: asyncio.StreamReader, head: _Head, limits: Limits) -> bytes:
    """The request body: Content-Length bytes, or a chunked body decoded (RFC 9112 §7.1) within
    the path's limit; the role receives it with a Content-Length."""
    if not head.chunked:
        return await reader.readexactly(head.length)
    limit, body, trailer = limits.body_limit(head.path), bytearray(), 0
    while True:
        size = chunk_size((await reader.readuntil(b"\r\n"))[:-2])
        if size == 0:
            break
        if len(body) + size > limit:
            raise HttpError(413, "request body too large")
        data = await reader.readexactly(size + 2)
        if data[-2:] != b"\r\n":
            raise HttpError(400, "chunk data not followed by CRLF")
        body += data[:-2]
    while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
        trailer += len(line)                  # trailer fields are dropped
        if trailer > limits.max_header:
            raise HttpError(431, "trailer section too large")
    return bytes(body)


async def _copy_exact(src: asyncio.StreamReader, dst: asyncio.StreamWriter, length: int,
                      timeout: float) -> None:
    while length > 0:
        data = await asyncio.wait_for(src.read(min(length, _COPY)), timeout)
        if not data:
            raise ConnectionError("the role closed mid-answer")
        dst.write(data)
        length -= len(data)
        await dst.drain()


async def _copy_chunked(src: asyncio.StreamReader, dst: asyncio.StreamWriter, timeout: float,
                        *, rechunk: bool) -> None:
    """Read a chunked body (RFC 9112 §7.1); re-frame it for 1.1, raw for 1.0 (close ends)."""
    while True:
        size_line = await asyncio.wait_for(src.readuntil(b"\r\n"), timeout)
        size_text = size_line.split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise ConnectionError("malformed chunk size from the role") from None
        if size == 0:
            while (await asyncio.wait_for(src.readuntil(b"\r\n"), timeout)) != b"\r\n":
                pass                        # trailer fields are dropped
            if rechunk:
                dst.write(b"0\r\n\r\n")
            return
        data = await asyncio.wait_for(src.readexactly(size + 2), timeout)
        dst.write(b"%x\r\n" % size + data if rechunk else data[:-2])
        await dst.drain()


def _simple(status: int, body: bytes | str, keep: bool,
            content_type: str = "text/plain; charset=utf-8", *, retry: bool = False,
            head_only: bool = False) -> bytes:
    data = body.encode() if isinstance(body, str) else body
    if content_type.startswith("text/") and not data.endswith(b"\n"):
        data += b"\n"
    lines = [status_line(status).rstrip(b"\r\n"), b"Server: cps-pki front",
             b"Content-Type: " + content_type.encode(), b"Content-Length: %d" % len(data),
             b"Cache-Control: no-store"]
    if retry:
        lines.append(b"Retry-After: 1")
    lines.append(b"Connection: keep-alive" if keep else b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + (b"" if head_only else data)


async def _refuse(writer: asyncio.StreamWriter, status: int, message: str) -> bool:
    """A request that broke the protocol: answer and close (the stream cannot be trusted)."""
    writer.write(_simple(status, message, keep=False))
    with suppress(ConnectionError):
        await writer.drain()
    return False


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with suppress(ConnectionError, OSError):
        await writer.wait_closed()
