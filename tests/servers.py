"""An in-process ``pki.http`` server for tests: its own event loop in a daemon thread; and a
raw HTTP/1.1 client to talk to it byte by byte."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import threading
from dataclasses import dataclass
from typing import Any

from pki.http.server import HttpServer


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_process(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM,
                 timeout: float = 30) -> None:
    """Send ``sig`` to a process still running, wait ``timeout`` seconds, then kill it."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass
class Running:
    server: HttpServer
    loop: asyncio.AbstractEventLoop
    port: int
    stop: asyncio.Event
    thread: threading.Thread

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(timeout=10)


def run_server(server: HttpServer, port: int = 0) -> Running:
    """Start ``server`` on 127.0.0.1:``port`` (0: a free one) and return once it listens."""
    started = threading.Event()
    box: dict[str, object] = {}

    def main() -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        stop = asyncio.Event()

        async def go() -> None:
            listener = await server.start("127.0.0.1", port)
            box.update(loop=loop, stop=stop, port=server.server_port)
            started.set()
            await stop.wait()
            server.close()
            listener.close()
            await listener.wait_closed()

        loop.run_until_complete(go())
        loop.close()

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    assert started.wait(10), "test server did not start"
    return Running(server, box["loop"], int(box["port"]), box["stop"], thread)  # type: ignore[arg-type]


class Conn:
    """A raw HTTP/1.1 client: send bytes, read whole responses (Content-Length framed)."""

    def __init__(self, port: int, timeout: float = 10) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def response(self) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed before a response")
            self.buf += chunk
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(self.buf) < length:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed mid-body")
            self.buf += chunk
        body, self.buf = self.buf[:length], self.buf[length:]
        return status, headers, body

    def closed(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except (ConnectionResetError, TimeoutError):
            return True

    def close(self) -> None:
        self.sock.close()
