"""The broker's HTTP client (cps_login.httpfetch) against tiny scripted servers."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from cps_login.httpfetch import FetchError, HttpFetcher

Script = Callable[[socket.socket, int], None]


@pytest.fixture
def server() -> Iterator[Callable[[Script], tuple[str, list[int]]]]:
    """Start a server running ``script(conn, n)`` for its n-th connection; returns the URL and
    the list of connections accepted so far."""
    listeners: list[socket.socket] = []

    def start(script: Script) -> tuple[str, list[int]]:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listeners.append(listener)
        accepted: list[int] = []

        def loop() -> None:
            while True:
                try:
                    conn, _ = listener.accept()
                except OSError:
                    return
                accepted.append(len(accepted) + 1)
                threading.Thread(target=script, args=(conn, len(accepted)), daemon=True).start()

        threading.Thread(target=loop, daemon=True).start()
        return f"http://127.0.0.1:{listener.getsockname()[1]}/ocsp", accepted

    yield start
    for listener in listeners:
        listener.close()


def read_request(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length")), 0)
    while len(body) < length:
        body += conn.recv(65536)
    return body


def keep_alive(conn: socket.socket, _n: int) -> None:
    with conn:
        while True:
            try:
                body = read_request(conn)
            except OSError:
                return
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))


def test_keep_alive_one_connection_for_many_requests(server: Callable[..., tuple[str, list[int]]]
                                                     ) -> None:
    url, accepted = server(keep_alive)
    fetcher = HttpFetcher()
    for i in range(5):
        assert fetcher.post(url, b"x" * i, "application/ocsp-request", 2) == b"x" * i
    assert accepted == [1]


def test_server_closed_kept_alive_connection_is_retried(server: Callable[..., tuple[str,
                                                                                   list[int]]]
                                                        ) -> None:
    def once(conn: socket.socket, _n: int) -> None:   # answers, then closes without saying so
        with conn:
            body = read_request(conn)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    url, accepted = server(once)
    fetcher = HttpFetcher()
    assert fetcher.post(url, b"a", "t", 2) == b"a"
    time.sleep(0.1)
    assert fetcher.post(url, b"b", "t", 2) == b"b"
    assert accepted == [1, 2]


def test_chunked_answer(server: Callable[..., tuple[str, list[int]]]) -> None:
    def chunked(conn: socket.socket, _n: int) -> None:
        with conn:
            read_request(conn)
            conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                         b"3\r\nabc\r\n4;x=y\r\ndefg\r\n0\r\nTrailer: 1\r\n\r\n")
            time.sleep(0.5)

    url, _ = server(chunked)
    assert HttpFetcher().get(url, 2) == b"abcdefg"


def test_error_status_and_timeout_and_scheme(server: Callable[..., tuple[str, list[int]]]
                                             ) -> None:
    def unavailable(conn: socket.socket, _n: int) -> None:
        with conn:
            read_request(conn)
            conn.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")

    def silent(conn: socket.socket, _n: int) -> None:
        time.sleep(3)
        conn.close()

    url, _ = server(unavailable)
    with pytest.raises(FetchError, match="HTTP 503"):
        HttpFetcher().post(url, b"q", "t", 2)
    url, _ = server(silent)
    started = time.monotonic()
    with pytest.raises(FetchError, match="Timeout"):
        HttpFetcher().post(url, b"q", "t", 0.3)
    assert time.monotonic() - started < 2
    with pytest.raises(FetchError, match="unsupported URL"):
        HttpFetcher().get("https://127.0.0.1/crl", 1)
