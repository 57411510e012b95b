"""Start and stop the software card in-process (thread) or as a ``cps-card-sim`` subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import ClassVar

from pki.cards.sim.softcard import SoftCard
from pki.cards.sim.store import CardFile
from pki.cards.sim.vpcd import DEFAULT_PORT, VpcdLink, connect


class SimulatedCard:
    """A software card whose insertion/removal the caller controls (in this process)."""

    def __init__(
        self,
        card_file: Path | str,
        port: int = DEFAULT_PORT,
        host: str = "127.0.0.1",
        applications: tuple[str, ...] = ("cps", "piv", "iasecc"),
        trace: list[tuple[str, str]] | None = None,
    ) -> None:
        self.trace = trace  # every APDU exchanged, for test vectors
        self.card_file = CardFile(card_file)
        self.applications = applications
        self.port = port
        self.host = host
        self.card: SoftCard | None = None
        self.link: VpcdLink | None = None
        self._thread: threading.Thread | None = None

    @property
    def inserted(self) -> bool:
        return self.link is not None and not self.link.closed.is_set()

    # pcscd powers a yanked card down during a grace period; a card re-inserted inside it is
    # never reported (pcsc-lite 1.9 + vpcd). A hand cannot re-seat a card that fast either.
    MIN_OUT_SECONDS = 1.0
    _last_pull: ClassVar[dict[int, float]] = {}  # per vpcd port: the reader, not the card, cares

    def insert(self, timeout: float = 10.0, settle: float = 3.0) -> SoftCard:
        """Power the card up from its file (its chip) and put it in the reader.

        vpcd may leave a fresh connection unaccepted while pcscd is still powering down the
        previous card; a card vpcd has not spoken to within ``settle`` seconds is pulled and
        inserted again, like a user re-seating it.
        """
        if self.inserted:
            raise RuntimeError("card already inserted")
        pulled_at = self._last_pull.get(self.port)
        if pulled_at is not None:
            time.sleep(max(0.0, pulled_at + self.MIN_OUT_SECONDS - time.monotonic()))
        deadline = time.monotonic() + timeout
        while True:
            self.card = SoftCard(self.card_file, self.applications)
            sock = connect(self.host, self.port, max(0.1, deadline - time.monotonic()))
            self.link = VpcdLink(self.card, sock, self.trace)
            self._thread = threading.Thread(
                target=self.link.serve, name=f"vpcd-{self.port}", daemon=True
            )
            self._thread.start()
            if self.link.greeted.wait(min(settle, max(0.1, deadline - time.monotonic()))):
                return self.card
            self.remove()
            if time.monotonic() >= deadline:
                raise TimeoutError(f"vpcd on port {self.port} did not take the card")

    def remove_after(self, apdus: int) -> None:
        """Pull the card out when command APDU ``apdus + 1`` (from now) arrives."""
        if self.link is None:
            raise RuntimeError("card not inserted")
        self.link.remove_after(apdus)

    def remove(self) -> None:
        if self.link is not None:
            self.link.pull()
            self._last_pull[self.port] = self.link.pulled_at or time.monotonic()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.link = None
        self._thread = None

    def __enter__(self) -> SimulatedCard:
        self.insert()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.remove()


class SimProcess:
    """``cps-card-sim`` as a child process (what the demo runs)."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self.popen = popen

    @classmethod
    def start(
        cls, card_file: Path | str, port: int = DEFAULT_PORT, log: Path | None = None
    ) -> SimProcess:
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[3])
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        out = open(log, "ab") if log is not None else subprocess.DEVNULL  # noqa: SIM115 - owned by the child
        cmd = [
            sys.executable,
            "-m",
            "pki.cards.sim",
            "--vpcd-port",
            str(port),
            "--card-file",
            str(card_file),
        ]
        try:
            popen = subprocess.Popen(cmd, env=env, stdout=out, stderr=out)
        finally:
            if log is not None and not isinstance(out, int):
                out.close()
        return cls(popen)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def kill(self) -> None:
        """SIGKILL: a card yanked out with no chance to finish anything."""
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(timeout=10)

    def stop(self, timeout: float = 5.0) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
