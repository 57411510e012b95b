"""The broker and patient roles run under gunicorn (cps_login/roles.py): descriptor exhaustion
must not kill them (issue 13, item 3). With gunicorn's default ``worker_connections`` (1,000)
above the usual limit, a gthread worker that meets EMFILE in accept() dies, and gunicorn stops
the whole role; with the cap derived from RLIMIT_NOFILE it stops accepting instead."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.servers import free_port

from .conftest import ROOT

NOFILE = 256
APP = """
import resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, ({nofile}, {nofile}))
from cps_login.roles import _options, _serve

def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]

_serve(lambda: app, _options("probe", "127.0.0.1", int(sys.argv[1]), 1))
"""


def test_gunicorn_role_survives_idle_sockets_beyond_the_descriptor_limit(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "gunicorn.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", APP.format(nofile=NOFILE), str(port)],
                                stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    idle: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        for _ in range(NOFILE + 50):
            try:
                idle.append(socket.create_connection(("127.0.0.1", port), timeout=1))
            except OSError:
                break                      # the kernel's queue is full: enough
        time.sleep(2)
        assert proc.poll() is None, log.read_text()[-2000:]
        for sock in idle:
            sock.close()
        with socket.create_connection(("127.0.0.1", port), timeout=20) as conn:
            conn.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            assert conn.recv(100).startswith(b"HTTP/1.1 200")
        assert proc.poll() is None
        assert "Too many open files" not in log.read_text()
    finally:
        for sock in idle:
            sock.close()
        proc.terminate()
        proc.wait(20)
