"""pki.ca.lint's faster pkilint (cached dispatch, remembered value decodes) finds exactly what
pkilint's own driver and decoder find.

Both drivers run over the same documents — clean certificates, certificates with findings of
every severity, byte-mutated DER that pkilint can only partly decode, and CRLs — and must return
the same results, in the same order, validator by validator and node by node.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pkilint import loader

from pki.ca import lint, lintfast

NOW = dt.datetime(2026, 11, 23, tzinfo=dt.UTC)


def _name(cn: str, **extra: str) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
             x509.NameAttribute(NameOID.ORGANIZATION_NAME, "CPS Test")]
    attrs += [x509.NameAttribute(getattr(NameOID, k), v) for k, v in extra.items()]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    return x509.Name(attrs)


@pytest.fixture(scope="module")
def keys() -> dict[str, Any]:
    return {"ca": ec.generate_private_key(ec.SECP256R1()),
            "leaf": rsa.generate_private_key(65537, 2048)}


def _cert(keys: dict[str, Any], variant: str) -> bytes:
    ca, leaf = keys["ca"], keys["leaf"]
    issuer = _name("AC Test")
    b = (x509.CertificateBuilder().issuer_name(issuer)
         .serial_number(0x1234_5678_9ABC_DEF0_1122_3344_5566_7788)
         .not_valid_before(NOW).not_valid_after(NOW + dt.timedelta(days=3 * 365)))
    ski = x509.SubjectKeyIdentifier.from_public_key(leaf.public_key())
    aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.public_key())
    if variant == "ca":
        b = (b.subject_name(issuer).public_key(ca.public_key())
             .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
             .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                          False), critical=True)
             .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca.public_key()),
                            critical=False))
        return b.sign(ca, hashes.SHA256()).public_bytes(serialization.Encoding.DER)
    b = b.subject_name(_name("Jeanne Martin", GIVEN_NAME="Jeanne", SURNAME="Martin")) \
        .public_key(leaf.public_key())
    if variant != "no-ski":
        b = b.add_extension(ski, critical=False)
    if variant != "no-aki":
        b = b.add_extension(aki, critical=False)
    ku = x509.KeyUsage(True, False, False, False, False, False, False, False, False)
    b = b.add_extension(ku, critical=variant != "ku-not-critical")
    if variant == "bad-san":
        b = b.add_extension(x509.SubjectAlternativeName([
            x509.DNSName("not a host"), x509.UniformResourceIdentifier("nohost")]),
            critical=True)
    if variant == "bad-uris":
        b = b.add_extension(x509.CRLDistributionPoints([x509.DistributionPoint(
            [x509.UniformResourceIdentifier("http://x")], None, None, None)]), critical=True)
        b = b.add_extension(x509.AuthorityInformationAccess([x509.AccessDescription(
            x509.oid.AuthorityInformationAccessOID.OCSP,
            x509.UniformResourceIdentifier("ldap:bad"))]), critical=True)
    if variant == "ca-flag-leaf":
        b = b.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=False)
    if variant in ("eku", "bad-san", "bad-uris"):
        b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH,
                                                   ExtendedKeyUsageOID.TIME_STAMPING]),
                            critical=False)
    if variant == "policies":
        b = b.add_extension(x509.CertificatePolicies([x509.PolicyInformation(
            x509.ObjectIdentifier("1.2.250.1.71.4.2.1"), ["http://igc-sante.example/pc",
                                                          x509.UserNotice(None, "x" * 250)])]),
            critical=False)
    return b.sign(ca, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


VARIANTS = ["ca", "leaf", "no-ski", "no-aki", "ku-not-critical", "bad-san", "bad-uris",
            "ca-flag-leaf", "eku", "policies"]


def _summary(results: list[Any]) -> list[tuple[str, str, list[str]]]:
    return [(r.validator.name, r.node.path,
             [f"{d.finding.severity.name}:{d.finding.code}:{d.message}"
              for d in r.finding_descriptions]) for r in results]


def _both(make: Callable[[], Any], loader_cls: Any, der: bytes, name: str
          ) -> tuple[list[Any], list[Any]]:
    plain, fast = make(), lintfast.accelerate(make())
    out: list[list[Any]] = []
    # The accelerated run twice: the second time every repeated part comes from memory.
    for container, memo in ((plain, False), (fast, True), (fast, True)):
        lintfast.DECODE_MEMO.enabled = memo
        try:
            doc = loader_cls().load_der_document(der, name)
        except Exception as exc:   # undecodable at the top: neither driver runs
            return [type(exc).__name__], [type(exc).__name__]
        try:
            out.append(_summary(container.validate(doc.root)))
        except Exception as exc:   # whatever escapes one driver must escape the other
            out.append([type(exc).__name__, str(exc)])
        finally:
            lintfast.DECODE_MEMO.enabled = True
    assert out[2] == out[1]
    return out[0], out[1]


@pytest.mark.parametrize("variant", VARIANTS)
def test_same_findings_on_certificates(keys: dict[str, Any], variant: str) -> None:
    der = _cert(keys, variant)
    plain, fast = _both(lint._pkilint_cert_validator, loader.RFC5280CertificateDocumentLoader,
                        der, "certificate")
    assert fast == plain
    if variant not in ("ca", "leaf", "eku"):
        assert any(f for _, _, f in plain), "the variant should produce findings"


def test_same_findings_on_mutated_certificates(keys: dict[str, Any]) -> None:
    rng = random.Random(20261123)
    compared = with_findings = 0
    for variant in VARIANTS:
        der = bytearray(_cert(keys, variant))
        for _ in range(12):
            mutated = bytearray(der)
            for _ in range(rng.randint(1, 3)):
                mutated[rng.randrange(4, len(mutated))] = rng.randrange(256)
            plain, fast = _both(lint._pkilint_cert_validator,
                                loader.RFC5280CertificateDocumentLoader, bytes(mutated),
                                "certificate")
            assert fast == plain
            compared += 1
            with_findings += any(isinstance(r, tuple) and r[2] for r in plain)
    assert compared == 120 and with_findings > 20


def test_same_findings_on_crls(keys: dict[str, Any]) -> None:
    ca = keys["ca"]
    b = (x509.CertificateRevocationListBuilder().issuer_name(_name("AC Test"))
         .last_update(NOW).next_update(NOW + dt.timedelta(days=7))
         .add_extension(x509.CRLNumber(7), critical=False)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.public_key()),
                        critical=False))
    for i in range(50):
        entry = (x509.RevokedCertificateBuilder().serial_number(1000 + i).revocation_date(NOW)
                 .add_extension(x509.CRLReason(x509.ReasonFlags.key_compromise), critical=False))
        b = b.add_revoked_certificate(entry.build())
    crl_ok = b.sign(ca, hashes.SHA256()).public_bytes(serialization.Encoding.DER)
    crl_bad = (x509.CertificateRevocationListBuilder().issuer_name(_name("AC Test"))
               .last_update(NOW).next_update(NOW + dt.timedelta(days=1))
               .add_extension(x509.CRLNumber(3), critical=True)
               .sign(ca, hashes.SHA256()).public_bytes(serialization.Encoding.DER))
    for der in (crl_ok, crl_bad):
        plain, fast = _both(lint._pkilint_crl_validator,
                            loader.RFC5280CertificateListDocumentLoader, der, "crl")
        assert fast == plain
    assert lint.lint_crl(crl_ok) == [] and lint.lint_crl(crl_bad) != []


def test_public_lint_uses_the_cached_dispatch(keys: dict[str, Any]) -> None:
    container = lint._cert_validator()
    assert "_validate_rec" in vars(container)
    assert lint.lint_certificate(_cert(keys, "leaf")) == []
    findings = lint.lint_certificate(_cert(keys, "bad-uris"))
    assert any("invalid_uri_syntax" in f for f in findings)


def test_decode_memo_remembers_values_never_failures_and_stays_bounded() -> None:
    calls: list[bytes] = []

    def decode(data: bytes, asn1Spec: object) -> tuple[object, bytes]:
        calls.append(data)
        if data.startswith(b"bad"):
            raise ValueError("undecodable")
        return (data, asn1Spec), b""

    memo = lintfast.DecodeMemo(decode, size=3, max_bytes=8)
    spec, other_spec = object(), object()
    first = memo(b"abc", asn1Spec=spec)[0]
    assert memo(b"abc", asn1Spec=spec)[0] is first and calls == [b"abc"]
    assert memo(b"abc", asn1Spec=other_spec)[0] == (b"abc", other_spec)   # per schema object
    for _ in range(2):
        with pytest.raises(ValueError):
            memo(b"bad", asn1Spec=spec)
    assert calls.count(b"bad") == 2                       # failures are decoded every time
    memo(b"0123456789", asn1Spec=spec)
    memo(b"0123456789", asn1Spec=spec)
    assert calls.count(b"0123456789") == 2                # whole documents are not kept
    for value in (b"d", b"e", b"f"):
        memo(value, asn1Spec=spec)
    memo(b"abc", asn1Spec=spec)
    assert calls.count(b"abc") == 3                       # evicted: at most `size` entries
    memo.enabled = False
    memo(b"f", asn1Spec=spec)
    assert calls.count(b"f") == 2


def test_short_gil_slices_nest_and_restore() -> None:
    import sys

    from pki.ca.issuer import short_gil_slices

    before = sys.getswitchinterval()
    with short_gil_slices(0.0002):
        assert sys.getswitchinterval() == pytest.approx(0.0002)
        with short_gil_slices(0.0002):
            pass
        assert sys.getswitchinterval() == pytest.approx(0.0002)   # the outer user still runs
    assert sys.getswitchinterval() == before
    with pytest.raises(RuntimeError), short_gil_slices(0.0002):
        raise RuntimeError("a failed batch")
    assert sys.getswitchinterval() == before


@pytest.mark.parametrize("variant", VARIANTS)
def test_certificate_decoded_by_part_equals_the_whole_decode(keys: dict[str, Any],
                                                             variant: str) -> None:
    from pyasn1.codec.der.encoder import encode
    from pyasn1_alt_modules import rfc5280
    from pyasn1_fasder import decode_der

    der = _cert(keys, variant)
    memo = lintfast.DecodeMemo(decode_der)
    by_part = lintfast._decode_by_part(der, memo)
    again = lintfast._decode_by_part(der, memo)          # the second time from memory
    whole, _ = decode_der(der, asn1Spec=rfc5280.Certificate())
    # pyasn1 fills in DEFAULT components the first time a value is walked (encode, items());
    # pkilint walks every value when it builds the document tree, so compare walked values.
    assert encode(whole) == der
    for value in (by_part, again):
        assert encode(value) == der
        assert value.prettyPrint() == whole.prettyPrint()
    assert memo.hits > 0


def test_lint_decodes_by_part_and_falls_back_whole(keys: dict[str, Any]) -> None:
    memo = lintfast.DECODE_MEMO
    before_hits, before_whole = memo.hits, memo.whole
    assert lint.lint_certificate(_cert(keys, "leaf")) == []
    assert lint.lint_certificate(_cert(keys, "leaf")) == []
    assert memo.hits > before_hits and memo.whole == before_whole
    truncated = _cert(keys, "leaf")[:-1]                  # outer length now overruns
    with pytest.raises(Exception, match="decod"):         # pkilint's own decoder says why
        loader.RFC5280CertificateDocumentLoader().load_der_document(truncated, "c")
    assert memo.whole == before_whole + 1
