"""`cps-admin serve`: every role behind one address, or one role (docs/roles.md).

Without ``--role`` the supervisor (``pki.roles.supervisor``) starts signer, status, broker,
patient and tsa (once `cps-admin tsa cert` has made its certificate) each as its own child
process and routes one address to them by path. With ``--role X`` this process runs role X
alone — what the supervisor's children and a real deployment (one systemd unit per role and
replica) run.

This module imports no role and nothing of the CA at load time: ``--role status`` must reach
its runner without the PKCS#11 module ever entering the process. The CLI itself opens no
Authority and reads no PIN; a role opens only its own token.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from pki.config import Config
from pki.roles import guard

ROLES = ("signer", "status", "broker", "patient", "tsa")
DEFAULT_WORKERS = 2
# Set by the supervisor in its children's environment: the child dies with its supervisor.
SUPERVISOR_ENV = "CPS_SUPERVISOR_PID"


@dataclass(frozen=True)
class RoleOptions:
    host: str = "127.0.0.1"
    port: int = 8080
    redis_url: str | None = None
    signer_socket: Path | None = None
    workers: int | None = None          # None: DEFAULT_WORKERS with Redis, else 1
    mtls_port: int | None = None
    metrics_port: int | None = None     # status: /metrics on 127.0.0.1 only
    metrics_token_file: Path | None = None


def run_role(role: str, home: Path, db_url: str | None, options: RoleOptions) -> None:
    """Run ``role`` in this process until SIGTERM/SIGINT; public roles are guarded first."""
    if role not in ROLES:
        raise click.BadParameter(f"unknown role {role!r}; expected one of {', '.join(ROLES)}",
                                 param_hint="--role")
    config = Config.load(home)
    if role in guard.PUBLIC_ROLES:
        own = {"broker": (config.hsm.broker_token_label,),
               "tsa": (config.hsm.tsa_token_label,)}.get(role, ())
        guard.refuse_key_holders(role, allowed_tokens=own)
    redis_url = options.redis_url or config.ocsp.redis_url
    workers = (web_workers(home, db_url, redis_url, options.workers)
               if role in ("broker", "patient") else 0)
    metrics_token = None
    if role == "status" and options.metrics_token_file is not None:
        from pki.roles.status import read_metrics_token

        metrics_token = read_metrics_token(options.metrics_token_file)   # before it is hidden
    from cps_login.config import LoginConfig
    from pki.roles.confine import confine_or_warn
    from pki.roles.privileges import harden_or_warn

    # The other roles' secrets out of this process's reach, and no privilege left to undo it.
    # Every web-role secret is made first (once a namespace exists): one a role made later
    # would stay in the reach of the roles already confined.
    login = LoginConfig.from_home(home, db_url)
    confined = confine_or_warn(role, config, login.web_secrets(),
                               prepare=login.create_role_secrets).applied
    ports = () if role == "signer" else (options.port, options.mtls_port, options.metrics_port)
    harden_or_warn(role, config, confined=confined, ports=ports)
    if role == "signer":
        from pki.roles.signer import run_signer

        run_signer(home, db_url, redis_url=redis_url, socket_path=options.signer_socket)
    elif role == "status":
        from pki.roles.status import run_status

        run_status(home, db_url, host=options.host, port=options.port, redis_url=redis_url,
                   signer_socket=options.signer_socket, metrics_port=options.metrics_port,
                   metrics_token=metrics_token)
    elif role == "tsa":
        from pki.roles.tsa import run_tsa

        run_tsa(home, db_url, host=options.host, port=options.port,
                metrics_port=options.metrics_port)
    elif role == "broker":
        from cps_login.roles import run_broker

        run_broker(home, db_url, host=options.host, port=options.port, redis_url=redis_url,
                   workers=workers, mtls_port=options.mtls_port)
    else:
        from cps_login.roles import run_patient

        run_patient(home, db_url, host=options.host, port=options.port, redis_url=redis_url,
                    workers=workers)


def web_workers(home: Path, db_url: str | None, redis_url: str | None,
                requested: int | None) -> int:
    """Worker processes of a web role. Login challenges and rate limits are shared between
    processes only through Redis: without it, one worker (its threads serve concurrently)."""
    from cps_login.config import LoginConfig

    shared = bool(redis_url or LoginConfig.from_home(home, db_url).redis_url)
    if requested is None:
        return DEFAULT_WORKERS if shared else 1
    if requested > 1 and not shared:
        raise click.BadParameter(
            f"{requested} workers need Redis (--redis URL): without it each worker keeps its "
            "own login challenges and rate limits", param_hint="--workers")
    return requested


def die_with_supervisor() -> None:
    """In a supervised child: ask Linux to SIGKILL it when the supervisor dies (no orphans).

    SIGKILL, not SIGTERM: a supervisor killed hard is restarted at once, and a signer still
    finishing its work beside the next one's signer would make two writers of the OCSP records.
    """
    expected = os.environ.get(SUPERVISOR_ENV)
    if not expected or not sys.platform.startswith("linux"):
        return
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if str(os.getppid()) != expected:      # it died before the request took effect
        sys.exit(1)


@click.command("serve")
@click.option("--role", type=click.Choice(ROLES), default=None,
              help="Run this one role in this process (default: every role, each its own "
                   "process, behind one address).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option("--redis", "redis_url", metavar="URL", default=None,
              help="Redis for shared state and pre-signed OCSP (default: the home's config).")
@click.option("--signer-socket", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The signer's unix socket (default: HOME/run/signer.sock).")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help=f"Worker processes of the broker and patient roles (default: "
                   f"{DEFAULT_WORKERS} with Redis, 1 without).")
@click.option("--mtls-port", type=click.IntRange(0, 65535), default=None,
              help="Also serve token introspection over mutual TLS on this port (broker).")
@click.option("--metrics-port", type=click.IntRange(1, 65535), default=None,
              help="Serve the status role's /metrics on 127.0.0.1:PORT (never on the public "
                   "port).")
@click.option("--metrics-token-file", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Require 'Authorization: Bearer <token>' for /metrics (the "
                                 "token is the file's one line).")
@click.option("--no-web", is_flag=True,
              help="Without --role: only signer and status (OCSP, CRLs, CA certificates).")
@click.pass_obj
def serve(admin: Any, role: str | None, host: str, port: int, redis_url: str | None,
          signer_socket: Path | None, workers: int | None, mtls_port: int | None,
          metrics_port: int | None, metrics_token_file: Path | None, no_web: bool) -> None:
    """Serve OCSP, CRLs, CA certificates, the login broker, the patient space and time
    stamps."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    options = RoleOptions(host=host, port=port, redis_url=redis_url,
                          signer_socket=signer_socket, workers=workers, mtls_port=mtls_port,
                          metrics_port=metrics_port, metrics_token_file=metrics_token_file)
    home, db_url = Path(admin.home), admin.db_url
    if role is not None:
        die_with_supervisor()
        run_role(role, home, db_url, options)
        return
    from pki.roles.supervisor import run_supervisor

    config = Config.load(home)     # a missing home is one error line, before any child starts
    if workers is not None and not no_web:      # likewise a worker count the roles refuse
        web_workers(home, db_url, redis_url or config.ocsp.redis_url, workers)
    if not no_web:
        from cps_login.config import LoginConfig

        # every web-role secret (session, pages, TOTP and messages keys, where login.json
        # puts them) made before any role hides the secrets of the others: one created later
        # by a web role would stay visible to the roles already confined (the signer first)
        LoginConfig.from_home(home, db_url).create_role_secrets()
    run_supervisor(home, db_url, options, web=not no_web)
