"""vpcd client: plugs a :class:`SoftCard` into pcscd's virtual reader over TCP.

Framing (vsmartcard): 2-byte big-endian length + payload. A 1-byte payload is a control
message (00 power off, 01 power on, 02 reset, 04 get ATR → answer the ATR); anything else is a
command APDU → answer the response APDU. Connecting is "inserting the card", closing the
socket is "pulling it out".
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time

from pki.cards.sim.softcard import SoftCard

CTRL_OFF, CTRL_ON, CTRL_RESET, CTRL_ATR = 0x00, 0x01, 0x02, 0x04
DEFAULT_PORT = 35963


def _tune(sock: socket.socket) -> None:
    # Without these, Nagle + delayed ACK turn each APDU round trip into ~40-50 ms.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    _quickack(sock)


def _quickack(sock: socket.socket) -> None:
    quickack = getattr(socket, "TCP_QUICKACK", None)
    if quickack is not None:
        sock.setsockopt(socket.IPPROTO_TCP, quickack, 1)


def connect(host: str, port: int, timeout: float) -> socket.socket:
    """Connect to vpcd, retrying until ``timeout`` (pcscd may still be starting)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            sock = socket.create_connection((host, port), timeout=2.0)
        except OSError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.05)
            continue
        sock.settimeout(None)
        _tune(sock)
        return sock


class VpcdLink:
    """Serve one card over one vpcd connection until :meth:`pull` or the peer closes."""

    def __init__(
        self, card: SoftCard, sock: socket.socket, trace: list[tuple[str, str]] | None = None
    ) -> None:
        self.card = card
        self.trace = trace  # (command hex, response hex); ("power", "") on power/reset
        self.sock = sock
        self.apdu_count = 0
        self._remove_after: int | None = None
        self._lock = threading.Lock()
        self.closed = threading.Event()
        self.pulled_at: float | None = None
        self.greeted = threading.Event()  # vpcd spoke to us: the reader really took the card

    def remove_after(self, apdus: int | None) -> None:
        """Test hook: pull the card when command APDU number ``apdus + 1`` arrives, unanswered."""
        with self._lock:
            self._remove_after = None if apdus is None else self.apdu_count + apdus

    def pull(self) -> None:
        """Pull the card out of the reader (idempotent)."""
        with self._lock:
            if self.closed.is_set():
                return
            self.closed.set()
            self.pulled_at = time.monotonic()
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
            self.sock.close()

    def _recv_exact(self, n: int) -> bytes | None:
        buf = bytearray()
        while len(buf) < n:
            _quickack(self.sock)  # Linux clears QUICKACK after each ACK; re-arm before every recv
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                return None
            buf += chunk
        return bytes(buf)

    def _send(self, payload: bytes) -> None:
        self.sock.sendall(len(payload).to_bytes(2, "big") + payload)

    def serve(self) -> None:
        try:
            while not self.closed.is_set():
                header = self._recv_exact(2)
                if header is None:
                    break
                payload = self._recv_exact(int.from_bytes(header, "big"))
                if payload is None:
                    break
                self._handle(payload)
        except OSError:
            pass
        finally:
            self.pull()

    def _handle(self, payload: bytes) -> None:
        self.greeted.set()
        if len(payload) == 1:
            control = payload[0]
            if control in (CTRL_OFF, CTRL_ON, CTRL_RESET):
                self.card.reset()
                if self.trace is not None:
                    self.trace.append(("power", ""))
            elif control == CTRL_ATR:
                self._send(self.card.atr)
            return
        with self._lock:
            self.apdu_count += 1
            if self._remove_after is not None and self.apdu_count > self._remove_after:
                pulled = True
            else:
                pulled = False
        if pulled:
            self.pull()
            return
        response = self.card.process(payload)
        if self.trace is not None:
            self.trace.append((payload.hex(), response.hex()))
        self._send(response)
