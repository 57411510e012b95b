"""The signer role: the one running process that opens the CA token (docs/roles.md).

Background work: OCSP pre-signing (initial fill, status changes seen by the watcher, refresh
before nextUpdate, responder renewal), every record written to the store (``ocsp_record``) and
Redis when configured; CRL republication and deltas of the issuing CAs (a root's CRL is a
ceremony). Listens on no TCP port: a unix socket (default ``HOME/run/signer.sock``, 0600 in a
0700 directory) serves exactly ``GET /health`` and ``POST /ocsp-live`` to the status replicas.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

from pki.ca import lifecycle
from pki.ca.authority import Authority
from pki.crl.service import CrlService
from pki.errors import InvalidInput
from pki.http import Request, Response
from pki.http.server import HttpServer
from pki.ocsp.live import LiveEndpoint
from pki.ocsp.service import OcspService
from pki.roles import signer_socket
from pki.roles.lease import SignerLease

log = logging.getLogger("cps.signer")

class SignerServer(HttpServer):
    """The internal server: ``/health`` and the handlers, no ``/metrics``."""

    def builtin(self, req: Request) -> Response | None:
        return super().builtin(req) if req.path == "/health" else None


def crl_loop(crl: CrlService, stop: threading.Event, interval: float) -> Callable[[], None]:
    """Republish before nextUpdate, and a delta soon after each status change."""

    def loop() -> None:
        while not stop.is_set():
            try:
                for published in crl.tick():
                    log.info("published %s CRL %s #%d", published.kind, published.path,
                             published.number)
            except Exception:  # keep going: the next tick retries, the error is logged
                log.exception("CRL tick failed")
            stop.wait(interval)

    return loop


def prepare_socket(path: Path) -> None:
    """A 0700 directory, and no live signer already on ``path`` (a stale file is removed)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    if not path.exists():
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink()                 # left by a signer that died
    else:
        raise InvalidInput(f"a signer already listens on {path}")
    finally:
        probe.close()


async def _serve(server: HttpServer, path: Path, stop: threading.Event) -> None:
    listener = await server.start_unix(str(path))
    try:
        while not stop.is_set():
            await asyncio.sleep(0.1)
    finally:
        listener.close()
        await listener.wait_closed()
        server.close()


def run_signer(home: Path, db_url: str | None, *, redis_url: str | None,
               socket_path: Path | None = None, stop: threading.Event | None = None) -> None:
    """Run the signer role until SIGTERM/SIGINT (main thread) or ``stop`` is set."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    stop = stop or threading.Event()
    path = socket_path or signer_socket(home)
    auth = Authority.open(home, db_url)
    print(f"signer pid {os.getpid()}: holds CA token {auth.config.hsm.token_label} (may sign)",
          flush=True)
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
    lease = SignerLease(auth.store)
    try:
        lease.acquire()
        prepare_socket(path)
    except BaseException:
        lease.release()
        auth.close()
        raise

    def stop_when_lease_lost() -> None:
        lease.lost.wait()
        stop.set()

    threading.Thread(target=stop_when_lease_lost, name="lease-watch", daemon=True).start()
    crl = CrlService(auth)
    ocsp = OcspService(auth, redis_url=redis_url)
    live = LiveEndpoint(ocsp)
    publisher = threading.Thread(
        target=crl_loop(crl, stop, max(1.0, float(auth.config.crl.delta_after_change_seconds))),
        name="crl-publisher", daemon=True)
    try:
        crl.load()
        lifecycle.add_listener(auth, ocsp.on_status_change)
        ocsp.start()
        publisher.start()
        server = SignerServer([live], readiness=[
            lambda: ocsp.ready.is_set() and ocsp.error is None, crl.ready])
        log.info("signer listening on %s", path)
        asyncio.run(_serve(server, path, stop))
    finally:
        stop.set()
        if publisher.is_alive():
            publisher.join(timeout=30)
        ocsp.stop()
        live.close()
        lease.release()
        auth.close()
        with suppress(FileNotFoundError):
            path.unlink()
