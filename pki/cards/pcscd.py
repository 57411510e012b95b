"""Run (or reuse) the one pcscd a machine can have, for tests, the bench and the demo.

pcscd owns a fixed socket (``/run/pcscd/pcscd.comm``), so a second instance cannot run; if one
is already serving we reuse it and never stop it. One we start is a foreground child
(``pcscd -f``) that receives SIGTERM if this process dies (``PR_SET_PDEATHSIG``), so even a
killed test run leaves no stray daemon. vsmartcard's vpcd driver is loaded by pcscd from
``/etc/reader.conf.d/vpcd``: its virtual readers (and TCP ports 35963/35964) exist only while
pcscd runs.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from pki.cards.errors import NoReader

PCSCD_SOCKET = Path(os.environ.get("PCSCLITE_CSOCK_NAME", "/run/pcscd/pcscd.comm"))
VPCD_READERS = ("Virtual PCD 00 00", "Virtual PCD 00 01")
VPCD_PORTS = (35963, 35964)
_START_ATTEMPTS = 3
_PR_SET_PDEATHSIG = 1


def pcscd_binary() -> str | None:
    return shutil.which("pcscd") or next(
        (p for p in ("/usr/sbin/pcscd", "/sbin/pcscd") if os.access(p, os.X_OK)), None
    )


def pcscd_running() -> bool:
    """True when something accepts connections on pcscd's socket."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(1.0)
        sock.connect(str(PCSCD_SOCKET))
    except OSError:
        return False
    finally:
        sock.close()
    return True


def _die_with_parent() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _help_text(binary: str) -> str:
    out = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=5, check=False)
    return out.stdout + out.stderr


def wait_for_readers(names: Sequence[str], timeout: float) -> list[str]:
    """Poll PC/SC until every reader in ``names`` is listed; raise :class:`NoReader` on timeout."""
    from pki.cards.pcsc import list_readers

    deadline = time.monotonic() + timeout
    while True:
        try:
            present = list_readers()
        except NoReader:
            present = []
        if all(name in present for name in names):
            return present
        if time.monotonic() >= deadline:
            raise NoReader(f"readers {list(names)} did not appear within {timeout:.0f}s")
        time.sleep(0.05)


def _wait_ports_free(ports: Sequence[int], timeout: float) -> None:
    """Wait (bounded) until vpcd could listen on ``ports``: nothing else holds them."""
    deadline = time.monotonic() + timeout
    for port in ports:
        while True:
            probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                probe.bind(("0.0.0.0", port))
                break
            except OSError:
                if time.monotonic() >= deadline:
                    return  # let pcscd try anyway; its readers' absence is reported below
                time.sleep(0.1)
            finally:
                probe.close()


class Pcscd:
    """Handle on the pcscd in use; :meth:`stop` only stops one this object started."""

    def __init__(self, popen: subprocess.Popen[bytes] | None, log: Path | None) -> None:
        self.popen = popen
        self.log = log

    @property
    def started_here(self) -> bool:
        return self.popen is not None

    @classmethod
    def ensure(
        cls,
        readers: Sequence[str] = VPCD_READERS,
        timeout: float = 15.0,
        log: Path | None = None,
        debug: bool = False,
    ) -> Pcscd:
        """Reuse the running pcscd or start one; return once ``readers`` are listed."""
        if pcscd_running():
            handle = cls(None, None)
            wait_for_readers(readers, timeout)
            return handle
        # A pcscd that just stopped may leave vpcd's ports held for a moment; the new daemon then
        # starts without its virtual readers ("Address already in use" in its log) and never
        # gets them. Wait for the ports, and start again when the readers do not come.
        for attempt in range(1, _START_ATTEMPTS + 1):
            _wait_ports_free(VPCD_PORTS, timeout)
            handle = cls._start(timeout, log, debug)
            try:
                wait_for_readers(readers, timeout if attempt == _START_ATTEMPTS else timeout / 3)
            except NoReader:
                handle.stop()
                if attempt == _START_ATTEMPTS:
                    raise
                continue
            return handle
        raise AssertionError("unreachable")  # pragma: no cover

    @classmethod
    def _start(cls, timeout: float, log: Path | None, debug: bool) -> Pcscd:
        binary = pcscd_binary()
        if binary is None:
            raise NoReader("pcscd is not installed (apt-get install pcscd)")
        cmd = [binary, "-f"]
        if "--disable-polkit" in _help_text(binary):
            cmd.append("--disable-polkit")
        if debug:
            cmd += ["-d", "-a"]
        out = open(log, "ab") if log is not None else None  # noqa: SIM115 - handed to the child
        try:
            popen = subprocess.Popen(
                cmd,
                stdout=out if out is not None else subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
        finally:
            if out is not None:
                out.close()
        handle = cls(popen, log)
        deadline = time.monotonic() + timeout
        while not pcscd_running():
            if popen.poll() is not None:
                raise NoReader(f"pcscd exited with status {popen.returncode} (log: {log})")
            if time.monotonic() >= deadline:
                handle.stop()
                raise NoReader("pcscd did not open its socket in time")
            time.sleep(0.02)
        return handle

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.terminate()
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(timeout=timeout)

    def __enter__(self) -> Pcscd:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
