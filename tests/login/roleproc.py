"""Run a login role (``python -m cps_login.roles ...``: gunicorn) as a child process of a test."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class RoleProcess:
    proc: subprocess.Popen[str]
    port: int
    first_line: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def descendants(self) -> list[int]:
        """Pids of the gunicorn arbiter's workers (and of an mTLS arbiter and its workers)."""
        out, todo = [], [self.proc.pid]
        while todo:
            pid = todo.pop()
            try:
                children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            except OSError:
                continue
            out += [int(c) for c in children]
            todo += [int(c) for c in children]
        return out

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def start_role(role: str, home: Path, port: int, *args: str,
               ready_timeout: float = 90) -> RoleProcess:
    """Start the role and return once ``GET /health`` answers 200 (or raise with its output)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "cps_login.roles", role, "--home", str(home), "--port", str(port),
         "--workers", "1", *args],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
    assert proc.stdout is not None
    first = proc.stdout.readline().strip()
    deadline = time.monotonic() + ready_timeout
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"{role} exited {proc.returncode}: {first}\n"
                                 f"{proc.stderr.read() if proc.stderr else ''}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as resp:
                if resp.status == 200:
                    return RoleProcess(proc, port, first)
        except OSError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"{role} not ready after {ready_timeout} s")
        time.sleep(0.1)
