"""`cps-admin serve` without a role: every role its own child process, one address in front.

The supervisor starts ``python -m pki.cli.admin serve --role X`` for signer, status, broker,
patient and tsa (each on a free loopback port; the signer on its unix socket), polls each child's
``/health``, and serves the front (``pki.roles.front``) on ``--host``/``--port``. A child that
dies is restarted with a backoff; one that keeps failing before it ever became ready stops the
whole server with an error. SIGINT/SIGTERM stop everything: SIGTERM to each child, SIGKILL to
its process group after a timeout, so no child or grandchild (gunicorn workers) is left.
The tsa child is started only once the home has a TSA certificate (``HOME/tsa/tsa-chain.pem``,
from ``cps-admin tsa cert``); without one the front answers ``/tsa`` with 404.

The broker and patient children are told (``TRUSTED_FRONT_ENV``) to trust the front's address
(127.0.0.1) as a proxy, so that each client keeps its own address there (sign-in throttling,
challenge bounds) instead of all sharing the front's; the front passes a client's
``X-Forwarded-*`` on only from login.json's ``trusted_proxies``.

The supervisor itself opens no token, reads no PIN and imports nothing of PKCS#11; children run
in their own sessions (Ctrl-C reaches only the supervisor, which stops them in order) and ask
the kernel for SIGKILL should the supervisor die (``pki.cli.serve.die_with_supervisor``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import sys
import time
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

from pki.cli.serve import SUPERVISOR_ENV, RoleOptions
from pki.config import TSA_CHAIN_FILE, Config
from pki.errors import PkiError
from pki.roles.front import Front

log = logging.getLogger("cps.supervisor")

HEALTH_INTERVAL = 0.5
STOP_TIMEOUT = 15.0          # gunicorn's graceful stop is 10 s
BASE_BACKOFF = 0.5          # first restart delay, doubled per consecutive failure
MAX_BACKOFF = 10.0
STABLE_AFTER = 30.0          # a child up this long has its backoff reset
MAX_START_FAILURES = 5       # consecutive deaths before ever being ready: give up
# Read by cps_login.roles: proxies the broker/patient child trusts besides login.json's.
TRUSTED_FRONT_ENV = "CPS_TRUSTED_FRONT"
FRONT_ADDRESS = "127.0.0.1"  # the front reaches every child from here


class SupervisorFailed(PkiError):
    code = "supervisor_failed"


@dataclass
class Child:
    role: str
    argv: list[str]
    claim: str                       # which key it holds, for the start-up lines
    port: int | None = None          # loopback HTTP port (the signer has its socket)
    socket_path: Path | None = None
    proc: asyncio.subprocess.Process | None = None
    ready: bool = False
    started_at: float = 0.0
    failures: int = 0                # consecutive deaths since it was last ready
    last_error: str = ""             # its latest ``error: ...`` line, for the final message
    was_ready: bool = False          # became ready since it was last started
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def plan(home: Path, db_url: str | None, options: RoleOptions, *, web: bool) -> list[Child]:
    """The children to start, with the claim each start-up line makes about its keys."""
    config = Config.load(home)
    sock = options.signer_socket or home / "run" / "signer.sock"
    base = [sys.executable, "-m", "pki.cli.admin", "--home", str(home),
            *(["--db", db_url] if db_url else []), "serve"]
    common = [*(["--redis", options.redis_url] if options.redis_url else []),
              "--signer-socket", str(sock)]
    roles = ["signer", "status", *(["broker", "patient"] if web else [])]
    if web and (home / TSA_CHAIN_FILE).is_file():
        roles.append("tsa")
    claims = {
        "signer": f"CA token {config.hsm.token_label} — may sign (certificates, CRLs, OCSP); "
                  f"internal socket {sock}",
        "status": "no key (PKCS#11 not loaded)",
        "broker": f"broker token {config.hsm.broker_token_label} — signs access tokens only, "
                  "no CA key",
        "patient": "no key",
        "tsa": f"TSA token {config.hsm.tsa_token_label} — signs time stamps only, no CA key",
    }
    children = []
    for role in roles:
        argv = [*base, "--role", role, *common]
        child = Child(role, argv, claims[role])
        if role == "signer":
            child.socket_path = sock
        else:
            child.port = free_port()        # --host/--port are added at each start
            if role in ("broker", "patient") and options.workers is not None:
                argv += ["--workers", str(options.workers)]
            if role == "broker" and options.mtls_port is not None:
                argv += ["--mtls-port", str(options.mtls_port)]
            if role == "status" and options.metrics_port is not None:   # the front has none
                argv += ["--metrics-port", str(options.metrics_port)]
            if role == "status" and options.metrics_token_file is not None:
                argv += ["--metrics-token-file", str(options.metrics_token_file)]
        children.append(child)
    return children


class Supervisor:
    def __init__(self, children: list[Child], options: RoleOptions,
                 trusted_proxies: tuple[str, ...] = ()) -> None:
        self.children = children
        self.options = options
        self.stopping = False
        self.failed: str | None = None
        self.stop = asyncio.Event()
        self.backends: dict[str, int] = {}          # role -> loopback port, for the front
        for child in children:
            if child.port is not None:
                self.backends[child.role] = child.port
        self.front = Front(self.backends,
                           waiting=lambda: [c.role for c in self.children if not c.ready],
                           trusted_proxies=trusted_proxies)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stop.set)
        listener = await self.front.start(self.options.host, self.options.port)
        port = listener.sockets[0].getsockname()[1]
        say(f"supervisor pid {os.getpid()}: front on http://{self.options.host}:{port} "
            "(no key, no PIN)")
        try:
            for child in self.children:
                await self.spawn(child)
                child.tasks += [asyncio.ensure_future(self.watch(child)),
                                asyncio.ensure_future(self.health(child))]
            announced = asyncio.ensure_future(self.announce_ready(port))
            await self.stop.wait()
            announced.cancel()
        finally:
            self.stopping = True
            listener.close()
            for child in self.children:
                for task in child.tasks:
                    task.cancel()
            await self.stop_children()
        if self.failed:
            raise SupervisorFailed(self.failed)

    async def spawn(self, child: Child) -> None:
        env = {**os.environ, SUPERVISOR_ENV: str(os.getpid()), "PYTHONUNBUFFERED": "1"}
        if child.role in ("status", "broker", "patient"):
            env[TRUSTED_FRONT_ENV] = FRONT_ADDRESS
        address = ["--host", "127.0.0.1", "--port", str(child.port)] if child.port else []
        child.proc = await asyncio.create_subprocess_exec(
            *child.argv, *address, env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            start_new_session=True)
        child.started_at = time.monotonic()
        child.ready = child.was_ready = False
        where = f" — http://127.0.0.1:{child.port}" if child.port else ""
        say(f"{child.role:<7} pid {child.proc.pid}: {child.claim}{where}")
        assert child.proc.stdout is not None
        child.tasks.append(asyncio.ensure_future(relay_output(child, child.proc.stdout)))

    async def watch(self, child: Child) -> None:
        """Restart ``child`` whenever it dies, with a backoff; give up on a child that never
        gets ready."""
        while True:
            assert child.proc is not None
            code = await child.proc.wait()
            child.ready = False
            kill_group(child.proc.pid)          # its workers must not keep the port
            if self.stopping:
                return
            child.failures = 0 if time.monotonic() - child.started_at > STABLE_AFTER \
                else child.failures + 1
            if child.failures >= MAX_START_FAILURES:
                self.failed = (f"the {child.role} role exited {child.failures} times in a row "
                               f"(last status {code}"
                               f"{'; ' + child.last_error if child.last_error else ''})")
                self.stop.set()
                return
            if child.port is not None and not child.was_ready:
                # Maybe another program took its port before it could bind: a fresh one.
                child.port = self.backends[child.role] = free_port()
            delay = min(MAX_BACKOFF, BASE_BACKOFF * 2 ** max(0, child.failures - 1))
            say(f"{child.role} pid {child.proc.pid} exited with status {code}; restarting in "
                f"{delay:.1f} s")
            await asyncio.sleep(delay)
            if self.stopping:
                return
            await self.spawn(child)

    async def health(self, child: Child) -> None:
        while True:
            ok = await probe(child)
            if ok and not child.ready:
                child.failures = 0
                child.was_ready = True
            child.ready = ok and child.proc is not None and child.proc.returncode is None
            await asyncio.sleep(HEALTH_INTERVAL)

    async def announce_ready(self, port: int) -> None:
        while any(not c.ready for c in self.children):
            await asyncio.sleep(0.1)
        say(f"ready: every role answers on http://{self.options.host}:{port}")

    async def stop_children(self) -> None:
        running = [c.proc for c in self.children
                   if c.proc is not None and c.proc.returncode is None]
        for proc in running:
            with _gone():
                proc.send_signal(signal.SIGTERM)
        if running:
            _, pending = await asyncio.wait([asyncio.ensure_future(p.wait()) for p in running],
                                            timeout=STOP_TIMEOUT)
            if pending:
                say(f"{len(pending)} role(s) still running after {STOP_TIMEOUT:.0f} s: killed")
        for child in self.children:
            if child.proc is not None:
                kill_group(child.proc.pid)
                with _gone():
                    await asyncio.wait_for(child.proc.wait(), 5)


async def probe(child: Child) -> bool:
    """True when the child's ``GET /health`` answers 200 within a second."""
    request = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    try:
        if child.socket_path is not None:
            opening = asyncio.open_unix_connection(str(child.socket_path))
        else:
            opening = asyncio.open_connection("127.0.0.1", child.port)
        reader, writer = await asyncio.wait_for(opening, 1.0)
    except (OSError, TimeoutError):
        return False
    try:
        writer.write(request)
        line = await asyncio.wait_for(reader.readline(), 1.0)
        return line.split(b" ")[1:2] == [b"200"]
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        return False
    finally:
        writer.close()


async def relay_output(child: Child, stream: asyncio.StreamReader) -> None:
    """A child's log lines on the supervisor's stderr, each prefixed with its role."""
    prefix = f"[{child.role}] ".encode()
    while True:
        try:
            line = await stream.readline()
        except ValueError:          # a line over the stream's limit: dropped, said so
            line = b"(an overlong log line was dropped)\n"
        if not line:
            return
        if line.startswith(b"error: "):
            child.last_error = line.decode("utf-8", "replace").strip()
        sys.stderr.buffer.write(prefix + line.rstrip(b"\n") + b"\n")
        sys.stderr.buffer.flush()


def kill_group(pgid: int) -> None:
    """SIGKILL whatever is left of a child's process group (its session, started by us)."""
    with _gone():
        os.killpg(pgid, signal.SIGKILL)


def _gone() -> suppress:
    """Ignore a process that already exited (and a wait that timed out at shutdown)."""
    return suppress(ProcessLookupError, PermissionError, TimeoutError)


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def login_trusted_proxies(home: Path) -> tuple[str, ...]:
    """``trusted_proxies`` of HOME/login.json (proxies before the front), read as plain JSON:
    the supervisor imports nothing of cps_login. A bad value is the front's error at start."""
    path = home / "login.json"
    try:
        raw = json.loads(path.read_text("utf-8")) if path.exists() else {}
    except (OSError, ValueError) as exc:
        raise SupervisorFailed(f"{path}: cannot read ({exc})") from None
    values = raw.get("trusted_proxies", ()) if isinstance(raw, dict) else ()
    return tuple(str(v) for v in values)


def run_supervisor(home: Path, db_url: str | None, options: RoleOptions, *, web: bool) -> None:
    """Run every role behind ``options.host``:``options.port`` until SIGINT/SIGTERM."""
    logging.getLogger("cps.front").setLevel(logging.WARNING)
    children = plan(home.resolve(), db_url, options, web=web)
    trusted = login_trusted_proxies(home) if web else ()
    asyncio.run(Supervisor(children, options, trusted).run())
