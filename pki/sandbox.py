"""Parsing hostile files in a child process with hard limits.

pyHanko makes ~250 bytes of Python objects of each byte it parses, and some small files cost it
far more CPU than their size says (a 2 KB PDF whose one array holds a million entries: 11 s,
+290 MB). What the public routes parse of such files (patient uploads, ``POST /verify``) is
parsed in a child: a limit on its address space and CPU, a wall-clock kill, its answer read as
bounded data. The worker stays as it was, whatever the file does.

The children come from multiprocessing's "forkserver": the server process is threaded
(gunicorn's gthread workers, the asyncio server's pools), and a fork of it would copy locks
other threads hold. The fork server is a fresh single-threaded interpreter (started once, by
fork + exec) that imports the modules registered with ``preload`` (and pyHanko through them),
then forks one child for each file.

Each child also runs the server's main module again, as ``__mp_main__`` (multiprocessing's
rule). When the server was started by module name (``python -m pki.cli.admin serve``), the fork
server imports that module too, so the run finds its imports done: ~5 ms a child, not the
~0.6 s they take; runpy's warning that the module is already imported is silenced in the fork
server (``-W``, the only way to reach it before a child's first line).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

_RUNPY_QUIET = "ignore::RuntimeWarning:runpy"
_PRELOAD: list[str] = []


class NoChild(Exception):
    """No child process could be started: the machine, not the file."""


def preload(*modules: str) -> None:
    """Modules the fork server imports before its first child (call at import time: once the
    fork server runs, a module not preloaded is imported by each child)."""
    for name in modules:
        if name not in _PRELOAD:
            _PRELOAD.append(name)


@functools.cache
def context() -> Any:
    """The forkserver context, its preload fixed at the first call."""
    ctx = multiprocessing.get_context("forkserver")
    main = getattr(getattr(sys.modules["__main__"], "__spec__", None), "name", None)
    modules = list(_PRELOAD)
    if isinstance(main, str) and not main.endswith("__main__"):
        modules.insert(0, main)
        if _RUNPY_QUIET not in sys.warnoptions:
            sys.warnoptions.append(_RUNPY_QUIET)   # read by interpreters started from now on
    ctx.set_forkserver_preload(modules)
    return ctx


def run_child(target: Callable[..., None], args: tuple[Any, ...], *, wall: float,
              answer_max: int, name: str) -> bytes | None:
    """``target(send, *args)`` in a child; what it sent (at most ``answer_max`` bytes), or None
    when it gave nothing (killed, crashed, too long an answer, or past ``wall`` seconds: then
    killed). ``NoChild`` when no child could be started. ``target`` sets its own limits
    (``limit_child``) first thing."""
    ctx = context()
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=target, name=name, daemon=True, args=(send, *args))
    try:
        try:
            child.start()
        except (OSError, EOFError):
            log.exception("%s: no child process", name)
            raise NoChild() from None
        finally:
            send.close()             # the child's end: EOF here when the child is gone
        answer = None
        started = time.monotonic()
        if receive.poll(wall):       # an answer, or EOF: the child is done
            with contextlib.suppress(EOFError, OSError):  # gone without a word (or too many)
                answer = receive.recv_bytes(answer_max)
            child.join(1.0)
        if child.exitcode is None:   # past the wall time
            child.kill()
            child.join()
        if answer is None:
            log.warning("%s: no answer from the child after %.1f s (%s)", name,
                        time.monotonic() - started, exit_text(child.exitcode))
        return answer
    finally:
        receive.close()
        if child.exitcode is not None:
            child.close()


def exit_text(code: int | None) -> str:
    if code is None or code >= 0:
        return f"exit status {code}"
    try:
        return f"signal {signal.Signals(-code).name}"
    except ValueError:
        return f"signal {-code}"


def limit_child(memory: int, cpu: int) -> None:
    """Hard limits on this (child) process: ``memory`` bytes of address space more than it has
    now, ``cpu`` seconds of CPU, no core file."""
    import resource

    with open("/proc/self/statm", "rb") as statm:
        size = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    for which, soft, hard in ((resource.RLIMIT_AS, size + memory, size + memory),
                              (resource.RLIMIT_CPU, cpu, cpu + 1),
                              (resource.RLIMIT_CORE, 0, 0)):
        ceiling = resource.getrlimit(which)[1]
        if ceiling != resource.RLIM_INFINITY:
            soft, hard = min(soft, ceiling), min(hard, ceiling)
        resource.setrlimit(which, (soft, hard))
