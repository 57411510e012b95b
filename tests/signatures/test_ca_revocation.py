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
from pathlib import Path

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


def _b_lt(h: dict[str, object], tsa_ca: x509.Certificate | None = None,
          tsa_ca_key: rsa.RSAPrivateKey | None = None,
          tsa_revoked: dt.datetime | None = None) -> bytes:
    """A B-LT signature of the hierarchy's card: time-stamped by a TSA certified by
    ``tsa_ca`` (default: the card's own CA), the signer's OCSP response (good) and the TSA's
    (revoked at ``tsa_revoked``, else good) embedded."""
    from cps_sign.testing import LocalTsa, tsa_certificate

    root, ca, ca_key, card = (h[k] for k in ("root", "ca", "ca_key", "card"))
    assert isinstance(root, x509.Certificate) and isinstance(ca, x509.Certificate)
    assert isinstance(ca_key, rsa.RSAPrivateKey) and isinstance(card, SoftwareCard)
    issuer, issuer_key = (tsa_ca, tsa_ca_key) if tsa_ca and tsa_ca_key else (ca, ca_key)
    tsa_key = rsa.generate_private_key(65537, 2048)
    tsa = LocalTsa(tsa_certificate(issuer, issuer_key, tsa_key), tsa_key, [issuer])
    leaf = card.certs["sign"]
    return sign_cades(
        b"care claim\n", CardSigner(card, "1234"), level="B-LT", timestamper=tsa.stamper,
        chain=[ca, root], ocsp_for=lambda: _ocsp(leaf, ca, ca_key, None),
        tsa_ocsp_for=lambda cert, _: _ocsp(cert, issuer, issuer_key, tsa_revoked))


@pytest.mark.parametrize("tsa_revoked", [None, NOW - dt.timedelta(days=1)])
def test_b_lt_tsa_certificate_status_from_what_it_embeds(hierarchy: dict[str, object],
                                                         tsa_revoked: dt.datetime | None
                                                         ) -> None:
    """Offline: the TSA's embedded OCSP response is read; a TSA certificate revoked before the
    time stamp leaves the signature without proof of time (INDETERMINATE/NO_POE)."""
    root, ca = hierarchy["root"], hierarchy["ca"]
    assert isinstance(root, x509.Certificate) and isinstance(ca, x509.Certificate)
    signature = _b_lt(hierarchy, tsa_revoked=tsa_revoked)
    report = Verifier([root], [ca], [POLICY]).verify_cades(b"care claim\n", signature)
    if tsa_revoked is None:
        assert report.indication == r.TOTAL_PASSED, report
        assert report.revocation is not None
        assert "TSA good (embedded OCSP)" in report.revocation
    else:
        assert (report.indication, report.sub_indication) == (r.INDETERMINATE, r.NO_POE)
        assert "TSA certificate is revoked" in report.detail, report


@pytest.fixture(scope="module")
def b_lt(hierarchy: dict[str, object]) -> bytes:
    """A B-LT signature (time stamp, the signer's and the TSA's OCSP responses embedded): what
    an offline verifier can judge on its own."""
    return _b_lt(hierarchy)


def _offline(h: dict[str, object], crls: list[bytes] | None) -> Verifier:
    from cps_sign.revocation import RootCrls

    root, ca = h["root"], h["ca"]
    assert isinstance(root, x509.Certificate) and isinstance(ca, x509.Certificate)
    files = None if crls is None else RootCrls([x509.load_der_x509_crl(c) for c in crls])
    return Verifier([root], [ca], [POLICY], root_crls=files)


def test_offline_the_issuing_ca_from_a_root_crl_file(hierarchy: dict[str, object],
                                                     b_lt: bytes) -> None:
    """``--root-crl``: the issuing CA's status without the network; without it the report
    says the CA was not checked rather than nothing."""
    plain = _offline(hierarchy, None).verify_cades(b"care claim\n", b_lt)
    assert plain.indication == r.TOTAL_PASSED, plain
    assert plain.revocation is not None and "issuing CA not checked (offline" in plain.revocation
    good = _offline(hierarchy, [_root_crl(hierarchy, None)]).verify_cades(b"care claim\n", b_lt)
    assert good.indication == r.TOTAL_PASSED, good
    assert good.revocation is not None and "issuing CA good (root CRL file)" in good.revocation
    revoked = _offline(hierarchy, [_root_crl(hierarchy, NOW - dt.timedelta(days=2))])
    report = revoked.verify_cades(b"care claim\n", b_lt)
    assert (report.indication, report.sub_indication) == (r.INDETERMINATE,
                                                          r.REVOKED_CA_NO_POE), report
    # revoked after the time stamp: the time stamp proves the signature came first (a day
    # after NOW, which is this module's import time: the test may run many minutes later)
    later = _offline(hierarchy, [_root_crl(hierarchy, NOW + dt.timedelta(days=1))])
    report = later.verify_cades(b"care claim\n", b_lt)
    assert report.indication == r.TOTAL_PASSED, report
    assert report.revocation is not None and "after the signing time" in report.revocation


def test_cps_verify_root_crl_option(hierarchy: dict[str, object], b_lt: bytes,
                                    tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    root, ca, root_key = hierarchy["root"], hierarchy["ca"], hierarchy["root_key"]
    assert isinstance(root, x509.Certificate) and isinstance(ca, x509.Certificate)
    assert isinstance(root_key, ec.EllipticCurvePrivateKey)
    (tmp_path / "claim.txt").write_bytes(b"care claim\n")
    (tmp_path / "claim.txt.p7s").write_bytes(b_lt)
    pem = tmp_path / "trust.pem"
    pem.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (root, ca)))
    good = x509.load_der_x509_crl(_root_crl(hierarchy, None))
    (tmp_path / "good.pem").write_bytes(good.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "revoked.crl").write_bytes(_root_crl(hierarchy, NOW - dt.timedelta(days=2)))
    other = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "forged.crl").write_bytes(
        x509.CertificateRevocationListBuilder().issuer_name(root.subject).last_update(NOW)
        .next_update(NOW + dt.timedelta(days=1)).sign(other, hashes.SHA256())
        .public_bytes(serialization.Encoding.DER))
    (tmp_path / "stale.crl").write_bytes(
        x509.CertificateRevocationListBuilder().issuer_name(root.subject)
        .last_update(NOW - dt.timedelta(days=100)).next_update(NOW - dt.timedelta(days=10))
        .sign(root_key, hashes.SHA256()).public_bytes(serialization.Encoding.DER))
    (tmp_path / "junk.crl").write_bytes(b"\x30\x03\x02\x01\x01")
    verify = str(Path(sys.executable).with_name("cps-verify"))

    def run(*crl: str) -> subprocess.CompletedProcess[str]:
        args = [verify, str(tmp_path / "claim.txt"), "--trust", str(pem), "--policy", POLICY,
                "--offline", "--json"]
        for name in crl:
            args += ["--root-crl", str(tmp_path / name)]
        return subprocess.run(args, capture_output=True, text=True, timeout=120)

    proc = run("good.pem")
    assert proc.returncode == 0, proc.stderr
    assert "issuing CA good (root CRL file)" in json.loads(proc.stdout)["revocation"]
    proc = run("revoked.crl")
    assert proc.returncode == 1, proc.stderr
    assert json.loads(proc.stdout)["sub_indication"] == "REVOKED_CA_NO_POE"
    for name, says in (("forged.crl", "not a CRL signed by a trusted root"),
                       ("stale.crl", "out of date"), ("junk.crl", "no PEM or DER CRL"),
                       ("missing.crl", "cannot read")):
        proc = run(name)
        assert proc.returncode == 2 and proc.stdout == "", (name, proc.stdout, proc.stderr)
        assert proc.stderr.startswith("error: ") and says in proc.stderr, (name, proc.stderr)
        assert proc.stderr.count("\n") == 1


@pytest.mark.parametrize("ca_revoked", [NOW - dt.timedelta(days=2),
                                        NOW + dt.timedelta(days=1), None])
def test_the_tsas_own_issuing_ca_in_the_root_crl(hierarchy: dict[str, object],
                                                 ca_revoked: dt.datetime | None) -> None:
    """A TSA under a CA of its own: that CA revoked before the time stamp leaves the signature
    without proof of time (NO_POE), as the TSA certificate itself would; revoked after it is
    noted; the signer's CA (good) is reported as before."""
    from cps_sign.revocation import RootCrls

    root, root_key, ca = (hierarchy[k] for k in ("root", "root_key", "ca"))
    assert isinstance(root, x509.Certificate) and isinstance(ca, x509.Certificate)
    assert isinstance(root_key, ec.EllipticCurvePrivateKey)
    tsa_ca_key = rsa.generate_private_key(65537, 2048)
    tsa_ca = _ca("Test TSA CA", tsa_ca_key, root, root_key)
    signature = _b_lt(hierarchy, tsa_ca, tsa_ca_key)
    builder = (x509.CertificateRevocationListBuilder().issuer_name(root.subject)
               .last_update(NOW - dt.timedelta(hours=1))
               .next_update(NOW + dt.timedelta(days=90)))
    if ca_revoked is not None:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(tsa_ca.serial_number)
            .revocation_date(ca_revoked).build())
    crl = builder.sign(root_key, hashes.SHA256())
    verifier = Verifier([root], [ca, tsa_ca], [POLICY], root_crls=RootCrls([crl]))
    report = verifier.verify_cades(b"care claim\n", signature)
    if ca_revoked is not None and ca_revoked < NOW:
        assert (report.indication, report.sub_indication) == (r.INDETERMINATE, r.NO_POE)
        assert "the TSA's issuing CA is revoked" in report.detail, report
        return
    assert report.indication == r.TOTAL_PASSED, report
    assert report.revocation is not None
    assert "issuing CA good (root CRL file)" in report.revocation
    assert ("TSA's CA revoked since" in report.revocation) == (ca_revoked is not None)
