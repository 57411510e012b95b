"""A signer and a status replica as two real processes on one home (SoftHSM, SQLite or
PostgreSQL), for tests/roles: started with ``.venv/bin/python -c "from pki.roles... import"``,
stopped with SIGTERM (or killed), output captured in files under the test's tmp dir.
Also ``cps-admin serve`` as a user runs it (:func:`serve`), and the /proc walks that look at
its role processes (tests/roles, tests/serve)."""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from pki.roles import signer_socket
from tests.servers import free_port, stop_process

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

SIGNER = ("import sys; from pathlib import Path; from pki.roles.signer import run_signer; "
          "run_signer(Path(sys.argv[1]), sys.argv[2] or None, redis_url=None)")
STATUS = ("import sys; from pathlib import Path; from pki.roles.status import run_status; "
          "run_status(Path(sys.argv[1]), sys.argv[2] or None, host='127.0.0.1', "
          "port=int(sys.argv[3]), redis_url=None)")


@dataclass
class Role:
    proc: subprocess.Popen[bytes]
    out: Path
    err: Path

    def first_line(self, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.out.read_text() if self.out.exists() else ""
            if "\n" in text:
                return text.splitlines()[0]
            time.sleep(0.05)
        raise AssertionError(f"no first line; stderr: {self.log()}")

    def log(self) -> str:
        return self.err.read_text() if self.err.exists() else ""

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError("role did not stop on SIGTERM") from None

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)


@dataclass
class Roles:
    home: Path
    tmp: Path
    db_url: str = ""
    started: list[Role] = field(default_factory=list)

    def start(self, name: str, code: str, *args: str) -> Role:
        out, err = self.tmp / f"{name}.out", self.tmp / f"{name}.err"
        with out.open("wb") as o, err.open("wb") as e:
            proc = subprocess.Popen([sys.executable, "-c", code, str(self.home), self.db_url,
                                     *args], stdout=o, stderr=e, cwd=ROOT)
        role = Role(proc, out, err)
        self.started.append(role)
        return role

    def signer(self) -> Role:
        return self.start("signer", SIGNER)

    def status(self, port: int) -> Role:
        return self.start(f"status-{port}", STATUS, str(port))

    def signer_and_status(self) -> tuple[Role, Role, int]:
        """A signer, then a status replica on a free port, each answering /health."""
        signer = self.signer()
        sock = signer_socket(self.home)
        wait_for(lambda: sock.exists() and unix_get(sock, "/health") == 200, "signer healthy",
                 role=signer)
        port = free_port()
        status = self.status(port)
        wait_for(lambda: http_get(f"http://127.0.0.1:{port}/health")[0] == 200,
                 "status healthy", role=status)
        return signer, status, port

    def close(self) -> None:
        for role in self.started:
            if role.proc.poll() is None:
                role.kill()


class UnixHttp(http.client.HTTPConnection):
    def __init__(self, path: Path) -> None:
        super().__init__("localhost", timeout=5)
        self.path = str(path)

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(5)
        self.sock.connect(self.path)


def unix_get(path: Path, target: str) -> int:
    conn = UnixHttp(path)
    try:
        conn.request("GET", target)
        return conn.getresponse().status
    finally:
        conn.close()


def wait_for(check: object, what: str, timeout: float = 120, role: Role | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, http.client.HTTPException):
            if check():  # type: ignore[operator]
                return
        if role is not None and role.proc.poll() is not None:
            raise AssertionError(f"{what}: the process exited; stderr: {role.log()}")
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {timeout} s" +
                         (f"; stderr: {role.log()}" if role else ""))


def http_get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return int(reply.status), reply.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


def ocsp_request(cert: x509.Certificate, issuer: x509.Certificate, *, nonce: bytes | None = None,
                 algorithm: hashes.HashAlgorithm | None = None) -> bytes:
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, algorithm or hashes.SHA1())
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(serialization.Encoding.DER)


def ask(port: int, der: bytes) -> ocsp.OCSPResponse:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/ocsp", data=der,
                                 headers={"Content-Type": "application/ocsp-request"})
    with urllib.request.urlopen(req, timeout=10) as reply:
        return ocsp.load_der_ocsp_response(reply.read())


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (gunicorn workers), from /proc."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    parents[int(entry)] = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (FileNotFoundError, ProcessLookupError, IndexError):
                continue
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += [child for child, parent in parents.items() if parent == current]
    return found


def alive(pid: int) -> bool:
    """``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def serve_pids(log: Path) -> dict[str, int]:
    """The latest pid of each role (and the supervisor's), from ``serve``'s start-up lines."""
    out = {}
    for line in log.read_text(errors="replace").splitlines():
        parts = line.split()
        if len(parts) > 2 and parts[1] == "pid" and not line.startswith("["):
            out[parts[0]] = int(parts[2].rstrip(":"))
    return out


def wait_health(base: str, proc: subprocess.Popen[bytes], log: Path,
                timeout: float = 120) -> None:
    """Until ``base``/health answers 200; fails with ``serve``'s output if it exits first."""
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, log.read_text()
        with contextlib.suppress(OSError), \
                urllib.request.urlopen(base + "/health", timeout=2) as reply:
            if reply.status == 200:
                return
        assert time.monotonic() < deadline, "server never became ready\n" + log.read_text()
        time.sleep(0.2)


@contextlib.contextmanager
def serve(home: Path, log: Path) -> Iterator[dict[str, int]]:
    """``cps-admin serve`` on a free port, every role started; role -> pid. SIGTERM after."""
    port = free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen([str(BIN / "cps-admin"), "--home", str(home), "serve",
                                 "--port", str(port)], stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_health(f"http://127.0.0.1:{port}", proc, log)
        yield serve_pids(log)
    finally:
        stop_process(proc)
