"""HTTP handlers for ``/crl/*.crl`` and ``/ca/*.crt`` (the pki.http Handler seam).

Pure functions of a snapshot of bytes: no store, no HSM, no blocking, so they run on the asyncio
server's event loop. Conditional GET follows RFC 9110 §13: If-None-Match wins over
If-Modified-Since; a match is answered 304 with the validators and no body.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from email.utils import format_datetime, parsedate_to_datetime

from pki.crl.cache import PublicationCache, Resource
from pki.http import Handler, Request, Response

PREFIXES = ("/crl/", "/ca/")
ALLOWED = "GET, HEAD"


def http_date(at: dt.datetime) -> str:
    return format_datetime(at.astimezone(dt.UTC), usegmt=True)


def _etag_matches(header: str, etag: str) -> bool:
    for candidate in header.split(","):
        tag = candidate.strip()
        if tag == "*" or tag.removeprefix("W/") == etag:   # weak comparison (RFC 9110 §13.1.2)
            return True
    return False


def _not_modified_since(header: str, last_modified: dt.datetime) -> bool:
    try:
        since = parsedate_to_datetime(header)
    except (TypeError, ValueError, IndexError):
        return False            # an invalid date is ignored (RFC 9110 §13.1.3)
    if since.tzinfo is None:
        since = since.replace(tzinfo=dt.UTC)
    return last_modified <= since


def _headers(resource: Resource) -> list[tuple[str, str]]:
    headers = [("ETag", resource.etag), ("Last-Modified", http_date(resource.last_modified)),
               ("Cache-Control", resource.cache_control)]
    if resource.expires is not None:
        headers.append(("Expires", http_date(resource.expires)))
    return headers


def respond(snapshot: Mapping[str, Resource], request: Request) -> Response | None:
    """The answer for ``request`` from ``snapshot``; None when the path is not ours."""
    if not request.path.startswith(PREFIXES):
        return None
    resource = snapshot.get(request.path)
    if resource is None:
        return Response(404, b"not found\n")
    if request.method not in ("GET", "HEAD"):
        return Response(405, b"method not allowed\n", headers=[("Allow", ALLOWED)])
    headers = _headers(resource)
    inm = request.headers.get("if-none-match")
    ims = request.headers.get("if-modified-since")
    if (_etag_matches(inm, resource.etag) if inm is not None
            else ims is not None and _not_modified_since(ims, resource.last_modified)):
        return Response(304, b"", resource.content_type, headers)
    # HEAD gets the GET answer: the server (pki.http.server) sends its headers, Content-Length
    # included, and drops the body (RFC 9110 §9.3.2).
    return Response(200, resource.body, resource.content_type, headers)


def crl_handler(cache: PublicationCache) -> Handler:
    """A Handler serving whatever ``cache`` holds at the time of each request."""
    def handle(request: Request) -> Response | None:
        return respond(cache.snapshot, request)
    return handle
