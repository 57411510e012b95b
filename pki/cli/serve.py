"""`cps-admin serve`: one HTTP server for OCSP, CRLs, CA certificates and the web apps.

The OCSP, CRL and CA-certificate handlers answer on the asyncio event loop from memory
(pre-signed bytes); the login broker and patient API (a Flask app) run in the server's thread
pool. Background work — OCSP pre-signing and refresh, CRL republication and deltas — runs in
threads of this process, all signing through the Authority's one HSM session.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import click

from pki.ca import lifecycle
from pki.ca.authority import Authority
from pki.cli.context import AdminContext, pass_admin
from pki.crl.service import CrlService
from pki.http.server import serve as run_server
from pki.ocsp.endpoint import OcspEndpoint
from pki.ocsp.service import OcspService

log = logging.getLogger("cps.serve")


def crl_loop(crl: CrlService, stop: threading.Event, interval: float) -> Callable[[], None]:
    """Republish before nextUpdate, and a delta soon after each status change."""

    def loop() -> None:
        while not stop.is_set():
            try:
                for published in crl.tick():
                    log.info("published %s CRL %s #%d", published.kind, published.path,
                             published.number)
            except Exception:  # keep serving: the next tick retries, the error is logged
                log.exception("CRL tick failed")
            stop.wait(interval)

    return loop


def build_wsgi_app(auth: Authority, ocsp: OcspService) -> Any:
    """The broker + patient API, when the login package is installed."""
    from cps_login.web import create_app

    return create_app(auth=auth, ocsp=ocsp)


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option("--mtls-port", type=click.IntRange(0, 65535), default=None,
              help="Also serve token introspection over mutual TLS on this port.")
@click.option("--no-web", is_flag=True, help="Serve only OCSP, CRLs and CA certificates.")
@pass_admin
def serve(admin: AdminContext, host: str, port: int, mtls_port: int | None,
          no_web: bool) -> None:
    """Serve OCSP, CRLs, CA certificates, the login broker and the patient API."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    auth = admin.authority()
    crl = CrlService(auth)
    crl.load()
    ocsp = OcspService(auth)
    endpoint = OcspEndpoint(ocsp)
    lifecycle.add_listener(auth, ocsp.on_status_change)
    ocsp.start()
    stop = threading.Event()
    interval = max(1.0, float(auth.config.crl.delta_after_change_seconds))
    wsgi = None if no_web else build_wsgi_app(auth, ocsp)
    mtls_stop: Callable[[], None] | None = None
    if mtls_port is not None:
        from cps_login.mtls import start_mtls

        mtls_stop = start_mtls(auth, host, mtls_port, wsgi)
    click.echo(f"serving on http://{host}:{port} (OCSP, CRL, CA certificates"
               f"{'' if no_web else ', login broker, patient API'})", err=True)
    # Its own thread, not a server background task: asyncio.run() waits for executor threads
    # at shutdown, and this loop only ends once ``stop`` is set after the server returns.
    publisher = threading.Thread(target=crl_loop(crl, stop, interval), name="crl-publisher",
                                 daemon=True)
    publisher.start()
    try:
        run_server(host, port, [endpoint, crl.handler], wsgi,
                   readiness=[ocsp.ready.is_set, crl.ready], metrics=[endpoint.metrics_text])
    finally:
        stop.set()
        publisher.join(timeout=30)
        ocsp.stop()
        if mtls_stop is not None:
            mtls_stop()
