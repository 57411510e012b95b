"""The revocation of the certificates above the signer's. The TSA's: from the OCSP response a
B-LT signature embeds for it (a TSA revoked before its time stamp: INDETERMINATE/NO_POE). The
issuing CA's: the verifier asks the root's CRL (the CA certificate's CRL distribution point)
when the status tier is used, and reports INDETERMINATE/REVOKED_CA_NO_POE (EN 319 102-1) for a
CA revoked before the signature, or since, when no time stamp proves the signature came first.
A self-contained hierarchy (cryptography), the CRL served by a stub fetcher, the signatures
made by pyHanko through ``sign_cades``."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from cps_login.httpfetch import FetchError
from cps_login.revocation import RevocationStatus
from cps_sign import report as r
from cps_sign.card_signer import CardSigner
from cps_sign.revocation import LiveRevocation
from cps_sign.signing import sign_cades
from cps_sign.testing import SoftwareCard
from cps_sign.verify import Verifier
from pki.cards.card import HolderData

POLICY = "1.2.250.1.213.1.7.1.1.1.4.1"
CRL_URL = "http://status.test/crl/root.crl"
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ca(subject: str, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
        issuer: x509.Certificate | None, issuer_key: ec.EllipticCurvePrivateKey
        ) -> x509.Certificate:
    builder = (x509.CertificateBuilder().subject_name(_name(subject))
               .issuer_name(issuer.subject if issuer else _name(subject))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(NOW - dt.timedelta(days=30))
               .not_valid_after(NOW + dt.timedelta(days=3650))
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(False, False, False, False, False, True, True,
                                            False, False), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                              critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   issuer_key.public_key()), critical=False))
    if issuer is not None:
        builder = builder.add_extension(x509.CRLDistributionPoints([x509.DistributionPoint(
            [x509.UniformResourceIdentifier(CRL_URL)], None, None, None)]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@dataclass
class Stub:
    """The status tier: OCSP says the card is good; the root's CRL is ``crl`` (or absent)."""

    crl: bytes | None = None
    gets: list[str] = field(default_factory=list)

    def status(self, cert: x509.Certificate, issuer: x509.Certificate) -> RevocationStatus:
        return RevocationStatus("good", "ocsp")

    def get(self, url: str, timeout: float) -> bytes:
        self.gets.append(url)
        if url != CRL_URL or self.crl is None:
            raise FetchError(f"{url}: 404")
        return self.crl

    def post(self, url: str, body: bytes, content_type: str, timeout: float) -> bytes:
        raise FetchError("no OCSP here")


@pytest.fixture(scope="module")
def hierarchy() -> dict[str, object]:
    root_key = ec.generate_private_key(ec.SECP256R1())
    ca_key = rsa.generate_private_key(65537, 2048)      # tsa_certificate wants an RSA CA
    root = _ca("Test Root", root_key, None, root_key)
    ca = _ca("Test CA", ca_key, root, root_key)
    sign_key = rsa.generate_private_key(65537, 2048)
    leaf = (x509.CertificateBuilder().subject_name(_name("810000000012"))
            .issuer_name(ca.subject).public_key(sign_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - dt.timedelta(days=1))
            .not_valid_after(NOW + dt.timedelta(days=365))
            .add_extension(x509.KeyUsage(False, True, False, False, False, False, False,
                                         False, False), critical=True)
            .add_extension(x509.CertificatePolicies([x509.PolicyInformation(
                x509.ObjectIdentifier(POLICY), None)]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    card = SoftwareCard(HolderData("10000000001", "Alice", "Test", 10),
                        {"sign": sign_key, "auth": sign_key}, {"sign": leaf, "auth": leaf})
    signature = sign_cades(b"care claim\n", CardSigner(card, "1234"), level="B-B")
    return {"root": root, "root_key": root_key, "ca": ca, "ca_key": ca_key, "card": card,
            "signature": signature}


def _root_crl(h: dict[str, object], revoked_at: dt.datetime | None) -> bytes:
    root, key, ca = h["root"], h["root_key"], h["ca"]
    assert isinstance(root, x509.Certificate) and isinstance(ca, x509.Certificate)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    builder = (x509.CertificateRevocationListBuilder().issuer_name(root.subject)
               .last_update(NOW - dt.timedelta(hours=1))
               .next_update(NOW + dt.timedelta(days=90)))
    if revoked_at is not None:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(ca.serial_number)
            .revocation_date(revoked_at).add_extension(
                x509.CRLReason(x509.ReasonFlags.key_compromise), critical=False).build())
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def _verify(h: dict[str, object], stub: Stub) -> r.Report:
    root, ca, signature = h["root"], h["ca"], h["signature"]
    assert isinstance(root, x509.Certificate) and isinstance(ca, x509.Certificate)
    assert isinstance(signature, bytes)
    verifier = Verifier([root], [ca], [POLICY], live=LiveRevocation(
        checker=stub, fetcher=stub))  # type: ignore[arg-type]
    return verifier.verify_cades(b"care claim\n", signature)


def test_issuing_ca_good_in_the_root_crl(hierarchy: dict[str, object]) -> None:
    stub = Stub(_root_crl(hierarchy, None))
    report = _verify(hierarchy, stub)
    assert report.indication == r.TOTAL_PASSED, report
    assert report.revocation is not None and "issuing CA good (root CRL)" in report.revocation
    assert stub.gets == [CRL_URL]


def test_issuing_ca_revoked_before_the_signature(hierarchy: dict[str, object]) -> None:
    report = _verify(hierarchy, Stub(_root_crl(hierarchy, NOW - dt.timedelta(days=2))))
    assert (report.indication, report.sub_indication) == (r.INDETERMINATE,
                                                          r.REVOKED_CA_NO_POE), report
    assert "keyCompromise" in report.detail


def test_issuing_ca_revoked_after_a_claimed_time(hierarchy: dict[str, object]) -> None:
    """B-B: a claimed signing time proves nothing; a CA revoked since is not placed after."""
    report = _verify(hierarchy, Stub(_root_crl(hierarchy, NOW + dt.timedelta(minutes=5))))
    assert (report.indication, report.sub_indication) == (r.INDETERMINATE,
                                                          r.REVOKED_CA_NO_POE), report


def test_no_root_crl_is_said_not_refused(hierarchy: dict[str, object]) -> None:
    report = _verify(hierarchy, Stub(None))
    assert report.indication == r.TOTAL_PASSED, report
    assert report.revocation is not None and "issuing CA: no root CRL" in report.revocation


def test_a_crl_not_signed_by_the_root_is_ignored(hierarchy: dict[str, object]) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    root = hierarchy["root"]
    assert isinstance(root, x509.Certificate)
    forged = (x509.CertificateRevocationListBuilder().issuer_name(root.subject)
              .last_update(NOW).next_update(NOW + dt.timedelta(days=1))
              .sign(other, hashes.SHA256()).public_bytes(serialization.Encoding.DER))
    report = _verify(hierarchy, Stub(forged))
    assert report.revocation is not None and "no root CRL" in report.revocation


def _ocsp(cert: x509.Certificate, ca: x509.Certificate, ca_key: rsa.RSAPrivateKey,
          revoked_at: dt.datetime | None) -> bytes:
    from cryptography.x509 import ocsp

    builder = ocsp.OCSPResponseBuilder().add_response(
        cert=cert, issuer=ca, algorithm=hashes.SHA1(),
        cert_status=ocsp.OCSPCertStatus.REVOKED if revoked_at else ocsp.OCSPCertStatus.GOOD,
        this_update=NOW - dt.timedelta(minutes=1), next_update=NOW + dt.timedelta(days=1),
        revocation_time=revoked_at,
        revocation_reason=x509.ReasonFlags.key_compromise if revoked_at else None,
    ).responder_id(ocsp.OCSPResponderEncoding.HASH, ca)
    return builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


@pytest.mark.parametrize("tsa_revoked", [None, NOW - dt.timedelta(days=1)])
def test_b_lt_tsa_certificate_status_from_what_it_embeds(hierarchy: dict[str, object],
                                                         tsa_revoked: dt.datetime | None
                                                         ) -> None:
    """Offline: the TSA's embedded OCSP response is read; a TSA certificate revoked before the
    time stamp leaves the signature without proof of time (INDETERMINATE/NO_POE)."""
    from cps_sign.testing import LocalTsa, tsa_certificate

    root, ca, ca_key, card = (hierarchy[k] for k in ("root", "ca", "ca_key", "card"))
    assert isinstance(root, x509.Certificate) and isinstance(ca, x509.Certificate)
    assert isinstance(ca_key, rsa.RSAPrivateKey) and isinstance(card, SoftwareCard)
    tsa_key = rsa.generate_private_key(65537, 2048)
    tsa = LocalTsa(tsa_certificate(ca, ca_key, tsa_key), tsa_key, [ca])
    leaf = card.certs["sign"]
    signature = sign_cades(
        b"care claim\n", CardSigner(card, "1234"), level="B-LT", timestamper=tsa.stamper,
        chain=[ca, root], ocsp_for=lambda: _ocsp(leaf, ca, ca_key, None),
        tsa_ocsp_for=lambda cert, _: _ocsp(cert, ca, ca_key, tsa_revoked))
    report = Verifier([root], [ca], [POLICY]).verify_cades(b"care claim\n", signature)
    if tsa_revoked is None:
        assert report.indication == r.TOTAL_PASSED, report
        assert report.revocation is not None
        assert "TSA good (embedded OCSP)" in report.revocation
    else:
        assert (report.indication, report.sub_indication) == (r.INDETERMINATE, r.NO_POE)
        assert "TSA certificate is revoked" in report.detail, report
