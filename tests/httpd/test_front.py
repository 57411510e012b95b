"""The supervisor's front keeps the same HTTP rules as the roles (issue 13, items 3, 6, 11):
RFC 9112 framing, chunked bodies forwarded with a Content-Length, /metrics never routed, and a
connection cap that closes idle connections to make room."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from pki.roles.front import Front, FrontLimits
from tests.servers import Running

from .conftest import Conn, ask


class FrontThread:
    def __init__(self, backends: dict[str, int], limits: FrontLimits | None = None) -> None:
        self.front = Front(backends, lambda: [], limits)
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        box: list[int] = []

        async def go() -> None:
            server = await self.front.start("127.0.0.1", 0)
            box.append(int(server.sockets[0].getsockname()[1]))
            ready.set()
            await asyncio.Event().wait()

        self.thread = threading.Thread(target=lambda: self.loop.run_until_complete(go()),
                                       daemon=True)
        self.thread.start()
        assert ready.wait(10)
        self.port = box[0]


@pytest.fixture
def front(running: Running) -> Iterator[FrontThread]:
    yield FrontThread({"broker": running.port, "status": running.port})


def test_front_framing_follows_rfc9112(front: FrontThread) -> None:
    port = front.port
    assert ask(port, b"GET /echo HTTP/1.1\r\n\r\n")[0] == 400                    # no Host
    assert ask(port, b"\r\nGET /echo HTTP/1.1\r\nHost: a\r\n\r\n")[2] == b"0\n"   # blank line
    assert ask(port, b"\r\n\r\nGET /echo HTTP/1.1\r\nHost: a\r\n\r\n")[2] == b"0\n"
    assert ask(port, b"GET http://up.example/host HTTP/1.1\r\nHost: o\r\n\r\n")[2] == \
        b"up.example"
    conn = Conn(port)
    conn.send(b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
              b"5\r\nhello\r\nA;x=y\r\n0123456789\r\n0\r\nT: 1\r\n\r\n")
    assert conn.response()[:3:2] == (200, b"15\n")
    conn.send(b"GET /echo HTTP/1.1\r\nHost: a\r\n\r\n")                     # still in step
    assert conn.response()[2] == b"0\n"
    conn.close()
    head = b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert ask(port, head + b"zz\r\n")[0] == 400
    assert ask(port, head + b"200000\r\n")[0] == 413


def test_front_never_routes_metrics(front: FrontThread) -> None:
    for path in (b"/metrics", b"/metrics/x"):
        status, _, _ = ask(front.port, b"GET " + path + b" HTTP/1.1\r\nHost: a\r\n\r\n")
        assert status == 404


def test_front_closes_idle_connections_at_its_cap(running: Running) -> None:
    front = FrontThread({"broker": running.port}, FrontLimits(max_connections=20))
    idle = [socket.create_connection(("127.0.0.1", front.port)) for _ in range(60)]
    try:
        time.sleep(0.5)
        assert front.front.connections <= 21
        status, _, body = ask(front.port, b"GET /echo HTTP/1.1\r\nHost: a\r\n\r\n")
        assert status == 200 and body == b"0\n"
    finally:
        for sock in idle:
            sock.close()
