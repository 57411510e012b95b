"""A real home (SoftHSM CA, SQLite), its status server (OCSP, CRLs, CA certificates) on the
home's base URL so that the AIA and CRL URLs of every certificate are live, the home's time-
stamping authority (``cps-admin tsa cert`` ceremony, then ``cps-admin serve --role tsa`` as its
own process: ``SignEnv.tsa_url``), and software cards that implement the ``Card`` protocol.

``SignEnv.tsa`` is a second, local TSA (``cps_sign.testing.LocalTsa``: pyHanko's
DummyTimeStamper with a certificate from our ORGANISATIONS CA, ``id-kp-timeStamping``
critical) for the one test that needs a time stamp from the future (an expired certificate).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from cps_sign.testing import LocalTsa, SoftwareCard, tsa_certificate
from pki import ids
from pki.ca import lifecycle
from pki.ca.authority import Authority, IssueRequest
from pki.ca.hierarchy import init_home
from pki.cards.card import HolderData, Usage
from pki.clock import SYSTEM_CLOCK
from pki.crl.service import CrlService
from pki.http.server import HttpServer
from pki.ocsp.endpoint import OcspEndpoint
from pki.ocsp.service import OcspService
from pki.store.models import Professional
from tests.servers import Running, free_port, run_server
from tests.tsa.helpers import provision_tsa, running_tsa

PIN = "1234"
SoftCard = SoftwareCard


@dataclass
class SignEnv:
    home: Path
    auth: Authority
    base: str
    ocsp: OcspService
    crl: CrlService
    running: Running
    tsa: LocalTsa
    root: x509.Certificate
    issuing: x509.Certificate
    tsa_url: str = ""           # the tsa role (cps-admin serve --role tsa) of this home
    _counter: int = 200
    cards: dict[str, SoftCard] = field(default_factory=dict)

    @property
    def chain(self) -> list[x509.Certificate]:
        return [self.issuing, self.root]

    def new_card(self, name: str) -> SoftCard:
        """A card of a new professional (software keys, certificates from the home's CA)."""
        self._counter += 1
        rpps = ids.luhn_complete(f"10{self._counter:08d}")
        issuer = self.auth
        with self.auth.store.session() as session:
            session.add(Professional(rpps=rpps, profession_code=10, given_name=name.title(),
                                     surname="Test", created_at=dt.datetime.now(dt.UTC)))
        keys: dict[Usage, rsa.RSAPrivateKey] = {u: rsa.generate_private_key(65537, 2048)
                                                for u in ("auth", "sign")}
        certs = {u: issuer.issue(IssueRequest(profile=u, public_key=keys[u].public_key(),
                                              rpps=rpps, key_storage="card")).certificate
                 for u in ("auth", "sign")}
        card = SoftwareCard(HolderData(rpps, name.title(), "Test", 10), keys, certs, PIN)
        self.cards[name] = card
        return card

    def revoke(self, card: SoftCard, reason: str,
               invalidity: dt.datetime | None = None) -> None:
        serial = f"{card.certs['sign'].serial_number:X}"
        lifecycle.revoke(self.auth, serial, reason, invalidity_date=invalidity)
        for ca in self.auth.issuing_cas():
            self.crl.publish_full(ca)

    def wait_status(self, card: SoftCard, want: str, timeout: float = 15.0) -> None:
        import time

        from cps_login.revocation import RevocationChecker

        checker = RevocationChecker(SYSTEM_CLOCK)
        deadline = time.monotonic() + timeout
        while checker.status(card.certs["sign"], self.issuing).status != want:
            assert time.monotonic() < deadline, f"OCSP never said {want}"
            time.sleep(0.05)


@pytest.fixture(scope="module")
def sign_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SignEnv]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    home = tmp_path_factory.mktemp("sign") / "home"
    init_home(home, key_type="rsa2048", base_url=base)
    provision_tsa(home)         # the `cps-admin tsa cert` ceremony: key in CPS-TSA, certificate
    auth = Authority.open(home)
    crl = CrlService(auth)
    crl.load()
    ocsp = OcspService(auth, poll_interval=0.1)
    lifecycle.add_listener(auth, ocsp.on_status_change)
    tsa_key = rsa.generate_private_key(65537, 2048)
    org = auth.issuing_ca("ORGANISATIONS").certificate
    root = next(c.certificate for c in auth.cas() if c.role == "ROOT")
    org_ca = auth.issuing_ca("ORGANISATIONS")
    tsa = LocalTsa(tsa_certificate(org_ca.certificate, auth._key(org_ca), tsa_key), tsa_key,
                   [org])
    running = run_server(HttpServer([OcspEndpoint(ocsp), crl.handler, tsa.handler]), port)
    tsa_role = running_tsa(home)
    issuing = auth.issuing_ca("PERSONNES").certificate
    env = SignEnv(home, auth, base, ocsp, crl, running, tsa, root, issuing,
                  tsa_url=tsa_role.__enter__().url)
    for name in ("alice", "bob", "compromised", "later", "held"):
        env.new_card(name)
    env.new_card("expired")     # judged by a verifier whose clock is 4 years ahead
    ocsp.start(wait=True, timeout=120)
    for ca in auth.issuing_cas():
        crl.publish_full(ca)
    try:
        yield env
    finally:
        tsa_role.__exit__(None, None, None)
        running.close()
        ocsp.stop()
        auth.close()

