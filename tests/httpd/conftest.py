"""Servers for the HTTP tests: in-process (protocol behaviour) or a child process (its
descriptors, RSS and log are measured), and a raw client."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pki.http.server import HttpServer
from tests.httpd.app import echo
from tests.servers import Running, run_server

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def running() -> Iterator[Running]:
    server = run_server(HttpServer([echo]))
    yield server
    server.close()


@dataclass
class Child:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))


def start_child(tmp: Path, *args: str) -> Child:
    port_file = tmp / "port"
    log = tmp / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "tests.httpd.app", str(port_file), *args],
                                stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    deadline = time.monotonic() + 30
    while not port_file.exists():
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    return Child(proc, int(port_file.read_text()), log)


@pytest.fixture
def child(tmp_path: Path) -> Iterator[object]:
    started: list[Child] = []

    def start(*args: str) -> Child:
        started.append(start_child(tmp_path, *args))
        return started[-1]

    yield start
    for c in started:
        c.proc.terminate()
        try:
            c.proc.wait(10)
        except subprocess.TimeoutExpired:
            c.proc.kill()
            c.proc.wait()


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


def ask(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    conn = Conn(port)
    try:
        conn.send(raw)
        return conn.response()
    finally:
        conn.close()
