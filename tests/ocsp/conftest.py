"""An OCSP responder on a real home (SoftHSM, SQLite), served by pki.http.server in a thread."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from pki import ids
from pki.ca.authority import Authority, IssueRequest
from pki.ca.hierarchy import init_home
from pki.http.server import HttpServer
from pki.ocsp.endpoint import OcspEndpoint
from pki.ocsp.service import OcspService
from pki.store.models import Professional
from tests.servers import Running, run_server


@dataclass
class Env:
    home: Path
    auth: Authority
    service: OcspService
    endpoint: OcspEndpoint
    running: Running
    ca_pem: Path
    chain_pem: Path
    certs: dict[str, Path] = field(default_factory=dict)     # name -> PEM file
    serials: dict[str, str] = field(default_factory=dict)    # name -> hex serial
    tmp: Path = Path()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.running.port}/ocsp"

    def issue(self, name: str, body: str) -> str:
        rpps = add_professional(self.auth, body=body, given=name.capitalize())
        key = ec.generate_private_key(ec.SECP256R1())
        issued = self.auth.issue(IssueRequest(profile="auth", public_key=key.public_key(),
                                              rpps=rpps))
        path = self.tmp / f"{name}.pem"
        path.write_bytes(issued.pem)
        self.certs[name] = path
        self.serials[name] = issued.serial
        return issued.serial

    def openssl(self, name: str, *extra: str, url: str | None = None) -> str:
        cmd = ["openssl", "ocsp", "-issuer", str(self.ca_pem), "-cert", str(self.certs[name]),
               "-url", url or self.url, "-CAfile", str(self.chain_pem), "-timeout", "10",
               *extra]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        return proc.stdout + proc.stderr


def add_professional(auth: Authority, body: str, given: str) -> str:
    import datetime as dt
    rpps = ids.luhn_complete(body)
    with auth.store.session() as session:
        session.add(Professional(rpps=rpps, profession_code=10, given_name=given,
                                 surname="Test", created_at=dt.datetime.now(dt.UTC)))
    return rpps


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("ocsp")
    home = tmp / "home"
    init_home(home, key_type="rsa2048")
    auth = Authority.open(home)
    personnes = next(c for c in auth.issuing_cas() if c.role == "PERSONNES")
    ca_pem = tmp / "ca.pem"
    ca_pem.write_bytes(_pem(personnes.certificate))
    chain_pem = tmp / "chain.pem"
    chain_pem.write_bytes(b"".join(_pem(c.certificate) for c in auth.chain(personnes.slug)))
    service = OcspService(auth, poll_interval=0.1)
    endpoint = OcspEndpoint(service)
    running = run_server(HttpServer([endpoint], readiness=[service.ready.is_set],
                                    metrics=[endpoint.metrics_text]))
    e = Env(home, auth, service, endpoint, running, ca_pem, chain_pem, tmp=tmp)
    e.issue("good", "1000000001")
    e.issue("revoked", "1000000002")
    e.issue("held", "1000000003")
    e.issue("spare", "1000000004")
    from pki.ca import lifecycle
    lifecycle.revoke(auth, e.serials["revoked"], "keyCompromise")
    lifecycle.hold(auth, e.serials["held"])
    service.start(wait=True, timeout=120)
    lifecycle.add_listener(auth, service.on_status_change)
    try:
        yield e
    finally:
        running.close()
        service.stop()
        auth.close()
