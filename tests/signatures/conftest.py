"""A real home (SoftHSM CA, SQLite), its status server (OCSP, CRLs, CA certificates) on the
home's base URL so that the AIA and CRL URLs of every certificate are live, a test TSA on the
same server (``POST /tsa``), and software cards that implement the ``Card`` protocol.

The TSA here is pyHanko's ``DummyTimeStamper`` with a certificate from our ORGANISATIONS CA
(``id-kp-timeStamping`` critical), made with the CA's HSM key by the test (the tsa role and its
own token are another piece of work); the verifier trusts it because it chains to our root.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from asn1crypto import keys as asn1_keys
from asn1crypto import tsp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pki import ids
from pki.ca import lifecycle
from pki.ca.authority import Authority, IssueRequest
from pki.ca.hierarchy import init_home
from pki.cards.card import HolderData, Usage, check_pin
from pki.cards.errors import PinIncorrect, PinLocked, SecurityStatusNotSatisfied
from pki.clock import SYSTEM_CLOCK, FixedClock
from pki.crl.service import CrlService
from pki.http import Request, Response
from pki.http.server import HttpServer
from pki.ocsp.endpoint import OcspEndpoint
from pki.ocsp.service import OcspService
from pki.store.models import Professional
from tests.servers import Running, free_port, run_server

PIN = "1234"


class SoftCard:
    """A card in software: two keys, their certificates, one PIN with 3 tries (``Card``)."""

    def __init__(self, holder: HolderData, keys: dict[Usage, rsa.RSAPrivateKey],
                 certs: dict[Usage, x509.Certificate]) -> None:
        self._holder = holder
        self.keys = keys
        self.certs = certs
        self.tries = 3
        self.verified = False
        self.signatures: list[Usage] = []

    def holder(self) -> HolderData:
        return self._holder

    def certificate(self, usage: Usage) -> x509.Certificate:
        return self.certs[usage]

    def pin_tries_left(self) -> int | None:
        return self.tries

    def verify_pin(self, pin: str) -> None:
        check_pin(pin)
        if self.tries == 0:
            raise PinLocked()
        if pin != PIN:
            self.tries -= 1
            self.verified = False
            if self.tries == 0:
                raise PinLocked()
            raise PinIncorrect(self.tries)
        self.tries = 3
        self.verified = True

    def change_pin(self, old_pin: str, new_pin: str) -> None:
        raise NotImplementedError

    def unblock_pin(self, puk: str, new_pin: str) -> None:
        raise NotImplementedError

    def sign(self, usage: Usage, data: bytes) -> bytes:
        if not self.verified:
            raise SecurityStatusNotSatisfied("verify the PIN first")
        self.verified = usage != "sign"     # the signature PIN is per operation
        self.signatures.append(usage)
        return self.keys[usage].sign(data, padding.PKCS1v15(), hashes.SHA256())

    def close(self) -> None:
        self.verified = False


class TestTsa:
    """pyHanko's DummyTimeStamper behind ``POST /tsa`` with a certificate of our CA."""

    def __init__(self, cert: x509.Certificate, key: rsa.RSAPrivateKey,
                 chain: list[x509.Certificate]) -> None:
        from asn1crypto import x509 as asn1_x509
        from pyhanko.sign.timestamps.dummy_client import DummyTimeStamper

        der = serialization.Encoding.DER
        self.cert = cert
        self.stamper = DummyTimeStamper(
            tsa_cert=asn1_x509.Certificate.load(cert.public_bytes(der)),
            tsa_key=asn1_keys.PrivateKeyInfo.load(key.private_bytes(
                der, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())),
            certs_to_embed=[asn1_x509.Certificate.load(c.public_bytes(der)) for c in chain])
        self.requests = 0

    def handler(self, req: Request) -> Response | None:
        if req.path != "/tsa":
            return None
        self.requests += 1
        try:
            query = tsp.TimeStampReq.load(req.body)
            answer = self.stamper.request_tsa_response(query)
        except ValueError:
            return Response(400, b"bad time-stamp query")
        return Response(200, answer.dump(), "application/timestamp-reply")


@dataclass
class SignEnv:
    home: Path
    auth: Authority
    base: str
    ocsp: OcspService
    crl: CrlService
    running: Running
    tsa: TestTsa
    root: x509.Certificate
    issuing: x509.Certificate
    _counter: int = 200
    cards: dict[str, SoftCard] = field(default_factory=dict)

    @property
    def chain(self) -> list[x509.Certificate]:
        return [self.issuing, self.root]

    @property
    def tsa_url(self) -> str:
        return self.base + "/tsa"

    def new_card(self, name: str, *, issued_at: dt.datetime | None = None) -> SoftCard:
        """A card of a new professional; ``issued_at`` back-dates the CA's clock."""
        self._counter += 1
        rpps = ids.luhn_complete(f"10{self._counter:08d}")
        issuer = self.auth
        with self.auth.store.session() as session:
            session.add(Professional(rpps=rpps, profession_code=10, given_name=name.title(),
                                     surname="Test", created_at=dt.datetime.now(dt.UTC)))
        if issued_at is not None:
            issuer.clock = FixedClock(issued_at)
        keys: dict[Usage, rsa.RSAPrivateKey] = {u: rsa.generate_private_key(65537, 2048)
                                                for u in ("auth", "sign")}
        certs = {u: issuer.issue(IssueRequest(profile=u, public_key=keys[u].public_key(),
                                              rpps=rpps, key_storage="card")).certificate
                 for u in ("auth", "sign")}
        issuer.clock = SYSTEM_CLOCK
        card = SoftCard(HolderData(rpps, name.title(), "Test", 10), keys, certs)
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


def tsa_certificate(auth: Authority, key: rsa.RSAPrivateKey) -> x509.Certificate:
    """A time-stamping certificate from the ORGANISATIONS CA (critical id-kp-timeStamping)."""
    ca = auth.issuing_ca("ORGANISATIONS")
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ASIP-SANTE"),
                      x509.NameAttribute(NameOID.COMMON_NAME, "TEST TSA IGC-SANTE")])
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(ca.certificate.subject)
               .public_key(key.public_key())
               .serial_number(int.from_bytes(secrets.token_bytes(16), "big") >> 1)
               .not_valid_before(now - dt.timedelta(days=1))
               .not_valid_after(now + dt.timedelta(days=10 * 366))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(True, True, False, False, False, False, False,
                                            False, False), critical=True)
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.TIME_STAMPING]),
                              critical=True)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   ca.certificate.public_key()), critical=False)  # type: ignore[arg-type]
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                              critical=False))
    return builder.sign(auth._key(ca), hashes.SHA256())


@pytest.fixture(scope="module")
def sign_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SignEnv]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    home = tmp_path_factory.mktemp("sign") / "home"
    init_home(home, key_type="rsa2048", base_url=base)
    auth = Authority.open(home)
    crl = CrlService(auth)
    crl.load()
    ocsp = OcspService(auth, poll_interval=0.1)
    lifecycle.add_listener(auth, ocsp.on_status_change)
    tsa_key = rsa.generate_private_key(65537, 2048)
    org = auth.issuing_ca("ORGANISATIONS").certificate
    root = next(c.certificate for c in auth.cas() if c.role == "ROOT")
    tsa = TestTsa(tsa_certificate(auth, tsa_key), tsa_key, [org])
    running = run_server(HttpServer([OcspEndpoint(ocsp), crl.handler, tsa.handler]), port)
    issuing = auth.issuing_ca("PERSONNES").certificate
    env = SignEnv(home, auth, base, ocsp, crl, running, tsa, root, issuing)
    for name in ("alice", "bob", "compromised", "later", "held"):
        env.new_card(name)
    env.new_card("expired")     # judged by a verifier whose clock is 4 years ahead
    ocsp.start(wait=True, timeout=120)
    for ca in auth.issuing_cas():
        crl.publish_full(ca)
    try:
        yield env
    finally:
        running.close()
        ocsp.stop()
        auth.close()


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


__all__ = ["PIN", "SignEnv", "SoftCard", "ec"]
