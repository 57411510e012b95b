"""The TSA stops stamping when its own certificate is revoked or on hold.

A TSA whose certificate is revoked (a key compromise, the unit closed) would go on signing time
stamps that no verifier can rely on — and a client learns it only when its signature is judged.
The tsa role asks the status tier for its own status: at start (revoked or on hold: it does not
start) and every ``tsa.status_seconds``; while revoked or on hold every query is rejected with
``systemFailure`` and the reason. The status tier away does not stop it."""

from __future__ import annotations

import dataclasses
import hashlib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from cps_login.errors import RevocationUnavailable
from cps_login.revocation import RevocationStatus
from cps_sign.tsa_client import TsaError, timestamp
from pki.ca import lifecycle
from pki.ca.authority import Authority
from pki.ca.hierarchy import init_home
from pki.clock import SYSTEM_CLOCK
from pki.config import TSA_CHAIN_FILE, Config
from pki.crl.service import CrlService
from pki.http.server import HttpServer
from pki.ocsp.endpoint import OcspEndpoint
from pki.ocsp.service import OcspService
from pki.roles.tsa import OwnStatusWatch
from tests.servers import free_port, run_server
from tests.tsa.helpers import BIN, provision_tsa, running_tsa, software_tsa

DIGEST = hashlib.sha256(b"care claim").digest()


@dataclasses.dataclass
class StatusHome:
    home: Path
    auth: Authority
    crl: CrlService
    serial: str
    issuer: x509.Certificate

    def wait_ocsp(self, want: str, timeout: float = 20) -> None:
        from cps_login.revocation import RevocationChecker

        chain = x509.load_pem_x509_certificates((self.home / TSA_CHAIN_FILE).read_bytes())
        checker = RevocationChecker(SYSTEM_CLOCK)
        deadline = time.monotonic() + timeout
        while checker.status(chain[0], self.issuer).status != want:
            assert time.monotonic() < deadline, f"OCSP never said {want}"
            time.sleep(0.05)


@pytest.fixture(scope="module")
def status_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StatusHome]:
    """A home whose base URL serves OCSP and CRLs, its TSA checking its status twice a second."""
    port = free_port()
    home = tmp_path_factory.mktemp("tsa-status") / "home"
    init_home(home, key_type="p256", base_url=f"http://127.0.0.1:{port}")
    chain_path = provision_tsa(home)
    config = Config.load(home)
    dataclasses.replace(config, tsa=dataclasses.replace(config.tsa, status_seconds=0.3)).save()
    auth = Authority.open(home)
    crl = CrlService(auth)
    crl.load()
    ocsp = OcspService(auth, poll_interval=0.1)
    lifecycle.add_listener(auth, ocsp.on_status_change)
    running = run_server(HttpServer([OcspEndpoint(ocsp), crl.handler]), port)
    ocsp.start(wait=True, timeout=120)
    for ca in auth.issuing_cas():
        crl.publish_full(ca)
    chain = x509.load_pem_x509_certificates(chain_path.read_bytes())
    try:
        yield StatusHome(home, auth, crl, f"{chain[0].serial_number:X}", chain[1])
    finally:
        running.close()
        ocsp.stop()
        auth.close()


def _stamp(url: str) -> str:
    """"granted", or the rejection's text and failure bits."""
    try:
        timestamp(url, DIGEST)
    except TsaError as exc:
        return f"{exc} {exc.fail_info}"
    return "granted"


def _wait_for(url: str, want: str, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while True:
        got = _stamp(url)
        if (want == "granted") == (got == "granted") and want in got:
            return got
        assert time.monotonic() < deadline, f"still {got!r}, expected {want!r}"
        time.sleep(0.1)


def test_held_then_released_then_revoked(status_home: StatusHome) -> None:
    env = status_home
    with running_tsa(env.home) as tsa:
        assert _stamp(tsa.url) == "granted"
        lifecycle.hold(env.auth, env.serial)
        env.wait_ocsp("hold")
        refused = _wait_for(tsa.url, "on hold")
        assert "rejection" in refused and "system_failure" in refused, refused
        lifecycle.release(env.auth, env.serial)
        env.wait_ocsp("good")
        _wait_for(tsa.url, "granted")
        lifecycle.revoke(env.auth, env.serial, "keyCompromise")
        env.wait_ocsp("revoked")
        _wait_for(tsa.url, "revoked")
        assert tsa.proc.poll() is None             # still answering: each query rejected
        log = tsa.log.read_text()
        assert "is on hold" in log and "hold released" in log and "is revoked" in log
    # a restart refuses to serve with a revoked certificate, saying what to do
    start = subprocess.run([str(BIN / "cps-admin"), "--home", str(env.home), "serve",
                            "--role", "tsa", "--port", str(free_port())],
                           capture_output=True, text=True, timeout=60)
    assert start.returncode != 0
    assert "revoked" in start.stderr and "cps-admin tsa cert" in start.stderr, start.stderr


class _Checker:
    def __init__(self) -> None:
        self.answer: RevocationStatus | Exception = RevocationStatus("good", "ocsp")

    def status(self, cert: x509.Certificate, issuer: x509.Certificate) -> RevocationStatus:
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def test_the_status_tier_away_does_not_stop_the_tsa() -> None:
    soft = software_tsa(SYSTEM_CLOCK)
    checker = _Checker()
    watch = OwnStatusWatch(soft.authority, soft.root, 60,
                           checker=checker)  # type: ignore[arg-type]
    checker.answer = RevocationUnavailable("OCSP: refused; CRL: refused")
    assert watch.check() is None and soft.authority.suspended is None
    checker.answer = RevocationStatus("hold", "ocsp", "certificateHold")
    assert watch.check() == "hold" and "on hold" in str(soft.authority.suspended)
    checker.answer = RevocationUnavailable("down")        # a hold stays until it is released
    watch.check()
    assert soft.authority.suspended is not None
    checker.answer = RevocationStatus("good", "ocsp")
    watch.check()
    assert soft.authority.suspended is None
    checker.answer = RevocationStatus("revoked", "ocsp", "keyCompromise")
    watch.check()
    checker.answer = RevocationStatus("good", "ocsp")   # revoked is final in this process
    assert watch.check() == "revoked" and soft.authority.suspended is not None
    checker.answer = RuntimeError("a bug in a checker")
    fresh = OwnStatusWatch(soft.authority, soft.root, 60, checker=checker)  # type: ignore[arg-type]
    assert fresh.check() is None                           # logged; the watch goes on
