"""Running a WSGI app (PEP 3333) for pki.http.server: one request in a worker thread, its whole
answer collected."""

from __future__ import annotations

import io
import sys
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_to_bytes

from pki.http import Request, Response

if TYPE_CHECKING:
    from pki.http.server import HttpServer

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "upgrade",
               "proxy-connection", "te", "trailer"}


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
        # "X_Forwarded_For" would land where "X-Forwarded-For" does: names with "_" are
        # dropped, as gunicorn and nginx drop them, so that no header passes for another.
        if name not in ("content-type", "content-length") and "_" not in name:
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
