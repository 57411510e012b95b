"""A gunicorn worker that serves its WSGI app with the project's asyncio HTTP server.

gunicorn's arbiter keeps doing what it does well — binding the listeners, forking and
restarting workers, the heartbeat timeout, graceful stop on SIGTERM, quick stop on SIGINT and
SIGQUIT — while each worker answers HTTP with ``pki.http.server.HttpServer`` (the server of
the status role) instead of ``gthread``'s: the same bounded parsing (header, body and
connection caps, slow-client timeouts, pipelining in order), the app in a thread pool of
``threads`` threads (or on the event loop, for the requests it says never wait:
``HttpServer``'s ``answers_without_waiting``). A trivial Flask route under load (keep-alive,
6 clients) costs ~170 µs of the worker's CPU a request under ``gthread``, ~107 µs here;
``bench/oidc.py`` prints both servers side by side for the whole code flow.

Each worker is also pinned to one CPU: the allowed CPU the fewest of its live sibling workers
hold (read from /proc), ties round robin by the worker's age, so a worker that replaces a dead
one takes the CPU it left. A Python process's threads take turns at one interpreter lock; on
two cores they hand it back and forth between caches, which costs the broker about a third
more CPU per login than the same threads kept on one core (measured by ``bench/oidc.py``: 236
→ 365 code-flow logins per CPU-second, same run conditions). One worker per CPU, each on its
own, is how nginx (``worker_cpu_affinity auto``) and HAProxy (``cpu-map``) are deployed for the
same reason. ``CPS_WORKER_CPU_AFFINITY=0`` in the environment turns pinning off.

Use: a subclass per app, setting its body limits (``cps_login.roles.BrokerWorker``), named as
gunicorn's ``worker_class``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import time
from pathlib import Path
from typing import Any

from gunicorn.workers.base import Worker  # type: ignore[import-untyped]

from pki.http.server import HttpServer
from pki.http.wire import Limits

AFFINITY_ENV = "CPS_WORKER_CPU_AFFINITY"
HEARTBEAT = 1.0                  # seconds between checks of alive / parent / heartbeat
GC_YOUNG = 10_000


def worker_cpu(age: int, allowed: set[int], taken: dict[int, int] | None = None) -> int | None:
    """The CPU for the worker born ``age``-th (1, 2, ...): one of the allowed CPUs that the
    fewest live sibling workers are pinned to (``taken``: CPU -> count), ties broken round
    robin by age — so a worker that replaces a dead one takes the CPU it left. None when there
    is only one CPU (nothing to choose)."""
    cpus = sorted(allowed)
    if len(cpus) < 2:
        return None
    taken = taken or {}
    start = (age - 1) % len(cpus)
    ordered = cpus[start:] + cpus[:start]
    return min(ordered, key=lambda cpu: taken.get(cpu, 0))


def sibling_cpus(parent: int, me: int) -> dict[int, int]:
    """CPU -> number of ``parent``'s other children pinned to exactly that CPU (Linux /proc;
    empty where it cannot be read)."""
    taken: dict[int, int] = {}
    try:
        children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    except OSError:
        return taken
    for child in children:
        if int(child) == me:
            continue
        try:
            status = Path(f"/proc/{child}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("Cpus_allowed_list:"):
                value = line.split(":", 1)[1].strip()
                if value.isdigit():
                    taken[int(value)] = taken.get(int(value), 0) + 1
    return taken


def pin_worker(age: int, parent: int) -> int | None:
    """Pin this process (its threads yet to start inherit it) to its CPU; the CPU, or None
    when not pinned (turned off, one CPU only, or not supported here)."""
    if os.environ.get(AFFINITY_ENV, "1") == "0" or not hasattr(os, "sched_setaffinity"):
        return None
    cpu = worker_cpu(age, os.sched_getaffinity(0), sibling_cpus(parent, os.getpid()))
    if cpu is None:
        return None
    try:
        os.sched_setaffinity(0, {cpu})
    except OSError:
        return None
    return cpu


class AsyncioWorker(Worker):  # type: ignore[misc]
    """One gunicorn worker: ``HttpServer`` on the arbiter's listeners until told to stop.

    Request bodies are bounded before they are buffered: ``MAX_BODY`` (the app's own default
    limit; keep them equal), ``BODY_LIMITS`` for paths allowed more — a subclass per app."""

    MAX_BODY = 256 * 1024
    BODY_LIMITS: tuple[tuple[str, int], ...] = ()

    def init_process(self) -> None:
        self.cpu = pin_worker(self.age, self.ppid)   # before any thread of the worker exists
        super().init_process()

    def run(self) -> None:
        # The app is built (load_wsgi): what it holds lives as long as the worker. Frozen, the
        # collector stops walking it at every full collection; young objects are collected
        # every GC_YOUNG allocations instead of 700 (a request makes a few thousand).
        gc.freeze()
        gc.set_threshold(GC_YOUNG, *gc.get_threshold()[1:])
        limits = Limits(max_body=self.MAX_BODY, body_limits=self.BODY_LIMITS,
                        wsgi_threads=max(1, int(self.cfg.threads)),
                        idle_timeout=float(max(1, int(self.cfg.keepalive))))
        # /health answers here; /metrics is for the operator's network, not this port
        server = HttpServer([], self.wsgi, limits=limits, metrics_public=False)
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._serve(server))
        finally:
            server.close()
            loop.close()

    async def _serve(self, server: HttpServer) -> None:
        listeners: list[asyncio.Server] = []
        for listener in self.sockets:
            listeners.append(await server.start_socket(listener.sock))
        if self.cpu is not None:
            self.log.info("worker %s on CPU %s", os.getpid(), self.cpu)
        try:
            while self.alive:
                self.notify()
                if self.ppid != os.getppid():       # the arbiter is gone
                    self.log.info("parent changed, worker %s stops", os.getpid())
                    break
                await asyncio.sleep(HEARTBEAT)
        finally:
            for listening in listeners:
                listening.close()
            await self._drain(server)
            server.close()                  # its sweeper task, cancelled while the loop runs
            await asyncio.sleep(0)

    async def _drain(self, server: HttpServer) -> None:
        """Let requests being answered finish, then close the connections that wait for a
        next request — within the arbiter's graceful_timeout, which began up to a heartbeat
        ago (after it the arbiter kills the worker)."""
        deadline = time.monotonic() + max(0.5, float(self.cfg.graceful_timeout) - HEARTBEAT
                                          - 0.5)
        while any(not p.idle() for p in list(server.protocols)) and \
                time.monotonic() < deadline:
            self.notify()
            await asyncio.sleep(0.05)
        for protocol in list(server.protocols):
            with contextlib.suppress(Exception):
                protocol.evict()

    # gunicorn's handlers stay (alive = False, checked each HEARTBEAT); SIGINT/SIGQUIT exit.
    def handle_exit(self, sig: int, frame: Any) -> None:
        self.alive = False
