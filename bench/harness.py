"""Shared pieces of the role benches (ocsp.py, status_servers.py, ready.py): child processes
started through ``cps-admin serve --role X``, their memory, health, and wrk runs."""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CPS_ADMIN = str(Path(sys.executable).parent / "cps-admin")
WRK_DIR = Path(__file__).resolve().parent / "wrk"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_in_thread(server: Any, port: int, timeout: float = 10) -> None:
    """Run the project's asyncio ``HttpServer`` on 127.0.0.1:``port`` in a daemon thread;
    return once it listens."""
    import asyncio
    import threading

    started = threading.Event()

    def main() -> None:
        loop = asyncio.new_event_loop()

        async def go() -> None:
            await server.start("127.0.0.1", port)
            started.set()
            await asyncio.Event().wait()

        loop.run_until_complete(go())

    threading.Thread(target=main, daemon=True).start()
    if not started.wait(timeout):
        raise SystemExit(f"error: the server on port {port} did not start")


def proc_kib(pid: int, field: str = "VmRSS") -> int:
    """A /proc/PID/status figure in KiB (VmRSS now, VmHWM the peak); 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants (a role may fork workers)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo.extend(children.get(current, []))
    return out


def tree_kib(pid: int, field: str = "VmRSS") -> int:
    return sum(proc_kib(p, field) for p in tree(pid))


def env() -> dict[str, str]:
    out = dict(os.environ)
    out.pop("SOFTHSM2_CONF", None)      # each home names its own
    out["PYTHONPATH"] = str(ROOT) + os.pathsep + out.get("PYTHONPATH", "")
    return out


def admin(home: Path, *args: str, db: str | None = None, timeout: float = 3600
          ) -> subprocess.CompletedProcess[str]:
    cmd = [CPS_ADMIN, "--home", str(home), *(["--db", db] if db else []), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env(),
                          check=False)
    if proc.returncode != 0:
        raise SystemExit(f"error: {' '.join(cmd[1:])} exited {proc.returncode}: "
                         f"{(proc.stderr or proc.stdout).strip()[-500:]}")
    return proc


def start_role(home: Path, role: str, log: Path, *, port: int | None = None,
               db: str | None = None, extra: tuple[str, ...] = ()) -> subprocess.Popen[Any]:
    """``cps-admin serve --role ROLE`` in its own session (stopped with its whole group)."""
    cmd = [CPS_ADMIN, "--home", str(home), *(["--db", db] if db else []), "serve", "--role",
           role, *(["--port", str(port)] if port is not None else []), *extra]
    return subprocess.Popen(cmd, stdout=log.open("ab"), stderr=subprocess.STDOUT, env=env(),
                            start_new_session=True)


def stop(proc: subprocess.Popen[Any], timeout: float = 15) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as resp:
            return bool(resp.status == 200)
    except (OSError, urllib.error.URLError):
        return False


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path) -> None:
        super().__init__("localhost", timeout=5)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(5)
        sock.connect(str(self.path))
        self.sock = sock


def unix_healthy(path: Path) -> bool:
    """GET /health on the signer's unix socket answers 200."""
    try:
        conn = _UnixConnection(path)
        conn.request("GET", "/health")
        ok = conn.getresponse().status == 200
        conn.close()
        return ok
    except (OSError, http.client.HTTPException):
        return False


def wait_until(check: Any, proc: subprocess.Popen[Any], log: Path, what: str,
               timeout: float) -> float:
    """Seconds until ``check()`` is true; exits with the log's tail if the process dies."""
    started = time.monotonic()
    while not check():
        if proc.poll() is not None:
            raise SystemExit(f"error: {what} exited {proc.returncode}:\n"
                             f"{log.read_text(errors='replace')[-3000:]}")
        if time.monotonic() - started > timeout:
            raise SystemExit(f"error: {what} not ready after {timeout:.0f} s:\n"
                             f"{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.05)
    return time.monotonic() - started


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(value: str, unit: str) -> float:
    return float(value) * _UNITS[unit]


def wrk(url: str, *, script: Path | None = None, script_args: tuple[str, ...] = (),
        threads: int = 2, connections: int = 8, duration: int = 10) -> dict[str, float]:
    """One wrk run: requests/s, p50/p99 in ms, non-2xx answers, socket errors."""
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency"]
    if script is not None:
        cmd += ["-s", str(script)]
    cmd.append(url)
    if script_args:
        cmd += ["--", *script_args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60,
                         check=False)
    text = out.stdout
    rate = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if rate is None:
        raise SystemExit(f"error: wrk failed: {out.stderr.strip()[-500:] or text[-500:]}")
    pct = {int(p): _ms(v, u) for p, v, u in
           re.findall(r"^\s+(\d+)%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)}
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                       text)
    total = re.search(r"(\d+) requests in", text)
    return {"rate": float(rate.group(1)), "p50": pct.get(50, 0.0), "p99": pct.get(99, 0.0),
            "non2xx": float(non2xx.group(1)) if non2xx else 0.0,
            "errors": float(sum(int(g) for g in errors.groups())) if errors else 0.0,
            "requests": float(total.group(1)) if total else 0.0}


def populate_store(auth: Any, count: int, revoked_fraction: float, *, keep: bool = True
                   ) -> list[tuple[str, bool]]:
    """``count`` certificate rows of the PERSONNES CA straight into the store (no DER, no
    issuance): what the OCSP side reads. 1 in ``1/revoked_fraction`` is revoked. Returns the
    (serial, revoked) pairs when ``keep``."""
    import datetime as dt
    import secrets

    from sqlalchemy import insert

    from pki.store.models import Certificate
    ca = auth.issuing_ca("PERSONNES")
    now = dt.datetime.now(dt.UTC)
    revoked_count = int(count * revoked_fraction)
    out: list[tuple[str, bool]] = []
    for start in range(0, count, 10_000):
        rows = []
        for i in range(start, min(count, start + 10_000)):
            serial = f"{secrets.randbits(127) | (1 << 120):X}"
            serial = "0" + serial if len(serial) % 2 else serial
            revoked = i < revoked_count
            if keep:
                out.append((serial, revoked))
            rows.append({"serial": serial, "ca_id": ca.id, "profile": "auth",
                         "subject": f"CN=bench {i}", "not_before": now,
                         "not_after": now + dt.timedelta(days=1095),
                         "status": "revoked" if revoked else "active",
                         "reason": "keyCompromise" if revoked else None,
                         "revoked_at": now if revoked else None, "shard": 0, "der": b"",
                         "created_at": now, "status_changed_at": now if revoked else None})
        with auth.store.session() as session:
            session.execute(insert(Certificate), rows)
    return out


def median(runs: list[dict[str, float]]) -> dict[str, float]:
    """The run with the median rate (its own latencies; failures summed over every run)."""
    chosen = dict(sorted(runs, key=lambda r: r["rate"])[len(runs) // 2])
    for key in ("non2xx", "errors", "failed"):
        if key in chosen:
            chosen[key] = sum(r.get(key, 0.0) for r in runs)
    return chosen
