"""The broker and patient roles as production servers: Flask apps under gunicorn.

``run_broker`` and ``run_patient`` block until SIGTERM/SIGINT (gunicorn's arbiter: graceful
stop on SIGTERM, quick on SIGINT), with ``gthread`` workers. Each worker builds its app after
the fork (no preload): the broker's PKCS#11 session is opened in the worker that uses it, never
inherited across a fork. ``GET /health`` answers 200 once a worker has built its app.

Neither role holds an ``Authority``. The broker opens only its own token (``CPS-BROKER``); the
patient role loads no PKCS#11 module at all. Both refuse to start in a process that holds a
session on any other token, the CA or root token above all (``pki.roles.guard``).

With ``mtls_port`` the broker also serves introspection over mutual TLS — a second gunicorn
arbiter in a child process, since gunicorn's TLS settings are per server, not per address —
with the officer-issued certificate ``secrets/broker-tls.crt`` (see ``cps_login.mtls``).

``python -m cps_login.roles broker|patient --home H --port P ...`` runs one role (used by tests
and usable from a service manager); bad input ends with one ``error: ...`` line.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import ssl
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from gunicorn.app.base import BaseApplication  # type: ignore[import-untyped]

from cps_login.config import LoginConfig
from pki.errors import ConfigError, PkiError
from pki.http.gunicorn_worker import AsyncioWorker

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
THREADS_PER_WORKER = 8
ASYNCIO_WORKER = "cps_login.roles.BrokerWorker"


class BrokerWorker(AsyncioWorker):
    """The broker's gunicorn worker: the asyncio HTTP server, bodies bounded as the app bounds
    them (Flask's MAX_CONTENT_LENGTH; messages to a patient may carry an attachment)."""

    MAX_BODY = 256 * 1024
    BODY_LIMITS = (("/api/patients", 2 * 1024 * 1024),)


class _Gunicorn(BaseApplication):  # type: ignore[misc]
    """gunicorn, programmatically: our options, our app factory (called in each worker)."""

    def __init__(self, factory: Callable[[], WsgiApp], options: dict[str, Any]) -> None:
        self._factory = factory
        self._options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._options.items():
            self.cfg.set(key, value)

    def load(self) -> WsgiApp:
        return self._factory()


def _options(name: str, host: str, port: int, workers: int,
             worker_class: str = "gthread") -> dict[str, Any]:
    if workers < 1:
        raise ConfigError("workers must be at least 1")
    from pki.http.capacity import connection_cap, raise_descriptor_limit

    raise_descriptor_limit()     # inherited by the workers
    return {"bind": [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"],
            # Below the descriptor limit: at EMFILE a gthread worker dies (issue 13 #3); at
            # worker_connections it stops accepting until keep-alive connections time out.
            "worker_connections": connection_cap(None),
            "workers": workers, "worker_class": worker_class, "threads": THREADS_PER_WORKER,
            "timeout": 30, "graceful_timeout": 10, "keepalive": 5, "proc_name": name,
            "accesslog": None, "errorlog": "-", "loglevel": "warning", "preload_app": False}


def _serve(factory: Callable[[], WsgiApp], options: dict[str, Any]) -> None:
    """Run gunicorn until it is told to stop; a clean stop returns, a failure raises."""
    try:
        _Gunicorn(factory, options).run()
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise ConfigError(f"{options['proc_name']}: gunicorn stopped with status "
                              f"{exc.code} (see the log above)") from None


def _config(home: Path, db_url: str | None, redis_url: str | None) -> LoginConfig:
    overrides: dict[str, Any] = {"redis_url": redis_url} if redis_url else {}
    config = LoginConfig.from_home(home, db_url=db_url, **overrides)
    return replace(config, trusted_proxies=trusted_proxies(config.trusted_proxies))


def trusted_proxies(configured: Sequence[str]) -> tuple[str, ...]:
    """login.json's ``trusted_proxies`` plus the supervisor's front (``cps-admin serve``
    without a role sets ``CPS_TRUSTED_FRONT`` for its broker and patient children): without
    it every client behind the front shares the front's address (one sign-in bucket)."""
    front = os.environ.get("CPS_TRUSTED_FRONT", "")     # pki.roles.supervisor.TRUSTED_FRONT_ENV
    extra = [part.strip() for part in front.split(",") if part.strip()]
    return (*configured, *(e for e in extra if e not in configured))


def refuse_key_holders(config: LoginConfig, role: str) -> None:
    """A public role never runs in a process that has any token open but its own (the CA or
    root token above all): ``pki.roles.guard``, as ``cps-admin serve --role`` applies it."""
    from pki.roles.guard import refuse_key_holders as refuse

    refuse(role, allowed_tokens=(config.pki.hsm.broker_token_label,) if role == "broker" else ())


def _check_store(config: LoginConfig) -> Any:
    """Fail before forking workers when the store or its CAs cannot be read."""
    from cps_login.trust import load_trust
    from pki.store.db import Store

    store = Store(config.pki.effective_db_url(config.db_url))
    try:
        return load_trust(store)
    finally:
        store.dispose()


# --- broker ---------------------------------------------------------------------------------
def _broker_app(config: LoginConfig, mtls: bool = False) -> WsgiApp:
    from cps_login.mtls import introspection_only
    from cps_login.web import create_broker_app

    app = create_broker_app(config)
    return introspection_only(app.wsgi_app) if mtls else app.wsgi_app


def _mtls_child(config: LoginConfig, options: dict[str, Any]) -> None:
    _die_with_parent()
    _serve(lambda: _broker_app(config, mtls=True), options)


def _die_with_parent() -> None:
    """Linux: SIGTERM this process when the broker process that started it dies."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG


def _tls_context(conf: Any, default_factory: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
    context = default_factory()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def run_broker(home: Path, db_url: str | None, *, host: str, port: int, redis_url: str | None,
               workers: int = 2, mtls_port: int | None = None) -> None:
    """Serve the broker role (blocks): login, JWKS, /api, /openapi.json; introspection on
    ``mtls_port`` over mutual TLS when given."""
    from cps_login.mtls import client_cas_file, tls_files

    config = _config(home, db_url, redis_url)
    refuse_key_holders(config, "broker")
    pki_config = config.pki
    pki_config.read_secret(pki_config.hsm.broker_pin_file)     # missing PIN: one line, now
    # The public port: gunicorn's arbiter, workers answering with the project's asyncio HTTP
    # server, each pinned to a CPU (pki.http.gunicorn_worker; bench/oidc.py shows why).
    options = _options("cps-broker", host, port, workers, ASYNCIO_WORKER)
    mtls_options: dict[str, Any] | None = None
    if mtls_port is not None:
        cert, key = tls_files(home)
        mtls_options = {**_options("cps-broker-mtls", host, mtls_port, workers),
                        "certfile": str(cert), "keyfile": str(key),
                        "ca_certs": str(client_cas_file(home, _check_store(config))),
                        "cert_reqs": ssl.CERT_REQUIRED, "ssl_context": _tls_context}
    else:
        _check_store(config)
    print(f"broker pid {os.getpid()}: holds broker token "
          f"{pki_config.hsm.broker_token_label} only (signs access tokens, no CA key)",
          flush=True)
    child = None
    if mtls_options is not None:
        child = multiprocessing.get_context("fork").Process(
            target=_mtls_child, args=(config, mtls_options), name="cps-broker-mtls")
        child.start()
    try:
        _serve(lambda: _broker_app(config), options)
    finally:
        if child is not None:
            child.terminate()
            child.join(timeout=15)


# --- patient --------------------------------------------------------------------------------
def _patient_app(config: LoginConfig) -> WsgiApp:
    from cps_login.web import create_patient_app

    return create_patient_app(config).wsgi_app


def run_patient(home: Path, db_url: str | None, *, host: str, port: int,
                redis_url: str | None, workers: int = 2) -> None:
    """Serve the patient role (blocks): /patient and /espace. Holds no key."""
    from cps_login.web.proxy import parse_networks

    config = _config(home, db_url, redis_url)
    refuse_key_holders(config, "patient")
    _check_store(config)
    config.session_key()        # created once here, before the workers race for it
    config.totp_key()
    options = _options("cps-patient", host, port, workers)
    # gunicorn believes X-Forwarded-Proto from the same peers as cps_login.web.proxy, no other
    options["forwarded_allow_ips"] = ",".join(
        str(net) for net in parse_networks(config.trusted_proxies))
    print(f"patient pid {os.getpid()}: no key", flush=True)
    _serve(lambda: _patient_app(config), options)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m cps_login.roles")
    parser.add_argument("role", choices=("broker", "patient"))
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--db", default=None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis", default=None)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--mtls-port", type=int, default=None)
    args = parser.parse_args(argv)
    try:
        if args.role == "broker":
            run_broker(args.home, args.db, host=args.host, port=args.port,
                       redis_url=args.redis, workers=args.workers, mtls_port=args.mtls_port)
        else:
            if args.mtls_port is not None:
                raise ConfigError("--mtls-port is for the broker role")
            run_patient(args.home, args.db, host=args.host, port=args.port,
                        redis_url=args.redis, workers=args.workers)
    except (PkiError, OSError) as exc:
        print(f"error: {' '.join(str(getattr(exc, 'message', exc)).split())}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
