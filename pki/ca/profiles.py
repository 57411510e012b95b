"""Certificate profiles as data (pki/data/profiles.json) and the builders they drive."""

from __future__ import annotations

import datetime as dt
import functools
import json
import secrets
from dataclasses import dataclass
from importlib import resources

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import AuthorityInformationAccessOID, NameOID, ObjectIdentifier

from pki import urls
from pki.config import Config
from pki.errors import InvalidInput

PRODUCT_CATEGORY_OID = ObjectIdentifier("1.2.250.1.71.1.2.5")
PROFESSION_CODE_OID = ObjectIdentifier("1.2.250.1.71.1.2.7")
_KEY_USAGE_FLAGS = ("digital_signature", "content_commitment", "key_encipherment",
                    "data_encipherment", "key_agreement", "key_cert_sign", "crl_sign",
                    "encipher_only", "decipher_only")

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    issuer_role: str
    subject: str                       # professional | structure
    key_usage: tuple[str, ...]
    critical_key_usage: bool
    extended_key_usage: tuple[str, ...]
    policy: str                        # key of ProfileConfig
    validity: str                      # key of ProfileConfig
    product_category: int
    profession_extension: bool

    def policy_oid(self, config: Config) -> str:
        return str(getattr(config.profiles, self.policy))

    def validity_days(self, config: Config) -> int:
        return int(getattr(config.profiles, self.validity))


@functools.cache
def profiles() -> dict[str, Profile]:
    raw = json.loads(resources.files("pki.data").joinpath("profiles.json").read_text("utf-8"))
    out: dict[str, Profile] = {}
    for name, spec in raw["profiles"].items():
        unknown = set(spec["key_usage"]) - set(_KEY_USAGE_FLAGS)
        if unknown:
            raise ValueError(f"profile {name}: unknown key usage {sorted(unknown)}")
        out[name] = Profile(name=name, description=spec["description"],
                            issuer_role=spec["issuer_role"], subject=spec["subject"],
                            key_usage=tuple(spec["key_usage"]),
                            critical_key_usage=bool(spec["critical_key_usage"]),
                            extended_key_usage=tuple(spec["extended_key_usage"]),
                            policy=spec["policy"], validity=spec["validity"],
                            product_category=int(spec["product_category"]),
                            profession_extension=bool(spec["profession_extension"]))
    return out


def profile(name: str) -> Profile:
    table = profiles()
    if name not in table:
        raise InvalidInput(f"unknown certificate profile {name!r}; known: {', '.join(table)}")
    return table[name]


def random_serial() -> int:
    """16 random bytes, top bit cleared: positive, 127 bits of entropy, never zero."""
    while True:
        serial = int.from_bytes(secrets.token_bytes(16), "big") >> 1
        if serial >= 1 << 64:
            return serial


def der_integer(value: int) -> bytes:
    body = value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big", signed=True)
    return bytes([0x02, len(body)]) + body


def professional_subject(profession_label: str, given_name: str, surname: str,
                         national_id: str) -> x509.Name:
    return x509.Name([
        x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COUNTRY_NAME, "FR")]),
        x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.TITLE, profession_label)]),
        x509.RelativeDistinguishedName([
            x509.NameAttribute(NameOID.GIVEN_NAME, given_name),
            x509.NameAttribute(NameOID.SURNAME, surname),
            x509.NameAttribute(NameOID.COMMON_NAME, national_id),
        ]),
    ])


def structure_subject(state: str, organisation: str, structure_id: str,
                      common_name: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
        x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, state),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, structure_id),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])


@dataclass(frozen=True)
class IssuerView:
    """What a builder needs of the issuing CA (no key)."""

    slug: str
    certificate: x509.Certificate

    @functools.cached_property
    def ski(self) -> x509.SubjectKeyIdentifier:
        return self.certificate.extensions.get_extension_for_class(
            x509.SubjectKeyIdentifier).value


def end_entity_builder(config: Config, prof: Profile, issuer: IssuerView, subject: x509.Name,
                       public_key: PublicKey, *, serial: int, not_before: dt.datetime,
                       profession_code: int | None = None,
                       dns_names: tuple[str, ...] = (),
                       not_after: dt.datetime | None = None) -> x509.CertificateBuilder:
    """The to-be-signed end-entity certificate for ``prof`` (SPEC §3)."""
    base = config.base_url
    shard = urls.shard_of(serial, config.crl.shards)
    end = not_after or not_before + dt.timedelta(days=prof.validity_days(config))
    end = min(end, issuer.certificate.not_valid_after_utc)   # never outlive the issuer
    usage = {flag: flag in prof.key_usage for flag in _KEY_USAGE_FLAGS}
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        # An EC key cannot encrypt (RFC 5480 §3): keyEncipherment is for RSA subjects only.
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
            PRODUCT_CATEGORY_OID, der_integer(prof.product_category)), critical=False)
    )
    if prof.extended_key_usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage(
            [ObjectIdentifier(oid) for oid in prof.extended_key_usage]), critical=False)
    if prof.profession_extension:
        if profession_code is None:
            raise InvalidInput(f"profile {prof.name} needs a profession code")
        builder = builder.add_extension(x509.UnrecognizedExtension(
            PROFESSION_CODE_OID, der_integer(profession_code)), critical=False)
    if dns_names:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName(n) for n in dns_names]), critical=False)
    return builder


def ca_builder(subject: x509.Name, issuer_name: x509.Name, public_key: PublicKey,
               issuer_public_key: PublicKey, *, not_before: dt.datetime, days: int,
               path_length: int | None, aia_base: str | None = None,
               crl_url: str | None = None, issuer_slug: str | None = None
               ) -> x509.CertificateBuilder:
    """Root (self-issued) or issuing CA certificate: keyCertSign + cRLSign, critical (SPEC §2)."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(issuer_name).public_key(public_key)
        .serial_number(random_serial())
        .not_valid_before(not_before).not_valid_after(not_before + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=True, crl_sign=True,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_public_key),
                       critical=False)
    )
    if crl_url is not None:
        builder = builder.add_extension(x509.CRLDistributionPoints([x509.DistributionPoint(
            [x509.UniformResourceIdentifier(crl_url)], None, None, None)]), critical=False)
    if aia_base is not None and issuer_slug is not None:
        builder = builder.add_extension(x509.AuthorityInformationAccess([
            x509.AccessDescription(AuthorityInformationAccessOID.CA_ISSUERS,
                                   x509.UniformResourceIdentifier(
                                       urls.ca_cert_url(aia_base, issuer_slug)))]),
            critical=False)
    return builder


def ca_name(config: Config, common_name: str) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COUNTRY_NAME, config.names.country),
             x509.NameAttribute(NameOID.ORGANIZATION_NAME, config.names.organisation)]
    attrs += [x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou)
              for ou in config.names.org_units]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attrs)


# Short names for the attributes RFC 4514 leaves as dotted OIDs (as OpenSSL prints them).
_NAME_LABELS = {NameOID.GIVEN_NAME: "GN", NameOID.SURNAME: "SN", NameOID.TITLE: "title"}


def name_text(name: x509.Name) -> str:
    """A readable RFC 4514 string: ``CN=810003456786+GN=Jeanne+SN=Dupont,title=Médecin,C=FR``."""
    return name.rfc4514_string(_NAME_LABELS)
