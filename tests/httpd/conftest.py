"""Servers for the HTTP tests: in-process (protocol behaviour) or a child process (its
descriptors, RSS and log are measured); the raw client is tests.servers.Conn."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pki.http.server import HttpServer
from tests.httpd.app import echo
from tests.servers import Conn, Running, run_server

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


def ask(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    conn = Conn(port)
    try:
        conn.send(raw)
        return conn.response()
    finally:
        conn.close()
