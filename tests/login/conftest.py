"""A real home (SoftHSM, SQLite) and the roles as separate servers: status, broker, patient.

* status: OCSP responder + CRLs (``pki.ocsp`` + ``pki.crl`` on the project's server), on the
  home's base URL, so the AIA OCSP URL and the CRL distribution points of every certificate are
  live. It runs from the officer's Authority in this process, standing in for the status role.
* broker: ``create_broker_app(config)`` — no Authority: its own token ``CPS-BROKER``, the CAs
  from the store, revocation over HTTP OCSP from the status server.
* patient: ``create_patient_app(config)`` — no token at all.

``Env.post``/``Env.get`` route by path like the front of ``cps-admin serve``. The Authority
here is the officer: it issues the "cards" (software keys with real certificates; the pcscd
tests use the software card instead), revokes, publishes; no app under test receives it.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
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
from sqlalchemy import select

from cps_login.config import LoginConfig
from cps_login.proof import login_message
from cps_login.web import create_broker_app, create_patient_app, services_of
from pki import ids
from pki.ca import lifecycle
from pki.ca.authority import Authority, IssueRequest
from pki.ca.hierarchy import init_home
from pki.crl.service import CrlService
from pki.http.server import HttpServer
from pki.ocsp.endpoint import OcspEndpoint
from pki.ocsp.service import OcspService
from pki.store.models import AuditRecord, Professional, Structure
from pki.store.patient_models import ProfessionalActivity
from tests.servers import Running, free_port, run_server

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


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


PATIENT_PREFIXES = ("/patient", "/espace")


@dataclass
class Env:
    home: Path
    auth: Authority             # the officer: issues, revokes, publishes (never in an app)
    base: str                   # the status server = the home's base URL and token issuer
    config: LoginConfig
    broker_app: Flask
    patient_app: Flask
    ocsp: OcspService
    crl: CrlService
    running: Running            # status
    broker: Running
    patient: Running
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
        # Stand-ins for a card's keys: certified as card keys (product category 0), as
        # `card issue` does, so that logins get the card level (test_hardening: a real one).
        auth_cert = self.auth.issue(IssueRequest(profile="auth", public_key=key.public_key(),
                                                 rpps=rpps, key_storage="card")).certificate
        sign_cert = self.auth.issue(IssueRequest(profile="sign",
                                                 public_key=sign_key.public_key(),
                                                 rpps=rpps, key_storage="card")).certificate
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

    def url(self, path: str) -> str:
        """The server that answers ``path``: patient paths to the patient app, the rest to the
        broker (the status server's own paths are fetched by the broker, not by tests)."""
        role = self.patient if path.startswith(PATIENT_PREFIXES) else self.broker
        return f"http://127.0.0.1:{role.port}{path}"

    def stop_status(self) -> None:
        self.running.close()

    def start_status(self) -> None:
        port = int(self.base.rsplit(":", 1)[1])
        front = one_address(self.broker_app, self.patient_app)
        self.running = run_server(status_server(self.ocsp, self.crl, front), port)

    def post(self, path: str, body: Any = None, headers: dict[str, str] | None = None,
             form: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        """Through the real HTTP server of the role (asyncio front, Flask in its pool)."""
        data = None
        hdrs = dict(headers or {})
        if form is not None:
            import urllib.parse

            data = urllib.parse.urlencode(form).encode()
            hdrs["Content-Type"] = "application/x-www-form-urlencoded"
        elif body is not None:
            data = json.dumps(body).encode()
            hdrs["Content-Type"] = "application/json"
        return http_call(self.url(path), "POST", data, hdrs)

    def get(self, path: str, headers: dict[str, str] | None = None
            ) -> tuple[int, dict[str, Any]]:
        return http_call(self.url(path), "GET", None, headers or {})


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


def last_login_audit(env: Env) -> dict[str, Any]:
    """The newest ``login.*`` audit record: action, target and its details."""
    with env.auth.store.read() as session:
        rec = session.execute(select(AuditRecord).where(AuditRecord.action.like("login.%"))
                              .order_by(AuditRecord.seq.desc()).limit(1)).scalar_one()
        return {"action": rec.action, "target": rec.target, **json.loads(rec.details)}


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


def status_server(ocsp: OcspService, crl: CrlService, front: Any = None) -> HttpServer:
    return HttpServer([OcspEndpoint(ocsp), crl.handler], front)


def one_address(broker_app: Flask, patient_app: Flask) -> Any:
    """Both apps behind the status server's address, routed by path like the front of
    ``cps-admin serve``: for clients given one URL (``cps-login --broker``, the browser)."""
    def front(environ: dict[str, Any], start_response: Any) -> Any:
        app = patient_app if environ.get("PATH_INFO", "").startswith(PATIENT_PREFIXES) \
            else broker_app
        return app(environ, start_response)

    return front


def ensure_broker_token(home: Path) -> None:
    """The empty broker token, for a home made by an ``init`` that does not create it yet."""
    from pki.ca import softhsm
    from pki.config import Config, new_pin, write_private

    config = Config.load(home)
    h = config.hsm
    if config.path(h.broker_pin_file).exists():
        return
    conf = config.softhsm_conf_path()
    assert conf is not None
    write_private(config.path(h.broker_pin_file), new_pin() + "\n")
    write_private(config.path(h.broker_so_pin_file), new_pin() + "\n")
    softhsm.init_token(h.module, conf, h.broker_token_label, config.path(h.broker_so_pin_file),
                       config.path(h.broker_pin_file))


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    home = tmp_path_factory.mktemp("login") / "home"
    init_home(home, key_type="rsa2048", base_url=base)
    ensure_broker_token(home)
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
    broker_app = create_broker_app(config)
    patient_app = create_patient_app(config)
    running = run_server(status_server(ocsp, crl, one_address(broker_app, patient_app)), port)
    broker = run_server(HttpServer([], broker_app))
    patient = run_server(HttpServer([], patient_app))
    e = Env(home, auth, base, config, broker_app, patient_app, ocsp, crl, running, broker,
            patient, structure_id=structure_id)
    for name in ("alice", "revoked", "held", "crl-good", "crl-revoked", "ecdsa"):
        e.new_card(name, key_type="ec" if name == "ecdsa" else "rsa")
    ocsp.start(wait=True, timeout=120)
    e.publish_crls()
    try:
        yield e
    finally:
        for server in (e.patient, e.broker, e.running):
            server.close()
        ocsp.stop()
        services_of(patient_app).close()
        services_of(broker_app).close()
        auth.close()
