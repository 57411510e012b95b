"""The HTTP seam shared by the publishers (OCSP, CRL, CA certificates) and the web apps.

Hot-path handlers are plain callables from a ``Request`` to a ``Response`` (or ``None`` when the
path is not theirs); they run on the asyncio server's event loop, so they must answer from memory
without blocking. Everything else (the login broker, the patient API and pages) is a WSGI app
that the server runs in a thread pool.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Request:
    method: str                  # upper-case
    path: str                    # without the query string, percent-decoding NOT applied
    query: str
    headers: dict[str, str]      # lower-case names
    body: bytes
    remote: str = ""


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)


Handler = Callable[[Request], Response | None]
