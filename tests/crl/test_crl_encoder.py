"""The hand-written CRL encoder against cryptography's builder, openssl and pkilint."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pki.ca.lint import lint_crl
from pki.crl import builder, der
from pki.crl.builder import CrlFields, EntryBuffer
from pki.errors import LintFailed

from .conftest import START, SoftSigner, openssl

URL = "http://crl.igc-sante.example.fr/crl/ac-test-p3.crl"
DELTA_URL = "http://crl.igc-sante.example.fr/crl/ac-test-p3-delta.crl"
REASON_FLAGS = {name: x509.ReasonFlags(name) for name in der.REASON_CODES}


def sqlite_text(at: dt.datetime) -> str:
    """How pki.store.models.UtcDateTime leaves a time in SQLite (what the fast path slices)."""
    return at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def reference_crl(signer: SoftSigner, fields: CrlFields,
                  rows: list[tuple[int, dt.datetime, str | None, dt.datetime | None, str]]
                  ) -> x509.CertificateRevocationList:
    """The same CRL through cryptography's (quadratic) builder."""
    ca = signer.certificate
    b = (x509.CertificateRevocationListBuilder().issuer_name(ca.subject)
         .last_update(fields.this_update).next_update(fields.next_update))
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                        critical=False)
    b = b.add_extension(x509.CRLNumber(fields.number), critical=False)
    if fields.delta_base is not None:
        b = b.add_extension(x509.DeltaCRLIndicator(fields.delta_base), critical=True)
    if fields.idp_uri is not None:
        b = b.add_extension(x509.IssuingDistributionPoint(
            full_name=[x509.UniformResourceIdentifier(fields.idp_uri)], relative_name=None,
            only_contains_user_certs=fields.only_user_certs, only_contains_ca_certs=False,
            only_some_reasons=None, indirect_crl=False, only_contains_attribute_certs=False),
            critical=True)
    if fields.freshest_uri is not None:
        b = b.add_extension(x509.FreshestCRL([x509.DistributionPoint(
            [x509.UniformResourceIdentifier(fields.freshest_uri)], None, None, None)]),
            critical=False)
    for serial, when, reason, invalidity, status in rows:
        code = builder.entry_reason(status, reason)
        rb = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when)
        if code != 0:
            name = next(n for n, c in der.REASON_CODES.items() if c == code)
            rb = rb.add_extension(x509.CRLReason(REASON_FLAGS[name]), critical=False)
        if invalidity is not None:
            rb = rb.add_extension(x509.InvalidityDate(invalidity.replace(tzinfo=None)),
                                  critical=False)
        b = b.add_revoked_certificate(rb.build())
    return b.sign(signer.key, hashes.SHA256())  # type: ignore[arg-type]


times = st.datetimes(min_value=dt.datetime(1950, 1, 1), max_value=dt.datetime(2099, 12, 31),
                     timezones=st.just(dt.UTC)).map(lambda t: t.replace(microsecond=0))
statuses = st.sampled_from(["revoked", "revoked", "hold", "active"])
reasons = st.sampled_from([None, *[r for r in der.REASON_CODES
                                   if r not in ("certificateHold", "removeFromCRL")]])
entries = st.lists(st.tuples(st.integers(1, 2**159 - 1), times, reasons,
                             st.one_of(st.none(), times), statuses, st.booleans()),
                   max_size=40)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=entries, number=st.integers(1, 2**63), delta=st.booleans(), shard=st.booleans(),
       this_update=times)
def test_encoder_matches_cryptography_builder(rsa_signer: SoftSigner, rows: list, number: int,
                                              delta: bool, shard: bool,
                                              this_update: dt.datetime) -> None:
    fields = CrlFields(issuer=rsa_signer.certificate, this_update=this_update,
                       next_update=this_update + dt.timedelta(hours=168), number=number,
                       delta_base=number - 1 if delta and number > 1 else None,
                       idp_uri=URL if shard else None, only_user_certs=shard,
                       freshest_uri=None if delta else DELTA_URL)
    buf = EntryBuffer()
    # Half the rows come as SQLite text (the sliced fast path), half as datetimes (PostgreSQL).
    buf.extend((f"{serial:X}", sqlite_text(when) if as_text else when, reason,
                None if inv is None else (sqlite_text(inv) if as_text else inv), status)
               for serial, when, reason, inv, status, as_text in rows)
    mine = builder.sign(fields, buf, rsa_signer)
    ref = reference_crl(rsa_signer, fields, [r[:5] for r in rows])
    # RSA PKCS#1 v1.5 is deterministic: equal TBS bytes give equal CRLs.
    assert mine == ref.public_bytes(Encoding.DER)


def test_entry_shapes_and_reason_rules(ec_signer: SoftSigner) -> None:
    rows = [
        ("00FF", sqlite_text(START), "unspecified", None, "revoked"),        # needless zero
        ("80", START, "keyCompromise", START - dt.timedelta(days=1), "revoked"),  # high bit
        ("ABC", "2049-12-31 23:59:59.000000", None, None, "revoked"),       # odd hex, last UTC
        ("0102", "2050-01-01 00:00:00.000000", "superseded", None, "revoked"),  # Generalized
        ("0103", dt.datetime(1950, 1, 1, tzinfo=dt.UTC), "aACompromise", None, "revoked"),
        ("0104", START, "cACompromise", None, "hold"),                        # hold wins
    ]
    buf = EntryBuffer()
    buf.extend(rows)
    fields = CrlFields(ec_signer.certificate, START, START + dt.timedelta(days=1), 7)
    crl = x509.load_der_x509_crl(builder.build(fields, buf, ec_signer))
    assert crl.is_signature_valid(ec_signer.key.public_key())  # type: ignore[arg-type]
    got = {f"{r.serial_number:X}": r for r in crl}
    assert set(got) == {"FF", "80", "ABC", "102", "103", "104"}
    assert len(got["FF"].extensions) == 0          # unspecified: no reasonCode (RFC 5280 5.3.1)
    assert got["80"].extensions.get_extension_for_class(x509.CRLReason).value.reason \
        == x509.ReasonFlags.key_compromise
    assert got["80"].extensions.get_extension_for_class(x509.InvalidityDate).value \
        .invalidity_date_utc == START - dt.timedelta(days=1)
    assert got["ABC"].revocation_date_utc == dt.datetime(2049, 12, 31, 23, 59, 59,
                                                         tzinfo=dt.UTC)
    assert got["102"].revocation_date_utc.year == 2050
    assert got["103"].revocation_date_utc.year == 1950
    assert got["104"].extensions.get_extension_for_class(x509.CRLReason).value.reason \
        == x509.ReasonFlags.certificate_hold
    der_bytes = crl.public_bytes(Encoding.DER)
    # Time types as RFC 5280 §4.1.2.5 wants them.
    assert b"\x17\x0d491231235959Z" in der_bytes
    assert b"\x18\x0f20500101000000Z" in der_bytes
    assert b"\x18\x0f19500101000000Z" not in der_bytes and b"\x17\x0d500101000000Z" in der_bytes


def test_empty_crl_omits_revoked_certificates(ec_signer: SoftSigner) -> None:
    fields = CrlFields(ec_signer.certificate, START, START + dt.timedelta(days=1), 1)
    data = builder.build(fields, EntryBuffer(), ec_signer)
    crl = x509.load_der_x509_crl(data)
    assert len(crl) == 0 and lint_crl(data) == []
    # RFC 5280 §5.1.2.6: no entries -> the revokedCertificates field is absent, not empty.
    assert b"\x30\x00" not in crl.tbs_certlist_bytes


def test_bad_rows_are_refused(ec_signer: SoftSigner) -> None:
    with pytest.raises(ValueError, match="unknown revocation reason"):
        EntryBuffer().extend([("01", START, "stolen", None, "revoked")])
    with pytest.raises(ValueError, match="no CRL entry"):
        EntryBuffer().extend([("01", START, None, None, "expired")])
    with pytest.raises(ValueError, match="positive"):
        EntryBuffer().extend([("0000", START, None, None, "revoked")])
    with pytest.raises(ValueError, match="naive"):
        EntryBuffer().extend([("01", START.replace(tzinfo=None), None, None, "revoked")])


def test_lint_finding_stops_before_the_signer(ec_signer: SoftSigner) -> None:
    # pkilint rejects this URI syntax (no dot in the host): a real finding, not a mock.
    fields = CrlFields(ec_signer.certificate, START, START + dt.timedelta(days=1), 1,
                       idp_uri="http://x/crl/a-p0.crl", only_user_certs=True)
    buf = EntryBuffer()
    buf.extend([("01", START, None, None, "revoked")])
    before = ec_signer.signed
    with pytest.raises(LintFailed) as info:
        builder.build(fields, buf, ec_signer)
    assert any("invalid_uri_syntax" in f for f in info.value.findings)
    assert ec_signer.signed == before


def test_big_lists_lint_a_sample_with_every_shape(ec_signer: SoftSigner,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    n = builder.LINT_ENTRY_LIMIT + 1500
    rows = [(f"{0x100000 + i:X}", START, "keyCompromise", None, "revoked") for i in range(n)]
    rows[-1] = (rows[-1][0], START, "superseded", START, "revoked")   # the only such shape
    rows[-2] = (rows[-2][0], START, None, None, "hold")
    linted: list[bytes] = []
    monkeypatch.setattr(builder, "lint_crl", lambda d: linted.append(d) or lint_crl(d))
    buf = EntryBuffer()
    buf.extend(rows)
    fields = CrlFields(ec_signer.certificate, START, START + dt.timedelta(days=1), 9)
    full = x509.load_der_x509_crl(builder.build(fields, buf, ec_signer))
    assert len(full) == n
    sample = x509.load_der_x509_crl(linted[0])
    serials = {r.serial_number for r in sample}
    assert len(sample) <= builder.SAMPLE_HEAD + 10
    assert int(rows[-1][0], 16) in serials and int(rows[-2][0], 16) in serials
    # Same shape: everything but the entries (and the signature) is identical.
    assert list(sample.extensions) == list(full.extensions)
    assert sample.issuer == full.issuer and sample.last_update_utc == full.last_update_utc


def test_openssl_reads_and_verifies(ec_signer: SoftSigner, tmp_path) -> None:
    buf = EntryBuffer()
    buf.extend([(f"{i:032X}", START, "keyCompromise", START, "revoked") for i in range(1, 300)])
    fields = CrlFields(ec_signer.certificate, START, START + dt.timedelta(days=1), 3,
                       idp_uri=URL, only_user_certs=True, freshest_uri=DELTA_URL)
    path = tmp_path / "x.crl"
    path.write_bytes(builder.build(fields, buf, ec_signer))
    ca = tmp_path / "ca.pem"
    ca.write_bytes(ec_signer.certificate.public_bytes(Encoding.PEM))
    out = openssl("crl", "-inform", "DER", "-in", str(path), "-noout", "-text", check=True).stdout
    assert out.count("Serial Number:") == 299 and "Key Compromise" in out
    assert "Issuing Distribution Point: critical" in out and "Only User Certificates" in out
    assert DELTA_URL in out and "CRL Number: \n                3" in out.replace("\r", "")
    res = openssl("crl", "-inform", "DER", "-in", str(path), "-noout", "-CAfile", str(ca),
                  "-verify", check=True)
    assert "verify OK" in res.stderr + res.stdout
