"""The lint-then-sign pipelines: order kept, nothing signed after a lint finding."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pki.ca.issuer import pipelined
from pki.ca.lint import lint_certificate
from pki.errors import LintFailed


def _builder(key: ec.EllipticCurvePrivateKey, clean: bool) -> x509.CertificateBuilder:
    """A self-issued CA certificate: lint-clean, or without any extension (findings)."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pipeline test")])
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now).not_valid_after(now + dt.timedelta(days=30)))
    if not clean:
        return builder
    public = key.public_key()
    return (builder
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True,
                                         False, False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            # pkilint cannot tell a throw-away-signed certificate is self-signed: it wants AKI
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public),
                           critical=False))


def _cert(clean: bool) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    return _builder(key, clean).sign(key, hashes.SHA256()).public_bytes(
        serialization.Encoding.DER)


@pytest.fixture(scope="module")
def ders() -> tuple[bytes, bytes]:
    good, bad = _cert(True), _cert(False)
    assert lint_certificate(good) == []
    assert lint_certificate(bad) != []
    return good, bad


def test_pipeline_lint_finding_stops_before_signing(ders: tuple[bytes, bytes]) -> None:
    good, bad = ders
    signed: list[int] = []

    def prepare(i: int) -> int:
        findings = lint_certificate(bad if i == 70 else good)
        if findings:
            raise LintFailed(f"item {i}", findings)
        return i

    def sign(i: int) -> int:
        signed.append(i)
        return i

    with pytest.raises(LintFailed, match="item 70"):
        list(pipelined(range(100), prepare, sign, depth=4))
    assert 70 not in signed
    assert all(i < 70 for i in signed)


def test_in_process_pipeline_keeps_order() -> None:
    assert list(pipelined(range(50), lambda i: i, lambda i: -i, depth=3)) == \
        [-i for i in range(50)]


class _SoftEcKey:
    """Stands in for an HSM EC key: signs with ``signing`` while claiming ``claimed``'s key."""

    label = "soft-test-key"

    def __init__(self, signing: ec.EllipticCurvePrivateKey,
                 claimed: ec.EllipticCurvePrivateKey) -> None:
        self._signing, self._claimed = signing, claimed

    def sign(self, data: bytes, algorithm: ec.EllipticCurveSignatureAlgorithm) -> bytes:
        return self._signing.sign(data, algorithm)

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._claimed.public_key()


def test_the_bytes_signed_are_the_bytes_linted() -> None:
    from pki.ca.issuer import linted_tbs, sign_tbs

    key = ec.generate_private_key(ec.SECP256R1())
    soft = _SoftEcKey(key, key)
    linted = linted_tbs(_builder(key, True), soft, "test CA")  # type: ignore[arg-type]
    cert = x509.load_der_x509_certificate(sign_tbs(linted, soft))  # type: ignore[arg-type]
    assert cert.tbs_certificate_bytes == linted.tbs
    cert.verify_directly_issued_by(cert)
    assert lint_certificate(cert.public_bytes(serialization.Encoding.DER)) == []


def test_a_signature_that_does_not_verify_issues_nothing() -> None:
    from pki.ca.issuer import linted_tbs, sign_tbs
    from pki.errors import HsmError

    key, other = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    faulty = _SoftEcKey(other, key)      # an HSM answering with the wrong key's signature
    linted = linted_tbs(_builder(key, True), faulty, "test CA")  # type: ignore[arg-type]
    with pytest.raises(HsmError, match="does not verify"):
        sign_tbs(linted, faulty)  # type: ignore[arg-type]


def test_a_lint_finding_stops_before_the_hsm() -> None:
    from pki.ca.issuer import linted_tbs

    key = ec.generate_private_key(ec.SECP256R1())
    builder = _builder(key, False)
    signs: list[bytes] = []

    class Counting(_SoftEcKey):
        def sign(self, data: bytes, algorithm: ec.EllipticCurveSignatureAlgorithm) -> bytes:
            signs.append(data)
            return super().sign(data, algorithm)

    with pytest.raises(LintFailed):
        linted_tbs(builder, Counting(key, key), "bad")  # type: ignore[arg-type]
    assert signs == []
