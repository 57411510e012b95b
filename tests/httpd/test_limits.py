"""Resource limits of pki.http.server in a real process (issue 13, items 3 and 4): descriptors
and buffered body bytes are bounded globally, load is shed cleanly and logged once."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable

from .conftest import Child, Conn

NOFILE = 256


def _idle_sockets(port: int, count: int) -> list[socket.socket]:
    out = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        out.append(sock)
    return out


def test_idle_sockets_beyond_the_descriptor_limit_do_not_stop_answers(
        child: Callable[..., Child]) -> None:
    server = child("--nofile", str(NOFILE))
    idle = _idle_sockets(server.port, NOFILE + 150)     # more than the process may hold
    try:
        time.sleep(1.5)                                  # let the accept loop meet the limit
        assert server.open_fds() < NOFILE                # the cap keeps a reserve free
        started = time.monotonic()
        conn = Conn(server.port, timeout=10)
        conn.send(b"GET /echo HTTP/1.1\r\nHost: a\r\n\r\n")
        status, _, body = conn.response()                # an idle one made room for it
        assert status == 200 and body == b"0\n"
        assert time.monotonic() - started < 3
        conn.close()
        more = _idle_sockets(server.port, 200)           # a second wave while at the cap
        idle += more
        time.sleep(1.0)
        again = Conn(server.port)
        again.send(b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n")
        assert again.response()[0] == 200
        again.close()
    finally:
        for sock in idle:
            sock.close()
    time.sleep(0.5)
    conn = Conn(server.port)
    conn.send(b"GET /echo HTTP/1.1\r\nHost: a\r\n\r\n")
    assert conn.response()[0] == 200
    conn.close()
    lines = server.log.read_text().splitlines()
    assert len(lines) <= 10, "\n".join(lines[:40])       # one line per episode, no tracebacks
    assert not any("Traceback" in line for line in lines)


def test_out_of_descriptors_anyway_is_logged_once_without_tracebacks(
        child: Callable[..., Child]) -> None:
    """A cap set above the limit (or descriptors taken by another part of the process): the
    accept loop meets EMFILE; its reports fold into one line, and service resumes."""
    server = child("--nofile", str(NOFILE), "--max-connections", "5000")
    idle = []
    for _ in range(NOFILE + 50):
        try:                              # once accept() fails the backlog fills: stop there
            idle.append(socket.create_connection(("127.0.0.1", server.port), timeout=1))
        except TimeoutError:
            break
    assert len(idle) > NOFILE - 20, len(idle)
    try:
        time.sleep(2.5)                                  # two of asyncio's 1 s accept retries
    finally:
        for sock in idle:
            sock.close()
    deadline = time.monotonic() + 10
    while True:
        try:
            conn = Conn(server.port, timeout=3)
            conn.send(b"GET /echo HTTP/1.1\r\nHost: a\r\n\r\n")
            assert conn.response()[0] == 200
            conn.close()
            break
        except OSError:
            assert time.monotonic() < deadline, "no answer after the idle sockets closed"
    lines = server.log.read_text().splitlines()
    assert any("out of descriptors" in line for line in lines), lines[:5]
    assert len(lines) <= 10 and not any("Traceback" in line for line in lines), lines[:40]


def test_many_slow_body_senders_keep_rss_bounded(child: Callable[..., Child]) -> None:
    server = child()
    time.sleep(0.5)
    before = server.rss_kib()
    socks: list[socket.socket] = []
    refused = 0
    part = b"x" * (900 * 1024)
    try:
        for _ in range(300):                            # each declares 1 MiB, sends 900 KiB
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            socks.append(sock)
            try:
                sock.sendall(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 1048576\r\n"
                             b"\r\n" + part)
            except OSError:
                refused += 1                            # answered 503 and closed
        time.sleep(1.0)
        grown = (server.rss_kib() - before) // 1024
        assert grown < 100, f"RSS grew {grown} MiB"
        assert refused or _all_refused(socks)
        conn = Conn(server.port)                         # small requests still pass
        conn.send(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc")
        assert conn.response()[:3:2] == (200, b"3\n")
        conn.close()
    finally:
        for sock in socks:
            sock.close()


def _all_refused(socks: list[socket.socket]) -> bool:
    """At least the senders beyond the budget were answered 503."""
    answered = 0
    for sock in socks:
        with contextlib.suppress(OSError):
            sock.settimeout(0.05)
            if sock.recv(64).startswith(b"HTTP/1.1 503"):
                answered += 1
    return answered > 0
