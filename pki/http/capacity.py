"""Connection capacity: a cap below the descriptor limit, and load shedding logged once.

With the usual 1,024 descriptors, a few more idle sockets than that once stopped every answer:
``accept()`` failed with EMFILE, and asyncio logged a traceback for every attempt (hundreds of
thousands in seconds). Now a server holds at most ``connection_cap()`` connections, keeping a
reserve for the store, the signer's socket and upstream connections; at the cap it closes the
connection idle the longest to make room (or, with none idle, answers 503 and closes), and
says so once per episode. Should the descriptors run out anyway (another part of the process
took them), the accept loop's EMFILE reports are folded into the same once-per-episode line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import socket
import time
from typing import Any

RESERVE_MIN = 64            # descriptors kept free for everything but client connections
RESERVE_SHARE = 8           # ... or one eighth of the limit, whichever is larger
LISTEN_BACKLOG = 1024
_ACCEPT_FAILED = "socket.accept() out of system resource"


def descriptor_limit() -> int:
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return 1 << 20 if soft == resource.RLIM_INFINITY else int(soft)


def raise_descriptor_limit(ceiling: int = 1 << 16) -> int:
    """Raise the soft RLIMIT_NOFILE toward the hard one (as Go's runtime and nginx do): the
    usual soft 1,024 is a default for interactive shells, not a server. Returns the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = ceiling if hard == resource.RLIM_INFINITY else min(int(hard), ceiling)
    if soft != resource.RLIM_INFINITY and soft < want:
        with contextlib.suppress(ValueError, OSError):   # else the cap follows the soft one
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return descriptor_limit()


def accept_batch() -> int:
    """The listen backlog, which is also how many sockets asyncio accepts in one loop pass
    before any closed one frees its descriptor: kept within half the reserve."""
    limit = descriptor_limit()
    return max(16, min(1024, max(RESERVE_MIN, limit // RESERVE_SHARE) // 2))


def widen_backlog(server: asyncio.Server, backlog: int = LISTEN_BACKLOG) -> None:
    """asyncio uses its ``backlog`` both for the kernel's queue and for how many sockets it
    accepts per loop pass: keep the pass small (``accept_batch``, descriptors) and make the
    queue long again (a burst of new connections must not see its SYNs dropped)."""
    for listening in server.sockets:
        with socket.socket(fileno=os.dup(listening.fileno())) as sock:
            sock.listen(backlog)


def connection_cap(configured: int | None, per_connection: int = 1) -> int:
    """``configured``, or what RLIMIT_NOFILE allows with a reserve kept free.

    ``per_connection``: descriptors a client connection may cost (2 at a proxy: the client's
    and the upstream one)."""
    if configured is not None:
        return configured
    limit = descriptor_limit()
    reserve = max(RESERVE_MIN, limit // RESERVE_SHARE)
    return max(8, (limit - reserve) // per_connection)


class Shedding:
    """Counts connections shed or evicted at the cap; one warning when an episode starts, one
    line when it ends (the connection count back under 90 % of the cap)."""

    def __init__(self, log: logging.Logger, what: str, cap: int) -> None:
        self.log = log
        self.what = what
        self.cap = cap
        self.active = False
        self.shed = 0
        self.evicted = 0
        self.accept_failures = 0
        self.since = 0.0

    def start(self) -> None:
        if not self.active:
            self.active = True
            self.since = time.monotonic()
            self.log.warning(
                "%s: connection cap %d reached (descriptor limit %d): closing the longest-idle "
                "connections, answering 503 when none is idle", self.what, self.cap,
                descriptor_limit())

    def on_shed(self) -> None:
        self.start()
        self.shed += 1

    def on_evict(self) -> None:
        self.start()
        self.evicted += 1

    def on_accept_failure(self, exc: BaseException | None) -> None:
        if not self.active:
            self.active = True
            self.since = time.monotonic()
            self.log.warning("%s: out of descriptors accepting connections (%s); retrying",
                             self.what, exc)
        self.accept_failures += 1

    def check_end(self, connections: int) -> None:
        if self.active and connections < self.cap * 9 // 10:
            self.log.warning("%s: under the connection cap again after %.1f s: %d idle closed, "
                             "%d refused with 503, %d accept failures", self.what,
                             time.monotonic() - self.since, self.evicted, self.shed,
                             self.accept_failures)
            self.active = False
            self.shed = self.evicted = self.accept_failures = 0


def guard_accept_errors(loop: asyncio.AbstractEventLoop, shedding: Shedding) -> None:
    """Route asyncio's EMFILE reports from the accept loop to ``shedding`` (no traceback each);
    every other report goes to the handler that was there before."""
    previous = loop.get_exception_handler()
    if getattr(previous, "_cps_accept_guard", False):
        return

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") == _ACCEPT_FAILED:
            shedding.on_accept_failure(context.get("exception"))
        elif previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    handler._cps_accept_guard = True  # type: ignore[attr-defined]
    loop.set_exception_handler(handler)
