"""A real home (SoftHSM, SQLite) served by the real server: OCSP responder, CRLs, and the broker.

The home's base URL points at the port the server listens on, so the AIA OCSP URL and the CRL
distribution points in every certificate are live. "Cards" here are software keys with
certificates issued by the home's Authority (the pcscd tests use the software card instead).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from flask import Flask

from cps_login.config import LoginConfig
from cps_login.proof import login_message
from cps_login.web import create_app
from pki import ids
from pki.ca import lifecycle
from pki.ca.authority import Authority, IssueRequest
from pki.ca.hierarchy import init_home
from pki.crl.service import CrlService
from pki.http.server import HttpServer
from pki.ocsp.endpoint import OcspEndpoint
from pki.ocsp.service import OcspService
from pki.store.models import Professional, Structure
from pki.store.patient_models import ProfessionalActivity
from tests.servers import Running, run_server

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class SoftCard:
    """A software "card": the key and its auth + sign certificates from the real CA."""

    rpps: str
    key: PrivateKey
    auth: x509.Certificate
    sign: x509.Certificate
    sign_key: PrivateKey

    @property
    def national_id(self) -> str:
        return "8" + self.rpps

    @property
    def serial(self) -> str:
        return f"{self.auth.serial_number:X}"


def card_signature(key: PrivateKey, message: bytes) -> bytes:
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(message, padding.PKCS1v15(), hashes.SHA256())
    return key.sign(message, ec.ECDSA(hashes.SHA256()))


def der(cert: x509.Certificate) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding

    return cert.public_bytes(Encoding.DER)


@dataclass
class Env:
    home: Path
    auth: Authority
    base: str
    config: LoginConfig
    app: Flask
    ocsp: OcspService
    crl: CrlService
    running: Running
    cards: dict[str, SoftCard] = field(default_factory=dict)
    extra_certs: list[x509.Certificate] = field(default_factory=list)
    structure_id: str = ""
    _counter: int = 100

    def new_card(self, name: str, profession: int = 10, key_type: str = "rsa") -> SoftCard:
        self._counter += 1
        rpps = ids.luhn_complete(f"10{self._counter:08d}")
        with self.auth.store.session() as session:
            session.add(Professional(rpps=rpps, profession_code=profession, given_name=name,
                                     surname="Test", created_at=dt.datetime.now(dt.UTC)))
        key: PrivateKey = (rsa.generate_private_key(65537, 2048) if key_type == "rsa"
                           else ec.generate_private_key(ec.SECP256R1()))
        sign_key = rsa.generate_private_key(65537, 2048)
        auth_cert = self.auth.issue(IssueRequest(profile="auth", public_key=key.public_key(),
                                                 rpps=rpps)).certificate
        sign_cert = self.auth.issue(IssueRequest(profile="sign",
                                                 public_key=sign_key.public_key(),
                                                 rpps=rpps)).certificate
        card = SoftCard(rpps, key, auth_cert, sign_cert, sign_key)
        self.cards[name] = card
        return card

    @property
    def certs(self) -> list[x509.Certificate]:
        return [c.auth for c in self.cards.values()] + self.extra_certs

    def add_activity(self, card: SoftCard) -> None:
        with self.auth.store.session() as session:
            pro = session.query(Professional).filter_by(rpps=card.rpps).one()
            st = session.query(Structure).filter_by(structure_id=self.structure_id).one()
            session.add(ProfessionalActivity(professional_id=pro.id, structure_id=st.id,
                                             created_at=dt.datetime.now(dt.UTC)))

    def wait_ocsp(self, serial: str, want: str, timeout: float = 15.0) -> None:
        """Until the responder's pre-signed answer for ``serial`` says ``want``."""
        import time

        from cps_login.revocation import RevocationChecker
        from pki.clock import SYSTEM_CLOCK

        checker = RevocationChecker(SYSTEM_CLOCK)
        cert = next(c for c in self.certs if c.serial_number == int(serial, 16))
        issuer = next(c.certificate for c in self.auth.issuing_cas()
                      if c.certificate.subject == cert.issuer)
        deadline = time.monotonic() + timeout
        while True:
            status = checker.status(cert, issuer).status
            if status == want:
                return
            assert time.monotonic() < deadline, f"OCSP still says {status}, not {want}"
            time.sleep(0.05)

    def publish_crls(self) -> None:
        for ca in self.auth.issuing_cas():
            self.crl.publish_full(ca)

    def post(self, path: str, body: Any = None, headers: dict[str, str] | None = None,
             form: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        """Through the real HTTP server (asyncio front, Flask in its thread pool)."""
        data = None
        hdrs = dict(headers or {})
        if form is not None:
            import urllib.parse

            data = urllib.parse.urlencode(form).encode()
            hdrs["Content-Type"] = "application/x-www-form-urlencoded"
        elif body is not None:
            data = json.dumps(body).encode()
            hdrs["Content-Type"] = "application/json"
        return http_call(self.base + path, "POST", data, hdrs)

    def get(self, path: str, headers: dict[str, str] | None = None
            ) -> tuple[int, dict[str, Any]]:
        return http_call(self.base + path, "GET", None, headers or {})


def http_call(url: str, method: str, data: bytes | None,
              headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def login_body(card_key: PrivateKey, cert: x509.Certificate, challenge_b64: str,
               broker: str, **extra: Any) -> dict[str, Any]:
    challenge = base64.b64decode(challenge_b64)
    signature = card_signature(card_key, login_message(challenge, broker))
    return {"certificate": base64.b64encode(der(cert)).decode(), "challenge": challenge_b64,
            "signature": base64.b64encode(signature).decode(), **extra}


FOREIGN_SCRIPT = r"""
import sys
from pathlib import Path
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pki.ca.authority import Authority, IssueRequest
from pki.ca.hierarchy import init_home
from tests.conftest import add_professional

out = Path(sys.argv[1])
init_home(out / "home", key_type="rsa2048")
auth = Authority.open(out / "home")
rpps = add_professional(auth, body="1000999999")
key = rsa.generate_private_key(65537, 2048)
issued = auth.issue(IssueRequest(profile="auth", public_key=key.public_key(), rpps=rpps))
(out / "cert.der").write_bytes(issued.der)
(out / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
    serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
ca = auth.issuing_ca("PERSONNES")
(out / "ca.der").write_bytes(ca.der)
auth.close()
"""


@dataclass(frozen=True)
class Foreign:
    """A card of a second home (another CA), made in a subprocess: SoftHSM is configured once
    per process (SOFTHSM2_CONF), so a second home cannot be opened beside the first."""

    key: rsa.RSAPrivateKey
    cert: x509.Certificate
    ca: x509.Certificate


@pytest.fixture(scope="session")
def foreign(tmp_path_factory: pytest.TempPathFactory) -> Foreign:
    import subprocess
    import sys

    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    out = tmp_path_factory.mktemp("foreign")
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", FOREIGN_SCRIPT, str(out)], check=True, cwd=root,
                   timeout=120)
    key = load_pem_private_key((out / "key.pem").read_bytes(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return Foreign(key, x509.load_der_x509_certificate((out / "cert.der").read_bytes()),
                   x509.load_der_x509_certificate((out / "ca.der").read_bytes()))


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    home = tmp_path_factory.mktemp("login") / "home"
    init_home(home, key_type="rsa2048", base_url=base)
    auth = Authority.open(home)
    structure_id = ids.validate_structure("FINESS", ids.luhn_complete("75000001"))
    with auth.store.session() as session:
        session.add(Structure(structure_id=structure_id, register="FINESS", name="CHU Test",
                              state="Paris (75)", created_at=dt.datetime.now(dt.UTC)))
    crl = CrlService(auth)
    crl.load()
    ocsp = OcspService(auth, poll_interval=0.1)
    lifecycle.add_listener(auth, ocsp.on_status_change)
    config = LoginConfig.from_home(home)
    app = create_app(config, auth=auth)
    running = run_server(HttpServer([OcspEndpoint(ocsp), crl.handler], app), port)
    e = Env(home, auth, base, config, app, ocsp, crl, running, structure_id=structure_id)
    for name in ("alice", "revoked", "held", "crl-good", "crl-revoked", "ecdsa"):
        e.new_card(name, key_type="ec" if name == "ecdsa" else "rsa")
    ocsp.start(wait=True, timeout=120)
    e.publish_crls()
    try:
        yield e
    finally:
        running.close()
        ocsp.stop()
        from cps_login.web import services_of

        services_of(app).close()
        auth.close()
