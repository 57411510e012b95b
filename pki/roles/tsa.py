"""The tsa role: RFC 3161 time stamps (``POST /tsa``) signed with the TSA's own key.

A TSA signs whatever hash it is sent, so it is an online signer of its own, and it is kept as
far from the CA keys as the broker is: it opens only the token ``CPS-TSA`` (PIN
``secrets/tsa.pin``), refuses to start in a process that holds another token open
(pki.roles.guard), and is confined to that one PIN (pki.roles.confine hides the CA's, the
root's and the broker's). Its certificate chain comes from ``HOME/tsa/tsa-chain.pem``, written
by the officer's ``cps-admin tsa cert`` ceremony; at start the role checks that the chain's
first certificate certifies the token's key and carries id-kp-timeStamping, critical.

Replicas: any number of processes on one home; each opens its own session on the token. They
share nothing mutable: serial numbers are 127 random bits (cps_sign.tsa). The store is not
needed at all.

Its own status: a TSA whose certificate is revoked must stop stamping (its tokens would prove
nothing). At start the role asks the status tier (OCSP at the certificate's AIA, else its CRL)
and refuses to start when the certificate is revoked or on hold; then a thread asks again every
``tsa.status_seconds`` of config.json (60 s): revoked or on hold, every query is rejected
(``systemFailure`` with the reason) until a hold is released; a revoked TSA stays suspended
(a restart refuses). The status tier away does not stop the TSA (a verifier checks the TSA
certificate's status at the time stamp anyway): it is logged.

The protocol is ``cps_sign.tsa.TimeStampAuthority``; this module wires it to the HTTP server:
the handler parses nothing on the event loop, it hands the body to a small thread pool (the
HSM session lock in pki.hsm serialises the C_Sign calls of concurrent requests).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Awaitable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509

from cps_sign.tsa import (
    CONTENT_TYPE_QUERY,
    CONTENT_TYPE_REPLY,
    MAX_QUERY,
    TimeStampAuthority,
    TsaSettings,
)
from pki.clock import SYSTEM_CLOCK, Clock
from pki.config import TSA_CHAIN_FILE, TSA_KEY_LABEL, Config
from pki.errors import ConfigError
from pki.http import Request, Response
from pki.http.wire import Limits

if TYPE_CHECKING:
    from cps_login.revocation import RevocationChecker
    from pki.hsm import Hsm

log = logging.getLogger("cps.tsa")

PATH = "/tsa"
SIGN_THREADS = 4
LIMITS = Limits(body_limits=(*Limits().body_limits, (PATH, MAX_QUERY)))


def read_chain(config: Config) -> list[x509.Certificate]:
    """The TSA certificate then its issuers, from ``HOME/tsa/tsa-chain.pem``."""
    path = config.path(TSA_CHAIN_FILE)
    try:
        certs = x509.load_pem_x509_certificates(path.read_bytes())
    except FileNotFoundError:
        raise ConfigError(f"no TSA certificate at {path}: run `cps-admin tsa cert` first") \
            from None
    except ValueError as exc:
        raise ConfigError(f"{path}: not a PEM certificate chain ({exc})") from None
    return certs


def open_tsa_token(config: Config) -> Hsm:
    """A session on the TSA's own token, logged in with ``secrets/tsa.pin``; refused when the
    configuration names a CA token for it."""
    from pki.hsm import Hsm

    h = config.hsm
    if h.tsa_token_label in (h.token_label, h.root_token_label, h.broker_token_label):
        raise ConfigError(f"TSA token label {h.tsa_token_label!r} is another role's token; "
                          f"the TSA needs its own token")
    return Hsm(h.module, h.tsa_token_label, config.read_secret(h.tsa_pin_file),
               config.softhsm_conf_path())


def load_authority(config: Config, hsm: Hsm, clock: Clock = SYSTEM_CLOCK
                   ) -> TimeStampAuthority:
    chain = read_chain(config)
    if not chain[0].not_valid_before_utc <= clock.now() <= chain[0].not_valid_after_utc:
        raise ConfigError(f"the TSA certificate in {config.path(TSA_CHAIN_FILE)} is not valid "
                          f"now (until {chain[0].not_valid_after_utc:%Y-%m-%d}); renew it with "
                          f"`cps-admin tsa cert`")
    key = hsm.key(TSA_KEY_LABEL)
    try:
        return TimeStampAuthority(key, chain[0], chain[1:],
                                  TsaSettings(policy=config.profiles.tsa_policy_oid), clock)
    except ValueError as exc:
        raise ConfigError(f"{config.path(TSA_CHAIN_FILE)}: {exc}; run `cps-admin tsa cert`") \
            from None


class OwnStatusWatch:
    """Asks the status tier for the TSA certificate's status and suspends ``authority`` while it
    is revoked or on hold (see the module's docstring)."""

    def __init__(self, authority: TimeStampAuthority, issuer: x509.Certificate | None,
                 interval: float, checker: RevocationChecker | None = None,
                 clock: Clock = SYSTEM_CLOCK) -> None:
        from cps_login.revocation import RevocationChecker

        self.authority = authority
        self.issuer = issuer
        self.interval = interval
        self.checker = checker or RevocationChecker(clock)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.revoked = False

    def check(self) -> str | None:
        """One check: the status seen (None when the status tier gave no answer)."""
        from cps_login.errors import RevocationUnavailable

        if self.issuer is None or self.revoked:
            return "revoked" if self.revoked else None
        cert = self.authority.certificate
        try:
            status = self.checker.status(cert, self.issuer).status
        except RevocationUnavailable as exc:
            log.warning("TSA certificate %X: no revocation answer (%s); still stamping",
                        cert.serial_number, exc)
            return None
        except Exception:       # never let the watch die: it is the only one
            log.exception("TSA certificate %X: status check failed", cert.serial_number)
            return None
        if status in ("revoked", "hold"):
            what = "revoked" if status == "revoked" else "on hold"
            reason = f"this TSA's certificate {cert.serial_number:X} is {what}: no time stamp"
            if self.authority.suspended != reason:
                log.error("%s; every query is rejected%s", reason,
                          " until it is renewed (cps-admin tsa cert) and the role restarted"
                          if status == "revoked" else " while the hold lasts")
            self.authority.suspended = reason
            self.revoked = status == "revoked"
        elif status == "good" and self.authority.suspended is not None:
            log.warning("TSA certificate %X: hold released; stamping again", cert.serial_number)
            self.authority.suspended = None
        elif status == "status_unknown":
            log.warning("TSA certificate %X: the responder does not know it; still stamping",
                        cert.serial_number)
        return status

    def start(self) -> None:
        if self.issuer is None:
            log.warning("TSA chain without the issuing CA: its own status is not watched")
            return
        self._thread = threading.Thread(target=self._run, name="tsa-status", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.check()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


def watch_own_status(config: Config, authority: TimeStampAuthority,
                     chain: list[x509.Certificate]) -> OwnStatusWatch:
    """The start-up check (revoked or on hold: ``ConfigError``), then the watch, started."""
    issuer = next((c for c in chain[1:] if c.subject == authority.certificate.issuer), None)
    watch = OwnStatusWatch(authority, issuer, max(float(config.tsa.status_seconds), 0.2))
    status = watch.check()
    if status in ("revoked", "hold"):
        raise ConfigError(f"the TSA certificate {authority.certificate.serial_number:X} is "
                          f"{'revoked' if status == 'revoked' else 'on hold'}: "
                          + ("issue a new one with `cps-admin tsa cert`" if status == "revoked"
                             else "release the hold first"))
    watch.start()
    return watch


class TsaEndpoint:
    """The pki.http handler of ``POST /tsa``."""

    def __init__(self, authority: TimeStampAuthority, executor: ThreadPoolExecutor) -> None:
        self.authority = authority
        self.executor = executor
        self.granted = 0
        self.answered = 0

    def __call__(self, req: Request) -> Response | Awaitable[Response] | None:
        if req.path != PATH:
            return None
        if req.method != "POST":
            return Response(405, b"POST a DER TimeStampReq (application/timestamp-query)\n",
                            headers=[("Allow", "POST")])
        kind = req.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != CONTENT_TYPE_QUERY:
            return Response(415, f"Content-Type must be {CONTENT_TYPE_QUERY}\n".encode())
        future = asyncio.get_running_loop().run_in_executor(
            self.executor, self.authority.respond, req.body)
        return self._answer(future)

    async def _answer(self, future: Awaitable[bytes]) -> Response:
        der = await future
        self.answered += 1
        return Response(200, der, CONTENT_TYPE_REPLY)

    def metrics_text(self) -> str:
        return ("# HELP tsa_responses_total Time-stamp responses sent (granted or rejected).\n"
                "# TYPE tsa_responses_total counter\n"
                f"tsa_responses_total {self.answered}\n")


def run_tsa(home: Path, db_url: str | None, *, host: str, port: int,
            reuse_port: bool = False, metrics_port: int | None = None) -> None:
    """Serve ``POST /tsa`` on ``host:port`` until SIGTERM/SIGINT (``db_url`` is accepted for a
    uniform role command line; the TSA reads no store)."""
    from pki.http.server import serve
    from pki.roles.guard import refuse_key_holders

    del db_url
    config = Config.load(home)
    refuse_key_holders("tsa", allowed_tokens=(config.hsm.tsa_token_label,))
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    hsm = open_tsa_token(config)
    watch: OwnStatusWatch | None = None
    try:
        authority = load_authority(config, hsm)
        watch = watch_own_status(config, authority, read_chain(config))
        cert = authority.certificate
        print(f"tsa pid {os.getpid()}: TSA token {config.hsm.tsa_token_label} — signs time "
              f"stamps only, no CA key; certificate {cert.serial_number:X} "
              f"({cert.subject.rfc4514_string()})", flush=True)
        with ThreadPoolExecutor(max_workers=SIGN_THREADS, thread_name_prefix="tsa-sign") as pool:
            endpoint = TsaEndpoint(authority, pool)
            serve(host, port, [endpoint], None, limits=LIMITS, reuse_port=reuse_port,
                  metrics=[endpoint.metrics_text], metrics_port=metrics_port)
    finally:
        if watch is not None:
            watch.stop()
        hsm.close()
