"""``end_entity_builder`` with per-CA templates makes the certificates the plain builder made.

The fixed extensions (basic constraints, key usage, AKI, policies, CRL and delta-CRL points,
AIA, product category, EKU) are built and DER-encoded once per (CA, profile, key family, CRL
shard); every certificate must still come out bit for bit as when each extension was built
afresh through ``add_extension``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import AuthorityInformationAccessOID, ObjectIdentifier

from pki import ids, urls
from pki.ca import profiles
from pki.ca.authority import Authority
from pki.config import Config
from pki.errors import InvalidInput

SIGNER = rsa.generate_private_key(65537, 2048)   # PKCS#1 v1.5: the same TBS signs the same
RSA_SUBJECT = rsa.generate_private_key(65537, 2048).public_key()
EC_SUBJECT = ec.generate_private_key(ec.SECP256R1()).public_key()


def _reference_builder(config: Config, prof: profiles.Profile, issuer: profiles.IssuerView,
                       subject: x509.Name, public_key: profiles.PublicKey, *, serial: int,
                       not_before: dt.datetime, profession_code: int | None = None,
                       dns_names: tuple[str, ...] = (),
                       not_after: dt.datetime | None = None) -> x509.CertificateBuilder:
    """``end_entity_builder`` as it was before the templates: every extension built afresh."""
    base = config.base_url
    shard = urls.shard_of(serial, config.crl.shards)
    end = not_after or not_before + dt.timedelta(days=prof.validity_days(config))
    end = min(end, issuer.certificate.not_valid_after_utc)
    usage = {flag: flag in prof.key_usage for flag in profiles._KEY_USAGE_FLAGS}
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        usage["key_encipherment"] = False
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.certificate.subject)
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(**usage), critical=prof.critical_key_usage)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
            issuer.ski), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.CertificatePolicies([x509.PolicyInformation(
            ObjectIdentifier(prof.policy_oid(config)), None)]), critical=False)
        .add_extension(x509.CRLDistributionPoints([x509.DistributionPoint(
            [x509.UniformResourceIdentifier(urls.crl_url(base, issuer.slug, shard))],
            None, None, None)]), critical=False)
        .add_extension(x509.FreshestCRL([x509.DistributionPoint(
            [x509.UniformResourceIdentifier(urls.crl_url(base, issuer.slug, shard,
                                                         delta=True))],
            None, None, None)]), critical=False)
        .add_extension(x509.AuthorityInformationAccess([
            x509.AccessDescription(AuthorityInformationAccessOID.OCSP,
                                   x509.UniformResourceIdentifier(urls.ocsp_url(base))),
            x509.AccessDescription(AuthorityInformationAccessOID.CA_ISSUERS,
                                   x509.UniformResourceIdentifier(
                                       urls.ca_cert_url(base, issuer.slug))),
        ]), critical=False)
        .add_extension(x509.UnrecognizedExtension(
            profiles.PRODUCT_CATEGORY_OID, profiles.der_integer(prof.product_category)),
            critical=False)
    )
    if prof.extended_key_usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage(
            [ObjectIdentifier(oid) for oid in prof.extended_key_usage]), critical=False)
    if prof.profession_extension:
        if profession_code is None:
            raise InvalidInput(f"profile {prof.name} needs a profession code")
        builder = builder.add_extension(x509.UnrecognizedExtension(
            profiles.PROFESSION_CODE_OID, profiles.der_integer(profession_code)), critical=False)
    if dns_names:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName(n) for n in dns_names]), critical=False)
    return builder


def _der(builder: x509.CertificateBuilder) -> bytes:
    return builder.sign(SIGNER, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


@pytest.mark.parametrize("shards", [1, 4])
def test_template_builder_matches_the_plain_builder_bit_for_bit(authority: Authority,
                                                               shards: int) -> None:
    config = dataclasses.replace(authority.config,
                                 crl=dataclasses.replace(authority.config.crl, shards=shards))
    pro_subject = profiles.professional_subject("Médecin", "Élodie", "Le Gall",
                                                ids.national_id(ids.luhn_complete("1000345678")))
    org_subject = profiles.structure_subject("Paris (75)", "CHU", "1750000019", "dmp.chu.fr")
    not_before = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    cases: list[tuple[str, x509.Name, dict[str, Any]]] = [
        ("auth", pro_subject, {"profession_code": 10}),
        ("sign", pro_subject, {"profession_code": 40}),
        ("org", org_subject, {"dns_names": ("dmp.chu.fr", "www.chu.fr")}),
        ("org", org_subject, {}),
        # Capped by the issuer's own expiry:
        ("auth", pro_subject, {"profession_code": 10,
                               "not_after": dt.datetime(2200, 1, 1, tzinfo=dt.UTC)}),
    ]
    seen_shards = set()
    for name, subject, extra in cases:
        prof = profiles.profile(name)
        ca = authority.issuing_ca(prof.issuer_role)
        view = profiles.IssuerView(ca.slug, ca.certificate)   # reused: templates cached
        for key in (RSA_SUBJECT, EC_SUBJECT, RSA_SUBJECT, EC_SUBJECT):
            for _ in range(3):
                serial = profiles.random_serial()
                seen_shards.add(urls.shard_of(serial, shards))
                args = (config, prof, view, subject, key)
                kwargs = {"serial": serial, "not_before": not_before, **extra}
                assert (_der(profiles.end_entity_builder(*args, **kwargs))
                        == _der(_reference_builder(*args, **kwargs))), (name, key, extra)
    assert len(seen_shards) > 1 or shards == 1


def test_template_builder_refuses_what_the_plain_builder_refused(authority: Authority) -> None:
    prof = profiles.profile("auth")
    ca = authority.issuing_ca(prof.issuer_role)
    view = profiles.IssuerView(ca.slug, ca.certificate)
    subject = profiles.professional_subject("Médecin", "A", "B", "81000345678")
    not_before = dt.datetime(2026, 1, 2, tzinfo=dt.UTC)
    with pytest.raises(InvalidInput, match="needs a profession code"):
        profiles.end_entity_builder(authority.config, prof, view, subject, RSA_SUBJECT,
                                    serial=profiles.random_serial(), not_before=not_before)
    for bad_serial in (0, -5, 1 << 160):
        with pytest.raises(ValueError, match="serial number"):
            profiles.end_entity_builder(authority.config, prof, view, subject, RSA_SUBJECT,
                                        serial=bad_serial, not_before=not_before,
                                        profession_code=10)
    with pytest.raises(TypeError):
        profiles.end_entity_builder(authority.config, prof, view, subject,
                                    "not a key",  # type: ignore[arg-type]
                                    serial=profiles.random_serial(), not_before=not_before,
                                    profession_code=10)


def test_random_serials_are_positive_127_bit_and_distinct() -> None:
    source = profiles.random_serials(block=8)
    drawn = [next(source) for _ in range(200)] + [profiles.random_serial() for _ in range(50)]
    assert len(set(drawn)) == len(drawn)
    assert all(1 << 64 <= s < 1 << 127 for s in drawn)
    assert max(drawn).bit_length() > 120      # the entropy is spread over all 127 bits


