"""HTTP/1.1 request framing (RFC 9112): the request head and chunked bodies.

Pure parsing, shared by the asyncio server (pki.http.server) and the supervisor's front
(pki.roles.front), and fuzzed on its own (tests/reliability/fuzz_targets.py ``http_request``).
Every refusal is an ``HttpError`` carrying the status to answer; nothing else escapes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_METHOD = re.compile(rb"^[A-Z]{1,16}$")
# Control characters other than HTAB, and CR or LF that are not a CRLF pair.
_CTL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]|\r(?!\n)|(?<!\r)\n")
_FIELD = re.compile(rb"\r\n([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*([^\r\n]*)")
_BAD_TARGET = re.compile(rb"[\x00-\x20\x7f]")
# uri-host [":" port] (RFC 3986 reg-name or IP literal); empty is allowed (RFC 9110 §7.2).
_HOST = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~%!$&'()*+,;=]*)(:[0-9]{0,5})?")
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,8}")       # up to 4 GiB; the body limit is lower
_CHUNK_LINE_MAX = 1024                                # a size line with its extensions
MAX_BLANK_LINES = 8                                   # CRLFs tolerated before a request line


@dataclass(frozen=True)
class Limits:
    max_header: int = 16 * 1024          # request line + headers (and a chunked body's trailer)
    max_headers: int = 100
    max_body: int = 1024 * 1024          # default for WSGI paths
    body_limits: tuple[tuple[str, int], ...] = (("/ocsp", 64 * 1024),)
    head_timeout: float = 10.0           # from the first byte of a request to its blank line
    body_timeout: float = 30.0
    idle_timeout: float = 30.0           # keep-alive connection with nothing pending
    wsgi_threads: int = 8
    # Connections held at once; None: derived from RLIMIT_NOFILE (pki.http.capacity).
    max_connections: int | None = None
    # Request body bytes buffered across all connections (bodies not yet whole); beyond: 503.
    max_buffered_bodies: int = 32 * 1024 * 1024

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
    chunked: bool = False       # Transfer-Encoding: chunked (``length`` is 0)


def _origin_form(target: bytes) -> tuple[bytes, bytes | None]:
    """(origin-form target, authority) of a request target; authority None unless the target
    is in absolute form, whose authority then replaces Host (RFC 9112 §3.2.2)."""
    lower = target[:8].lower()
    if not (lower.startswith(b"http://") or lower.startswith(b"https://")):
        return target, None
    rest = target[target.find(b"//") + 2:]
    cut = len(rest)
    for mark in (b"/", b"?"):
        at = rest.find(mark)
        if 0 <= at < cut:
            cut = at
    authority, path = rest[:cut], rest[cut:]
    if not authority or b"@" in authority:
        raise HttpError(400, "malformed absolute-form target")
    return (path if path.startswith(b"/") else b"/" + path), authority


def _fields(raw: bytes, first: int, limits: Limits, count: int) -> dict[str, str]:
    if count > limits.max_headers:
        raise HttpError(431, "too many header fields")
    # One regex pass over all fields; a line it does not match is malformed (e.g. obs-fold).
    fields = _FIELD.findall(raw, first)
    if len(fields) != count:
        raise HttpError(400, "malformed header field")
    headers: dict[str, str] = {}
    for name, value in fields:
        key = name.decode("ascii").lower()
        text = value.rstrip(b" \t").decode("latin-1")
        if key in headers:
            if key == "host":
                raise HttpError(400, "more than one Host field")
            if key == "content-length":
                if headers[key] != text:
                    raise HttpError(400, "conflicting content-length fields")
                continue
            headers[key] = headers[key] + ", " + text
        else:
            headers[key] = text
    return headers


def _framing(headers: dict[str, str], version: bytes) -> tuple[int, bool]:
    """(Content-Length, chunked) of a request; smuggling-prone combinations are refused."""
    coding = headers.get("transfer-encoding")
    if coding is not None:
        if version != b"HTTP/1.1":
            raise HttpError(400, "Transfer-Encoding in an HTTP/1.0 request")
        if "content-length" in headers:
            raise HttpError(400, "both Transfer-Encoding and Content-Length")
        codings = [c.strip().lower() for c in coding.split(",")]
        if codings[-1] != "chunked" or codings.count("chunked") != 1:
            raise HttpError(400, "chunked must be the final transfer coding, once")
        if len(codings) > 1:
            raise HttpError(501, "only the chunked transfer coding is supported")
        return 0, True
    declared = headers.get("content-length")
    if declared is None:
        return 0, False
    if not declared.isdigit() or not declared.isascii() or len(declared) > 12:
        raise HttpError(400, "malformed Content-Length")
    return int(declared), False


# What a request head's fields come to (headers, Content-Length, chunked, keep-alive, the Host
# field valid), by HTTP version and the fields' exact bytes: a client repeats its fields from
# request to request while the request line changes (paths, queries). Successful parses only.
Fields = tuple[dict[str, str], int, bool, bool, bool]
FIELDS_CACHE_ENTRIES = 1024
FIELDS_CACHE_MAX = 2048


def parse_head(raw: bytes, limits: Limits,
               fields_cache: dict[tuple[bytes, bytes], Fields] | None = None) -> _Head:
    """The request line and fields (``raw`` without its final blank line and without leading
    blank lines: callers skip those, RFC 9112 §2.2). ``fields_cache``: parsed fields kept by
    their bytes (the caller's, bounded here); the headers dict of a cached entry is shared by
    the heads made from it, as the heads themselves are (nobody changes them)."""
    if _CTL.search(raw):
        raise HttpError(400, "control character in request head")
    first = raw.find(b"\r\n")
    if first < 0:
        first = len(raw)
    parts = raw[:first].split(b" ")
    if len(parts) != 3:
        raise HttpError(400, "malformed request line")
    method, target, version = parts
    if not _METHOD.match(method):
        raise HttpError(400, "malformed method")
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise HttpError(400, "unsupported HTTP version")
    target, authority = _origin_form(target)
    if not target.startswith(b"/") or _BAD_TARGET.search(target):
        raise HttpError(400, "malformed request target")
    key = (version, raw[first:])
    fields = fields_cache.get(key) if fields_cache is not None else None
    if fields is None:
        fields = _parse_fields(raw, first, limits, version)
        if fields_cache is not None and len(key[1]) <= FIELDS_CACHE_MAX:
            if len(fields_cache) >= FIELDS_CACHE_ENTRIES:
                fields_cache.clear()
            fields_cache[key] = fields
    headers, length, chunked, keep_alive, host_ok = fields
    if authority is not None:
        host = authority.decode("latin-1")
        if not _HOST.fullmatch(host):
            raise HttpError(400, "malformed Host field")
        headers = {**headers, "host": host}
    elif not host_ok:
        raise HttpError(400, "malformed Host field")
    text_target = target.decode("latin-1")
    path, _, query = text_target.partition("?")
    return _Head(method.decode(), text_target, version.decode(), headers, keep_alive, length,
                 path, query, chunked)


def _parse_fields(raw: bytes, first: int, limits: Limits, version: bytes) -> Fields:
    headers = _fields(raw, first, limits, raw.count(b"\r\n"))
    host = headers.get("host")
    if host is None and version == b"HTTP/1.1":
        raise HttpError(400, "missing Host field")
    length, chunked = _framing(headers, version)
    connection = headers.get("connection", "").lower()
    keep_alive = "close" not in connection if version == b"HTTP/1.1" \
        else "keep-alive" in connection
    return headers, length, chunked, keep_alive, host is None or bool(_HOST.fullmatch(host))


def chunk_size(line: bytes) -> int:
    """The size of a chunk from its size line (without CRLF); extensions are ignored."""
    size, _, ext = line.partition(b";")
    size = size.rstrip(b" \t")
    if not _CHUNK_SIZE.fullmatch(size) or _CTL.search(ext) or b"\r" in ext or b"\n" in ext:
        raise HttpError(400, "malformed chunk size line")
    return int(size, 16)


class ChunkedBody:
    """Incremental decoder of a chunked request body (RFC 9112 §7.1).

    ``feed`` consumes from the front of the caller's buffer what belongs to the body, so bytes
    of a pipelined next request stay there. The decoded body is bounded by ``limit`` (413), the
    size lines and the trailer section too (400/431); trailer fields are discarded.
    """

    _SIZE, _DATA, _DATA_END, _TRAILER, _DONE = range(5)

    def __init__(self, limit: int, max_trailer: int) -> None:
        self.limit = limit
        self.max_trailer = max_trailer
        self.body = bytearray()
        self.state = self._SIZE
        self.remaining = 0
        self.trailer = 0

    def feed(self, buf: bytearray) -> bool:
        """Consume what it can of ``buf``; True once the whole body (and trailer) is read."""
        while True:
            if self.state == self._DATA:
                take = min(self.remaining, len(buf))
                self.body += buf[:take]
                del buf[:take]
                self.remaining -= take
                if self.remaining:
                    return False
                self.state = self._DATA_END
            elif self.state == self._DATA_END:
                if len(buf) < 2:
                    return False
                if buf[:2] != b"\r\n":
                    raise HttpError(400, "chunk data not followed by CRLF")
                del buf[:2]
                self.state = self._SIZE
            elif self.state == self._DONE:
                return True
            else:
                line = self._line(buf)
                if line is None:
                    return False
                self._take(line)

    def _line(self, buf: bytearray) -> bytes | None:
        bound = _CHUNK_LINE_MAX if self.state == self._SIZE else self.max_trailer - self.trailer
        end = buf.find(b"\r\n", 0, bound + 2)
        if end < 0:
            if len(buf) > bound:
                raise HttpError(400 if self.state == self._SIZE else 431,
                                "chunk size line or trailer too long")
            return None
        line = bytes(buf[:end])
        del buf[:end + 2]
        return line

    def _take(self, line: bytes) -> None:
        if self.state == self._TRAILER:
            self.trailer += len(line) + 2
            if not line:
                self.state = self._DONE
            elif _CTL.search(line) or not _FIELD.fullmatch(b"\r\n" + line):
                raise HttpError(400, "malformed trailer field")
            return
        size = chunk_size(line)
        if size == 0:
            self.state = self._TRAILER
            return
        if len(self.body) + size > self.limit:
            raise HttpError(413, "request body too large")
        self.remaining = size
        self.state = self._DATA
