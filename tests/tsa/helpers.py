"""A time-stamping authority for tests (tests/tsa and the signature tests that need B-T).

* ``provision_tsa(home)``: the ``cps-admin tsa cert`` ceremony on a home made by ``init_home``
  (the TSA key in CPS-TSA, its certificate from the ORGANISATIONS CA); returns the chain file.
* ``running_tsa(home)``: ``cps-admin serve --role tsa`` as a real process on a free port (its own
  PKCS#11 session, so this process's SoftHSM configuration may change freely); yields the URL.
* ``software_tsa(clock)``: a ``TimeStampAuthority`` with a software key and a throw-away
  root -> TSA chain, no HSM: for protocol tests and benches.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cps_sign.tsa import TimeStampAuthority, TsaSettings
from pki.clock import SYSTEM_CLOCK, Clock
from tests.servers import free_port, stop_process

BIN = Path(sys.executable).parent
TEST_POLICY = "1.2.250.1.213.1.7.1.1.1.9.1"


def provision_tsa(home: Path) -> Path:
    """Issue the TSA certificate of ``home`` (key generated in CPS-TSA the first time)."""
    from pki.ca.authority import Authority
    from pki.cli.tsa import ensure_tsa_token, issue_tsa_certificate

    auth = Authority.open(home)
    try:
        ensure_tsa_token(auth.config)
        return issue_tsa_certificate(auth).chain_path
    finally:
        auth.close()


def root_certificate(home: Path) -> Path:
    """The PEM of the root the TSA chain ends in (for ``openssl ts -verify -CAfile``)."""
    chain = x509.load_pem_x509_certificates((home / "tsa" / "tsa-chain.pem").read_bytes())
    path = home.parent / "tsa-root.pem"
    path.write_bytes(chain[-1].public_bytes(serialization.Encoding.PEM))
    return path


@dataclass
class TsaProcess:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def base(self) -> str:
        return self.url.removesuffix("/tsa")


@contextlib.contextmanager
def running_tsa(home: Path, log: Path | None = None, timeout: float = 60) -> Iterator[TsaProcess]:
    """``cps-admin serve --role tsa`` on a free port until the block ends (SIGTERM)."""
    port = free_port()
    log = log or home.parent / f"tsa-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(BIN / "cps-admin"), "--home", str(home), "serve",
                                 "--role", "tsa", "--port", str(port)],
                                stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            assert proc.poll() is None, log.read_text()
            with contextlib.suppress(OSError), \
                    urllib.request.urlopen(base + "/health", timeout=2) as reply:
                if reply.status == 200:
                    break
            assert time.monotonic() < deadline, "tsa never became ready\n" + log.read_text()
            time.sleep(0.1)
        yield TsaProcess(base + "/tsa", proc, log)
    finally:
        stop_process(proc)


@dataclass(frozen=True)
class SoftwareTsa:
    authority: TimeStampAuthority
    root: x509.Certificate
    certificate: x509.Certificate

    def root_pem(self, path: Path) -> Path:
        path.write_bytes(self.root.public_bytes(serialization.Encoding.PEM))
        return path

    def chain_pem(self, path: Path) -> Path:
        path.write_bytes(self.certificate.public_bytes(serialization.Encoding.PEM))
        return path


def software_tsa(clock: Clock = SYSTEM_CLOCK, policy: str = TEST_POLICY,
                 rsa_key: bool = False) -> SoftwareTsa:
    """A TSA with software keys: root (self-signed) -> TSA certificate (timeStamping, critical);
    the TSA key P-256, or RSA-2048 with ``rsa_key``."""
    now = clock.now().replace(microsecond=0)
    root_key = ec.generate_private_key(ec.SECP256R1())
    tsa_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey = (
        rsa.generate_private_key(65537, 2048) if rsa_key
        else ec.generate_private_key(ec.SECP256R1()))
    root_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test TSA Root")])
    root = (x509.CertificateBuilder().subject_name(root_name).issuer_name(root_name)
            .public_key(root_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                         False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(root_key.public_key()),
                           critical=False)
            .sign(root_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test TSA")]))
            .issuer_name(root_name).public_key(tsa_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False,
                                         False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.TIME_STAMPING]),
                           critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                root_key.public_key()), critical=False)
            .sign(root_key, hashes.SHA256()))
    authority = TimeStampAuthority(tsa_key, cert, [root], TsaSettings(policy=policy), clock)
    return SoftwareTsa(authority, root, cert)
