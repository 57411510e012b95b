"""RFC 9112 message framing at pki.http.server (issue 13, item 6) and request pipelining
(item 5). The same parser backs the supervisor's front (tests/http/test_front.py)."""

from __future__ import annotations

import threading

from pki.http import Request, Response
from pki.http.server import HttpServer
from tests.servers import Running, run_server

from .conftest import Conn, ask


def test_http11_request_without_host_is_400(running: Running) -> None:
    status, _, _ = ask(running.port, b"GET /echo HTTP/1.1\r\n\r\n")
    assert status == 400
    status, _, _ = ask(running.port, b"GET /echo HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n")
    assert status == 400                        # more than one Host field line
    status, _, _ = ask(running.port, b"GET /echo HTTP/1.1\r\nHost: a b\r\n\r\n")
    assert status == 400                        # not an authority
    assert ask(running.port, b"GET /echo HTTP/1.0\r\n\r\n")[0] == 200     # 1.0 has no Host
    assert ask(running.port, b"GET /echo HTTP/1.1\r\nHost: a:80\r\n\r\n")[0] == 200


def test_leading_blank_lines_are_ignored(running: Running) -> None:
    status, _, body = ask(running.port, b"\r\nGET /echo HTTP/1.1\r\nHost: a\r\n\r\n")
    assert status == 200 and body == b"0\n"
    conn = Conn(running.port)                    # also between keep-alive requests, in pieces
    conn.send(b"GET /echo HTTP/1.1\r\nHost: a\r\n\r\n\r\n")
    assert conn.response()[0] == 200
    conn.send(b"\r\n")
    conn.send(b"GET /echo HTTP/1.1\r\nHost: a\r\n\r\n")
    assert conn.response()[0] == 200
    conn.close()


def _host_seen() -> tuple[list[str], HttpServer]:
    seen: list[str] = []

    def handler(req: Request) -> Response | None:
        seen.append(req.headers.get("host", ""))
        return Response(200, req.path.encode())

    return seen, HttpServer([handler])


def test_absolute_form_target_authority_wins_over_host() -> None:
    seen, server = _host_seen()
    running = run_server(server)
    try:
        status, _, body = ask(running.port, b"GET http://ocsp.example:8080/ocsp/x?y HTTP/1.1\r\n"
                                            b"Host: other.example\r\n\r\n")
        assert status == 200 and body == b"/ocsp/x" and seen == ["ocsp.example:8080"]
        assert ask(running.port, b"GET HTTP://Up.example HTTP/1.1\r\nHost: o\r\n\r\n")[2] == b"/"
        assert seen[-1] == "Up.example"
        assert ask(running.port, b"GET http:///x HTTP/1.1\r\nHost: o\r\n\r\n")[0] == 400
    finally:
        running.close()


def test_chunked_request_body_is_parsed(running: Running) -> None:
    conn = Conn(running.port)
    conn.send(b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
              b"5;ext=1\r\nhello\r\n")
    conn.send(b"A\r\n0123456789\r\n0\r\nX-Trailer: t\r\n\r\n")
    status, _, body = conn.response()
    assert status == 200 and body == b"15\n"
    conn.send(b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
              b"GET /echo HTTP/1.1\r\nHost: a\r\n\r\n")               # pipelined after it
    assert conn.response()[2] == b"0\n"
    assert conn.response()[2] == b"0\n"
    conn.close()


def test_chunked_bodies_keep_the_body_limits(running: Running) -> None:
    big = b"100000\r\n" + b"a" * 0x100000 + b"\r\n0\r\n\r\n"       # 1 MiB + over the limit
    head = b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert ask(running.port, head + b"1\r\na\r\n" + big)[0] == 413
    for bad in (b"zz\r\n", b"-1\r\n", b"1\r\nab\r\n", b"1" * 40 + b"\r\n", b"1\r\na\n"):
        assert ask(running.port, head + bad + b"\r\n\r\n")[0] == 400, bad
    for smuggle in (b"Content-Length: 3\r\n", b"Transfer-Encoding: chunked\r\n"):
        raw = head.replace(b"\r\n\r\n", b"\r\n" + smuggle + b"\r\n")
        assert ask(running.port, raw + b"0\r\n\r\n")[0] == 400, smuggle
    assert ask(running.port, head.replace(b"chunked", b"gzip, chunked"))[0] == 501
    assert ask(running.port, head.replace(b"1.1", b"1.0"))[0] == 400


def _drain(conn: Conn, count: int, out: list[tuple[int, bytes]]) -> None:
    for _ in range(count):
        status, _, body = conn.response()
        out.append((status, body))


def test_two_thousand_pipelined_requests_are_answered_in_order(running: Running) -> None:
    conn = Conn(running.port, timeout=30)
    answers: list[tuple[int, bytes]] = []
    reader = threading.Thread(target=_drain, args=(conn, 2000, answers))
    reader.start()
    conn.send(b"".join(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n%s"
                       % (i % 7, b"x" * (i % 7)) for i in range(2000)))
    reader.join(60)
    assert answers == [(200, b"%d\n" % (i % 7)) for i in range(2000)]
    conn.close()


def test_fields_parsed_once_per_client_whatever_the_request_line() -> None:
    """A client repeats its fields while its request lines change: the fields are parsed once
    (by their bytes and HTTP version); each head still gets its own line, and what depends on
    the line (an absolute-form authority replacing Host) never reaches the cached fields."""
    import pytest

    from pki.http.wire import HttpError, Limits, parse_head

    limits, cache = Limits(), {}  # type: ignore[var-annotated]
    fields = b"\r\nHost: broker.example\r\nContent-Length: 3"
    a = parse_head(b"POST /a HTTP/1.1" + fields, limits, cache)
    b = parse_head(b"POST /b?x=1 HTTP/1.1" + fields, limits, cache)
    assert len(cache) == 1 and (a.path, b.path, b.query) == ("/a", "/b", "x=1")
    assert a.length == b.length == 3 and a.keep_alive and b.keep_alive
    absolute = parse_head(b"POST http://other.example/c HTTP/1.1" + fields, limits, cache)
    assert absolute.headers["host"] == "other.example" and absolute.path == "/c"
    assert b.headers["host"] == "broker.example" and len(cache) == 1
    old = parse_head(b"POST /d HTTP/1.0" + fields, limits, cache)   # its own entry
    assert not old.keep_alive and len(cache) == 2
    for _ in range(2):                 # refused every time, from the cache or not
        with pytest.raises(HttpError):
            parse_head(b"GET / HTTP/1.1\r\nHost: bad host", limits, cache)
        with pytest.raises(HttpError):
            parse_head(b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2", limits,
                       cache)
