"""The signer and a status replica as two processes on one home (real SoftHSM, SQLite).

What the split must keep: a revocation made by an officer process is answered revoked by the
status process within 1 s; a nonce request is signed by the signer through its unix socket; the
status process holds no PKCS#11 library; with the signer gone the pre-signed answers keep
flowing and live requests get tryLater; CRLs and CA certificates come from the store.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from sqlalchemy import func, select

from pki import urls
from pki.ca import lifecycle
from pki.ca.authority import Authority, IssueRequest
from pki.ca.hierarchy import init_home
from pki.crl import publisher
from pki.roles import signer_socket
from pki.store.models import OcspRecord
from tests.roles.processes import (
    Role,
    Roles,
    ask,
    http_get,
    ocsp_request,
    unix_get,
    wait_for,
)


@dataclass
class Split:
    home: Path
    auth: Authority
    roles: Roles
    signer: Role
    status: Role
    port: int
    issuer: x509.Certificate
    certs: dict[str, x509.Certificate]

    def ask(self, name: str, **kwargs: object) -> ocsp.OCSPResponse:
        return ask(self.port, ocsp_request(self.certs[name], self.issuer, **kwargs))  # type: ignore[arg-type]


def _issue(auth: Authority, rpps: str) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    issued = auth.issue(IssueRequest(profile="auth", public_key=key.public_key(), rpps=rpps))
    return issued.certificate


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Split]:
    from conftest import add_professional  # tests/conftest.py

    tmp = tmp_path_factory.mktemp("split")
    home = tmp / "home"
    init_home(home, key_type="p256")
    auth = Authority.open(home)
    rpps = add_professional(auth)
    certs = {name: _issue(auth, rpps) for name in ("good", "later", "held", "spare")}
    lifecycle.hold(auth, _serial(certs['held']))
    issuer = auth.issuing_ca("PERSONNES").certificate
    roles = Roles(home, tmp)
    try:
        signer, status, port = roles.signer_and_status()
        yield Split(home, auth, roles, signer, status, port, issuer, certs)
    finally:
        roles.close()
        auth.close()


def _serial(cert: x509.Certificate) -> str:
    text = f"{cert.serial_number:X}"
    return "0" + text if len(text) % 2 else text


def _check_signed(response: ocsp.OCSPResponse, issuer: x509.Certificate) -> x509.Certificate:
    """The response verifies with its responder certificate, which the CA issued for OCSP."""
    assert response.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
    (responder,) = response.certificates
    responder.verify_directly_issued_by(issuer)
    assert x509.ExtendedKeyUsageOID.OCSP_SIGNING in responder.extensions.get_extension_for_class(
        x509.ExtendedKeyUsage).value
    key = responder.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    key.verify(response.signature, response.tbs_response_bytes,
               ec.ECDSA(response.signature_hash_algorithm or hashes.SHA256()))
    return responder


def test_first_lines_say_who_may_sign(split: Split) -> None:
    assert split.signer.first_line() == \
        f"signer pid {split.signer.proc.pid}: holds CA token CPS-CA (may sign)"
    assert split.status.first_line() == \
        f"status pid {split.status.proc.pid}: no key (PKCS#11 not loaded)"


def test_status_process_maps_no_pkcs11_library(split: Split) -> None:
    maps = Path(f"/proc/{split.status.proc.pid}/maps").read_text()
    assert "softhsm" not in maps.lower() and "pkcs11" not in maps.lower()
    signer_maps = Path(f"/proc/{split.signer.proc.pid}/maps").read_text()
    assert "softhsm" in signer_maps.lower()        # the check can fail: the signer has it
    code = ("import pki.roles.status, sys; assert 'pkcs11' not in sys.modules; "
            "assert 'pkilint' not in sys.modules, 'a linter in a public process'; "
            "assert not [m for m in sys.modules if m.startswith('pki.ca')], 'CA code'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_signer_socket_is_private_and_not_tcp(split: Split) -> None:
    sock = signer_socket(split.home)
    assert stat.S_ISSOCK(sock.stat().st_mode)
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600
    assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700
    assert unix_get(sock, "/metrics") == 404                   # exactly /health and /ocsp-live
    listening = Path("/proc/net/tcp").read_text() + Path("/proc/net/tcp6").read_text()
    inodes = {os.readlink(f"/proc/{split.signer.proc.pid}/fd/{fd}")
              for fd in os.listdir(f"/proc/{split.signer.proc.pid}/fd")}
    sockets = {i.removeprefix("socket:[").rstrip("]") for i in inodes if i.startswith("socket:")}
    tcp_listen = [line.split() for line in listening.splitlines()[1:]]
    assert not [f for f in tcp_listen if f[3] == "0A" and f[9] in sockets]


def test_presigned_answers_verify_and_are_in_the_store(split: Split) -> None:
    good = split.ask("good")
    responder = _check_signed(good, split.issuer)
    assert good.certificate_status == ocsp.OCSPCertStatus.GOOD
    held = split.ask("held")
    assert held.certificate_status == ocsp.OCSPCertStatus.REVOKED
    assert held.revocation_reason == x509.ReasonFlags.certificate_hold
    with split.auth.store.read() as session:
        count = session.execute(select(func.count()).select_from(OcspRecord).where(
            OcspRecord.responder_serial == f"{responder.serial_number:X}")).scalar()
    assert count is not None and count >= 4


def test_revocation_is_answered_by_status_within_one_second(split: Split) -> None:
    assert split.ask("later").certificate_status == ocsp.OCSPCertStatus.GOOD
    lifecycle.revoke(split.auth, _serial(split.certs["later"]), "keyCompromise")
    started = time.monotonic()
    while True:
        answer = split.ask("later")
        elapsed = time.monotonic() - started
        if answer.certificate_status == ocsp.OCSPCertStatus.REVOKED:
            break
        assert elapsed < 5, "status never answered revoked"
        time.sleep(0.02)
    print(f"revoked answered by status after {elapsed:.3f} s")
    assert elapsed < 1.0, f"revoked after {elapsed:.2f} s"
    assert answer.revocation_reason == x509.ReasonFlags.key_compromise
    _check_signed(answer, split.issuer)


def test_nonce_and_sha256_are_signed_by_the_signer(split: Split) -> None:
    nonce = os.urandom(16)
    answer = split.ask("good", nonce=nonce)
    _check_signed(answer, split.issuer)
    assert answer.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == nonce
    assert answer.certificate_status == ocsp.OCSPCertStatus.GOOD
    sha256 = split.ask("held", algorithm=hashes.SHA256())
    assert sha256.hash_algorithm.name == "sha256"
    assert sha256.certificate_status == ocsp.OCSPCertStatus.REVOKED


def test_new_certificate_reaches_status(split: Split) -> None:
    from conftest import add_professional

    cert = _issue(split.auth, add_professional(split.auth, body="1000345679"))
    split.certs["new"] = cert
    deadline = time.monotonic() + 5
    while split.ask("new").certificate_status != ocsp.OCSPCertStatus.GOOD:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_crls_and_ca_certificates_come_from_the_store(split: Split) -> None:
    base = f"http://127.0.0.1:{split.port}"
    personnes = split.auth.issuing_ca("PERSONNES")
    root = next(c for c in split.auth.cas() if c.role == "ROOT")
    code, body = http_get(base + urls.ca_cert_path(personnes.slug))
    assert code == 200 and body == personnes.der
    code, body = http_get(base + urls.crl_path(root.slug))   # signed at init, in the ceremony
    assert code == 200 and x509.load_der_x509_crl(body).issuer == root.certificate.subject
    # A CRL published by another process is served within about a second.
    published = publisher.publish_full(split.auth, personnes.slug)
    path = next(p for p in published if p.kind == "full").path
    deadline = time.monotonic() + 3
    while http_get(base + path)[1] != published[0].der:
        assert time.monotonic() < deadline, "new CRL not served"
        time.sleep(0.05)


def test_signer_gone_presigned_still_served_live_gets_try_later(split: Split) -> None:
    split.signer.kill()
    assert split.ask("good").certificate_status == ocsp.OCSPCertStatus.GOOD
    assert split.ask("later").certificate_status == ocsp.OCSPCertStatus.REVOKED
    answer = split.ask("good", nonce=os.urandom(16))
    assert answer.response_status == ocsp.OCSPResponseStatus.TRY_LATER
    code, _ = http_get(f"http://127.0.0.1:{split.port}/health")
    assert code == 200
    assert "signer" in split.status.log() and "unreachable" in split.status.log()
    assert split.status.stop() == 0


def test_postgresql_signer_and_status(tmp_path: Path, pg_url: str) -> None:
    """The same split on PostgreSQL: revoked within 1 s, nonce through the signer."""
    from conftest import add_professional

    home = tmp_path / "home"
    init_home(home, key_type="p256", db_url=pg_url)
    auth = Authority.open(home, pg_url)
    roles = Roles(home, tmp_path, db_url=pg_url)
    try:
        rpps = add_professional(auth)
        cert = _issue(auth, rpps)
        issuer = auth.issuing_ca("PERSONNES").certificate
        signer, status, port = roles.signer_and_status()
        sock = signer_socket(home)
        der = ocsp_request(cert, issuer)
        assert ask(port, der).certificate_status == ocsp.OCSPCertStatus.GOOD
        lifecycle.revoke(auth, _serial(cert), "superseded")
        started = time.monotonic()
        while ask(port, der).certificate_status != ocsp.OCSPCertStatus.REVOKED:
            assert time.monotonic() - started < 5
            time.sleep(0.02)
        assert time.monotonic() - started < 1.0
        nonce = os.urandom(8)
        answer = ask(port, ocsp_request(cert, issuer, nonce=nonce))
        _check_signed(answer, issuer)
        assert answer.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == nonce
        assert status.stop() == 0 and signer.stop() == 0
        assert not sock.exists()
    finally:
        roles.close()
        auth.close()


def test_run_signer_stops_on_event_and_refuses_a_second_signer(tmp_path: Path) -> None:
    import threading

    from pki.errors import InvalidInput
    from pki.roles.signer import prepare_socket, run_signer

    home = tmp_path / "home"
    init_home(home, key_type="p256")
    sock = tmp_path / "run" / "s.sock"
    stop = threading.Event()
    thread = threading.Thread(target=run_signer, args=(home, None),
                              kwargs={"redis_url": None, "socket_path": sock, "stop": stop})
    thread.start()
    try:
        wait_for(lambda: sock.exists() and unix_get(sock, "/health") == 200, "signer healthy")
        with pytest.raises(InvalidInput, match="already listens"):
            prepare_socket(sock)
    finally:
        stop.set()
        thread.join(60)
    assert not thread.is_alive() and not sock.exists()
