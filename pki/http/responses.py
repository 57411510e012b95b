"""Response encoding for pki.http.server: status lines, header fields, the Date line, and
``Prebuilt`` answers whose fields a handler encodes once."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus

from pki.http import Response


@dataclass
class Prebuilt(Response):
    """A response whose header lines are already encoded (a handler's cache of hot answers).

    ``fields`` holds every header line after Date and before Connection, CRLF-terminated (build
    it with ``encode_fields``); the server adds the status line, Date and Connection. The same
    object may be returned for many requests: the server never mutates it.
    """

    fields: bytes = b""


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
