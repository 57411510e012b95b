"""Issue 13 #1: a flood of nonce requests does not delay revocation (signer + status processes).

Anonymous ``POST /ocsp`` with a fresh nonce each needs a live signature: the status replica
forwards it to the signer, whose HSM session also signs the status-change records. Before: 16
flooding threads (370–550 live signatures/s) delayed a revocation to 3.8–5.7 s at the status
tier. Now the status-change work takes the HSM before queued live requests
(``pki.hsm`` priority), and each client address gets a small budget of forwarded live requests
(``pki.ocsp.mirror.LiveBudget``; beyond it tryLater).
"""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp

from pki.ca import lifecycle
from pki.ca.authority import Authority, IssueRequest
from pki.ca.hierarchy import init_home
from tests.roles.processes import Role, Roles, ocsp_request

FLOOD_THREADS = 16


@dataclass
class Split:
    auth: Authority
    signer: Role
    port: int
    issuer: x509.Certificate
    certs: list[x509.Certificate]


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Split]:
    from conftest import add_professional  # tests/conftest.py

    tmp = tmp_path_factory.mktemp("live")
    home = tmp / "home"
    init_home(home, key_type=os.environ.get("LIVE_KEY_TYPE", "p256"))
    auth = Authority.open(home)
    rpps = add_professional(auth)
    certs = [auth.issue(IssueRequest(profile="auth", rpps=rpps, public_key=ec.generate_private_key(
        ec.SECP256R1()).public_key())).certificate for _ in range(3)]
    issuer = auth.issuing_ca("PERSONNES").certificate
    roles = Roles(home, tmp)
    try:
        signer, _, port = roles.signer_and_status()
        yield Split(auth, signer, port, issuer, certs)
    finally:
        roles.close()
        auth.close()


def _post(conn: http.client.HTTPConnection, der: bytes) -> ocsp.OCSPResponse:
    conn.request("POST", "/ocsp", der, {"Content-Type": "application/ocsp-request"})
    return ocsp.load_der_ocsp_response(conn.getresponse().read())


def _connect(port: int, source: str) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(source, 0))


# One flooding client process (several threads, each from its own loopback address): the
# test process alone, one GIL, could not send as fast as the pen test did.
FLOODER = r'''
import http.client, os, sys, threading, time
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
port, first, count, seconds = (int(a) for a in sys.argv[1:5])
cert = x509.load_pem_x509_certificate(open(sys.argv[5], "rb").read())
issuer = x509.load_pem_x509_certificate(open(sys.argv[6], "rb").read())
signed = later = 0
lock = threading.Lock()
def run(source):
    global signed, later
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(source, 0))
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        der = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1()) \
            .add_extension(x509.OCSPNonce(os.urandom(16)), critical=False).build() \
            .public_bytes(serialization.Encoding.DER)
        try:
            conn.request("POST", "/ocsp", der, {"Content-Type": "application/ocsp-request"})
            status = ocsp.load_der_ocsp_response(conn.getresponse().read()).response_status
        except (OSError, http.client.HTTPException):
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10,
                                              source_address=(source, 0))
            continue
        with lock:
            if status == ocsp.OCSPResponseStatus.SUCCESSFUL:
                signed += 1
            else:
                later += 1
threads = [threading.Thread(target=run, args=(f"127.0.1.{first + i}",)) for i in range(count)]
for t in threads: t.start()
for t in threads: t.join()
print(signed, later)
'''


class Flood:
    """``threads`` clients in ``processes`` processes, each from its own loopback address, each
    request a fresh nonce, for ``seconds``."""

    def __init__(self, split: Split, tmp: Path, threads: int, processes: int = 4,
                 seconds: float = 6.0) -> None:
        script, cert, issuer = tmp / "flooder.py", tmp / "cert.pem", tmp / "issuer.pem"
        script.write_text(FLOODER)
        cert.write_bytes(split.certs[0].public_bytes(serialization.Encoding.PEM))
        issuer.write_bytes(split.issuer.public_bytes(serialization.Encoding.PEM))
        each = threads // processes
        self.argv = [[sys.executable, str(script), str(split.port), str(1 + p * each),
                      str(each), str(int(seconds)), str(cert), str(issuer)]
                     for p in range(processes)]
        self.procs: list[subprocess.Popen[bytes]] = []
        self.signed = self.try_later = 0
        self.started = 0.0

    def __enter__(self) -> Flood:
        self.started = time.monotonic()
        for argv in self.argv:
            self.procs.append(subprocess.Popen(argv, stdout=subprocess.PIPE))
        return self

    def __exit__(self, *_: object) -> None:
        for proc in self.procs:
            out = proc.communicate(timeout=60)[0]
            signed, later = out.split()
            self.signed += int(signed)
            self.try_later += int(later)
        self.seconds = time.monotonic() - self.started


def _serial(cert: x509.Certificate) -> str:
    text = f"{cert.serial_number:X}"
    return "0" + text if len(text) % 2 else text


def test_revocation_reaches_status_within_one_second_during_a_nonce_flood(
        split: Split, tmp_path: Path) -> None:
    target = split.certs[1]
    plain = ocsp_request(target, split.issuer)
    watcher = _connect(split.port, "127.0.0.1")
    assert _post(watcher, plain).certificate_status == ocsp.OCSPCertStatus.GOOD
    with Flood(split, tmp_path, FLOOD_THREADS) as flood:
        time.sleep(2.0)                           # the flood at full speed
        started = time.monotonic()
        lifecycle.revoke(split.auth, _serial(target), "keyCompromise")
        revoked_after = None
        while time.monotonic() - started < 10:
            if _post(watcher, plain).certificate_status == ocsp.OCSPCertStatus.REVOKED:
                revoked_after = time.monotonic() - started
                break
            time.sleep(0.02)
    watcher.close()
    rate = flood.signed / flood.seconds
    print(f"flood: {FLOOD_THREADS} addresses, {rate:.0f} live signatures/s, "
          f"{flood.try_later} tryLater; revoked at status after {revoked_after} s")
    assert flood.signed > 0, "the flood got no live signature at all"
    assert revoked_after is not None, "status never answered revoked"
    assert revoked_after < 1.0, f"revoked after {revoked_after:.2f} s during the flood"


def test_one_address_over_its_live_budget_gets_try_later_others_do_not(split: Split) -> None:
    cert = split.certs[2]
    greedy = _connect(split.port, "127.0.2.1")
    kinds = []
    for _ in range(200):                          # back to back, far over the budget
        kinds.append(_post(greedy, ocsp_request(cert, split.issuer, nonce=os.urandom(16)))
                     .response_status)
    greedy.close()
    assert ocsp.OCSPResponseStatus.TRY_LATER in kinds
    other = _connect(split.port, "127.0.2.2")
    answer = _post(other, ocsp_request(cert, split.issuer, nonce=os.urandom(16)))
    other.close()
    assert answer.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
    # Pre-signed answers are not budgeted: the greedy address still gets them.
    greedy = _connect(split.port, "127.0.2.1")
    assert _post(greedy, ocsp_request(cert, split.issuer)).certificate_status == \
        ocsp.OCSPCertStatus.GOOD
    greedy.close()


def test_background_hsm_callers_wait_for_every_waiting_foreground_one() -> None:
    """The two-level session lock: with the lock held, a live signer (background) queued first
    and a pre-signer (foreground) queued after it, the pre-signer goes first."""
    from pki.hsm import PriorityLock

    lock = PriorityLock()
    order: list[str] = []
    released = threading.Event()

    def holder() -> None:
        with lock.hold():
            released.wait(10)

    def caller(name: str, quiet: bool) -> None:
        with lock.hold(background=quiet):
            order.append(name)

    threads = [threading.Thread(target=holder)]
    threads[0].start()
    time.sleep(0.05)
    for i in range(3):
        threads.append(threading.Thread(target=caller, args=(f"live{i}", True)))
        threads[-1].start()
    time.sleep(0.05)
    threads.append(threading.Thread(target=caller, args=("presign", False)))
    threads[-1].start()
    time.sleep(0.05)
    released.set()
    for thread in threads:
        thread.join(10)
    assert order[0] == "presign", order
    assert sorted(order[1:]) == ["live0", "live1", "live2"]
