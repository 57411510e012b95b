"""The status role: public OCSP, CRLs and CA certificates from the pre-signed bytes in the store.

No key and no PKCS#11 module: nothing imported here reaches pki.hsm, pki.signer or pki.ca
(``python -c "import pki.roles.status, sys; assert 'pkcs11' not in sys.modules"``), and no PIN
file or other secret is read. Any number of replicas may run on one store.

* OCSP: ``OcspMirror`` (pki.ocsp.mirror) behind the same ``OcspEndpoint`` the single-process
  server used; live requests (nonce, SHA-256 CertIDs, ...) go to the signer's unix socket,
  tryLater when it is away.
* CRLs and CA certificates: ``StoreCrls`` (pki.crl.reader), polled every ``CRL_POLL`` seconds.
* ``/metrics`` only on a private address (``--metrics-port``) or behind a bearer token
  (``--metrics-token-file``); the public port answers 404.
* ``/health`` is 200 once both are loaded; the store going away afterwards changes nothing for
  the bytes held (served until their nextUpdate), and is logged once.

Redis: the status role reads the store only, the source of truth, which loads as fast (see
pki/ocsp/README.md); ``redis_url`` is accepted for a uniform role command line.
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pki.config import Config
from pki.crl.reader import StoreCas, StoreCrls
from pki.errors import InvalidInput
from pki.http.server import serve
from pki.ocsp.mirror import ForwardingEndpoint, OcspMirror, Outage, SignerClient
from pki.roles import signer_socket as default_signer_socket
from pki.store.db import Store

log = logging.getLogger("cps.status")

CRL_POLL = 0.5                 # seconds: a new CRL is served within ~1 s
FORWARD_THREADS = 8            # concurrent live requests forwarded to the signer


def crl_poller(crls: StoreCrls, stop: threading.Event) -> threading.Thread:
    outage = Outage("store (crl)")

    def loop() -> None:
        loaded = False
        while not stop.is_set():
            try:
                if loaded:
                    crls.poll()
                else:
                    crls.load()
                    loaded = True
                outage.ok()
            except Exception as exc:   # the store away: keep serving what is cached
                outage.failed(exc)
            stop.wait(CRL_POLL)

    return threading.Thread(target=loop, name="crl-poller", daemon=True)


def read_metrics_token(path: Path) -> str:
    """The bearer token for ``/metrics`` from its secret file (one line), read before the role
    is confined (pki.roles.confine hides ``secrets/`` from the status role)."""
    try:
        token = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"cannot read the metrics token file {path}: {exc}") from None
    if not token or any(c.isspace() for c in token):
        raise InvalidInput(f"the metrics token file {path} must hold one word")
    return token


def run_status(home: Path, db_url: str | None, *, host: str, port: int, redis_url: str | None,
               signer_socket: Path | None = None, reuse_port: bool = False,
               metrics_port: int | None = None, metrics_token: str | None = None) -> None:
    """Serve the status role on ``host:port`` until SIGTERM/SIGINT.

    ``/metrics`` is not public: on 127.0.0.1:``metrics_port``, or behind ``metrics_token``
    (``Authorization: Bearer``; on the metrics port if both), else not served (404)."""
    from pki.roles.guard import refuse_key_holders

    refuse_key_holders("status")
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    print(f"status pid {os.getpid()}: no key (PKCS#11 not loaded)", flush=True)
    config = Config.load(home)
    store = Store(config.effective_db_url(db_url))
    cas = StoreCas(config, store)
    crls = StoreCrls(cas)
    socket_path = signer_socket or default_signer_socket(home)
    mirror = OcspMirror(store, cas, signer=SignerClient(socket_path))
    # Each client address has a budget of live requests forwarded to the signer; behind the
    # supervisor's front (TRUSTED_FRONT_ENV), the client is the front's X-Forwarded-For.
    front = [a.strip() for a in os.environ.get("CPS_TRUSTED_FRONT", "").split(",") if a.strip()]
    endpoint = ForwardingEndpoint(mirror, trusted=front, executor=ThreadPoolExecutor(
        max_workers=FORWARD_THREADS, thread_name_prefix="ocsp-forward"))
    stop = threading.Event()
    poller = crl_poller(crls, stop)
    mirror.start()
    poller.start()
    try:
        serve(host, port, [endpoint, crls.handler], None,
              readiness=[mirror.ready.is_set, crls.ready], metrics=[endpoint.metrics_text],
              reuse_port=reuse_port, metrics_port=metrics_port,
              metrics_token=metrics_token)
    finally:
        stop.set()
        mirror.stop()
        poller.join(timeout=5)
        endpoint.executor.shutdown(wait=False, cancel_futures=True)
        store.dispose()
