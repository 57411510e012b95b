"""The broker's HTTP client for OCSP and CRLs: HTTP/1.1 on a kept-alive socket per thread.

Every login asks the status tier over HTTP, so the client's own cost is part of every login:
``http.client`` parses each answer's headers through the email package and sends a request in
two writes; this client sends one write and reads a ``Content-Length`` (or chunked) body, which
is all a status tier answers with. One connection per (thread, host, port): no TCP handshake
per login. Only ``http://`` — OCSP answers and CRLs are signed objects, checked by the caller.

A kept-alive connection that the server closed meanwhile fails before any byte of the answer:
the request is sent once more on a fresh connection. A timeout is never retried: the caller
(``RevocationChecker``) bounds the wait of a login.
"""

from __future__ import annotations

import socket
import threading
import urllib.parse
from contextlib import suppress

MAX_HEAD = 64 * 1024


class FetchError(Exception):
    pass


class _Stale(Exception):
    """The connection ended before any byte of the answer (a closed keep-alive connection)."""


class _Conn:
    __slots__ = ("buf", "sock", "used")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.used = False

    def fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed by the server")
        self.buf += chunk

    def close(self) -> None:
        with suppress(OSError):
            self.sock.close()


class HttpFetcher:
    def __init__(self, max_bytes: int = 64 * 1024 * 1024) -> None:
        self._local = threading.local()
        self._max = max_bytes

    def post(self, url: str, body: bytes, content_type: str, timeout: float) -> bytes:
        return self._request("POST", url, body, content_type, timeout)

    def get(self, url: str, timeout: float) -> bytes:
        return self._request("GET", url, None, None, timeout)

    def _request(self, method: str, url: str, body: bytes | None, content_type: str | None,
                 timeout: float) -> bytes:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise FetchError(f"unsupported URL {url!r}")
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        head = f"{method} {target} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        if body is not None:
            head += f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        message = (head + "\r\n").encode("latin-1") + (body or b"")
        key = (parts.hostname, parts.port or 80)
        for attempt in (1, 2):
            conn = self._conn(key, timeout)
            try:
                conn.sock.settimeout(timeout)
                try:
                    conn.sock.sendall(message)
                except ConnectionError as exc:
                    if conn.used:
                        raise _Stale(str(exc)) from None
                    raise
                status, data, close = self._answer(conn)
            except _Stale as exc:
                self._drop(key)
                if attempt == 1:
                    continue
                raise FetchError(f"{url}: {exc}") from None
            except (OSError, ValueError) as exc:
                self._drop(key)
                raise FetchError(f"{url}: {type(exc).__name__}: {exc}") from None
            conn.used = True
            if close:
                self._drop(key)
            if status != 200:
                raise FetchError(f"{url}: HTTP {status}")
            return data
        raise AssertionError("unreachable")

    def _conn(self, key: tuple[str, int], timeout: float) -> _Conn:
        conns: dict[tuple[str, int], _Conn] | None = getattr(self._local, "conns", None)
        if conns is None:
            conns = self._local.conns = {}
        conn = conns.get(key)
        if conn is None:
            try:
                sock = socket.create_connection(key, timeout=timeout)
            except OSError as exc:
                raise FetchError(f"http://{key[0]}:{key[1]}: {type(exc).__name__}: "
                                 f"{exc}") from None
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = conns[key] = _Conn(sock)
        return conn

    def _drop(self, key: tuple[str, int]) -> None:
        conns: dict[tuple[str, int], _Conn] = getattr(self._local, "conns", {})
        conn = conns.pop(key, None)
        if conn is not None:
            conn.close()

    def _answer(self, conn: _Conn) -> tuple[int, bytes, bool]:
        """(status, body, close after) of one HTTP/1.1 answer."""
        buf = conn.buf
        while (end := buf.find(b"\r\n\r\n")) < 0:
            if len(buf) > MAX_HEAD:
                raise ValueError("answer head too large")
            try:
                conn.fill()
            except (ConnectionError, TimeoutError) as exc:
                if conn.used and not buf and not isinstance(exc, TimeoutError):
                    raise _Stale(str(exc)) from None
                raise
        lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
        del buf[:end + 4]
        version, _, rest = lines[0].partition(" ")
        status = int(rest[:3])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        close = version != "HTTP/1.1" or headers.get("connection", "").lower() == "close"
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return status, self._chunked(conn), close
        if "content-length" in headers:
            return status, self._exactly(conn, int(headers["content-length"])), close
        while True:          # no length: the body runs to the end of the connection
            try:
                conn.fill()
            except ConnectionError:
                return status, self._take(conn, len(conn.buf)), True
            if len(conn.buf) > self._max:
                raise ValueError(f"answer larger than {self._max} bytes")

    def _exactly(self, conn: _Conn, n: int) -> bytes:
        if n > self._max:
            raise ValueError(f"answer larger than {self._max} bytes")
        while len(conn.buf) < n:
            conn.fill()
        return self._take(conn, n)

    def _chunked(self, conn: _Conn) -> bytes:
        out = bytearray()
        while True:
            while (end := conn.buf.find(b"\r\n")) < 0:
                conn.fill()
            size = int(bytes(conn.buf[:end]).split(b";")[0], 16)
            del conn.buf[:end + 2]
            if size == 0:
                while (end := conn.buf.find(b"\r\n")) != 0:   # trailers, then the blank line
                    if end < 0:
                        conn.fill()
                    else:
                        del conn.buf[:end + 2]
                del conn.buf[:2]
                return bytes(out)
            if len(out) + size > self._max:
                raise ValueError(f"answer larger than {self._max} bytes")
            out += self._exactly(conn, size + 2)[:size]

    @staticmethod
    def _take(conn: _Conn, n: int) -> bytes:
        data = bytes(conn.buf[:n])
        del conn.buf[:n]
        return data
