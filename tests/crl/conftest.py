"""CRL fixtures: a real home (SoftHSM, SQLite) with an injected clock, and a software mini-CA for
encoder tests that compare against cryptography's own CRL builder."""

from __future__ import annotations

import datetime as dt
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from pki.ca.authority import Authority, IssuedCertificate, IssueRequest
from pki.ca.root import RootCeremony, publish_root_crls
from pki.clock import FixedClock
from pki.crl.publisher import PublishedCrl
from pki.signer import SHA256_ECDSA_ALG, SHA256_RSA_ALG, throwaway_signature

# Whole seconds, like everything X.509 carries; a fixed instant keeps runs reproducible.
START = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(days=2)


class SoftSigner:
    """The TbsSigner seam over a software key (encoder tests only; products sign in the HSM)."""

    def __init__(self, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
                 certificate: x509.Certificate) -> None:
        self.key = key
        self.certificate = certificate
        self.signed = 0

    @property
    def algorithm_identifier(self) -> bytes:
        return SHA256_RSA_ALG if isinstance(self.key, rsa.RSAPrivateKey) else SHA256_ECDSA_ALG

    def sign(self, tbs: bytes) -> bytes:
        self.signed += 1
        if isinstance(self.key, rsa.RSAPrivateKey):
            return self.key.sign(tbs, padding.PKCS1v15(), hashes.SHA256())
        return self.key.sign(tbs, ec.ECDSA(hashes.SHA256()))

    def throwaway_sign(self, tbs: bytes) -> bytes:
        return throwaway_signature(self.key.public_key(), tbs)


def soft_ca(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ASIP-SANTE"),
                      x509.NameAttribute(NameOID.COMMON_NAME, "AC TEST CRL")])
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(0x1234)
            .not_valid_before(START).not_valid_after(START + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                         False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))


@pytest.fixture(scope="session")
def rsa_signer(rsa_key: rsa.RSAPrivateKey) -> SoftSigner:
    return SoftSigner(rsa_key, soft_ca(rsa_key))


@pytest.fixture(scope="session")
def ec_signer(ec_key: ec.EllipticCurvePrivateKey) -> SoftSigner:
    return SoftSigner(ec_key, soft_ca(ec_key))


def openssl(*args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"openssl {' '.join(args)} failed: {proc.stdout}{proc.stderr}")
    return proc


@dataclass
class CrlEnv:
    """A home with the Authority on a FixedClock, one professional, and files for openssl."""

    home: Path
    auth: Authority
    clock: FixedClock
    rpps: str
    tmp: Path
    key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    ceremony: RootCeremony | None = field(default=None, repr=False)

    def publish_roots(self) -> list[PublishedCrl]:
        """The roots' CRLs, signed as `cps-admin root crl` does (root token, not the Authority)."""
        if self.ceremony is None:
            self.ceremony = RootCeremony(self.auth)
        return publish_root_crls(self.ceremony)

    def close(self) -> None:
        if self.ceremony is not None:
            self.ceremony.close_root()
        self.auth.close()

    def issue(self, n: int = 1, profile: str = "auth") -> list[IssuedCertificate]:
        return [self.auth.issue(IssueRequest(profile=profile, public_key=self.key.public_key(),
                                             rpps=self.rpps)) for _ in range(n)]

    @property
    def personnes(self) -> str:
        return self.auth.issuing_ca("PERSONNES").slug

    @property
    def root_slug(self) -> str:
        return next(c.slug for c in self.auth.cas() if c.role == "ROOT")

    def pem(self, name: str, der: bytes, kind: str = "X509 CRL") -> Path:
        import base64
        import textwrap
        path = self.tmp / name
        body = "\n".join(textwrap.wrap(base64.b64encode(der).decode(), 64))
        path.write_text(f"-----BEGIN {kind}-----\n{body}\n-----END {kind}-----\n")
        return path

    def cert_pem(self, cert: IssuedCertificate) -> Path:
        path = self.tmp / f"{cert.serial}.pem"
        path.write_bytes(cert.pem)
        return path

    def chain_pem(self) -> Path:
        path = self.tmp / "chain.pem"
        path.write_bytes(b"".join(c.certificate.public_bytes(serialization.Encoding.PEM)
                                  for c in self.auth.cas()))
        return path

    def ca_pem(self, slug: str) -> Path:
        path = self.tmp / f"{slug}.crt.pem"
        path.write_bytes(self.auth.ca(slug).certificate.public_bytes(serialization.Encoding.PEM))
        return path

    def crl_file(self, crl: PublishedCrl) -> Path:
        suffix = "" if crl.shard is None else f"-p{crl.shard}"
        return self.pem(f"{crl.ca_slug}{suffix}-{crl.kind}-{crl.number}.crl.pem", crl.der)

    def verify(self, cert: IssuedCertificate, crls: list[PublishedCrl], *extra: str
               ) -> subprocess.CompletedProcess[str]:
        """``openssl verify -crl_check_all`` at the clock's time with the given CRLs."""
        args = ["verify", "-crl_check_all", "-attime", str(int(self.clock.now().timestamp())),
                "-CAfile", str(self.chain_pem()), *extra]
        for crl in crls:
            args += ["-CRLfile", str(self.crl_file(crl))]
        return openssl(*args, str(self.cert_pem(cert)))


@pytest.fixture
def make_env(make_home: Callable[..., Path], tmp_path: Path) -> Iterator[Callable[..., CrlEnv]]:
    opened: list[CrlEnv] = []

    def _make(**init_kwargs: object) -> CrlEnv:
        from conftest import add_professional  # tests/conftest.py helpers
        init_kwargs.setdefault("key_type", "p256")
        clock = FixedClock(START)
        home = make_home(clock=clock, **init_kwargs)
        auth = Authority.open(home, clock=clock)
        work = tmp_path / f"env{len(opened) + 1}"
        work.mkdir()
        env = CrlEnv(home, auth, clock, add_professional(auth), work)
        opened.append(env)
        return env

    yield _make
    for env in opened:
        env.close()
