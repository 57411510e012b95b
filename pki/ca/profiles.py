"""Certificate profiles as data (pki/data/profiles.json) and the builders they drive."""

from __future__ import annotations

import datetime as dt
import functools
import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from typing import Literal, NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import AuthorityInformationAccessOID, NameOID, ObjectIdentifier

from pki import urls
from pki.config import Config
from pki.errors import InvalidInput

PRODUCT_CATEGORY_OID = ObjectIdentifier("1.2.250.1.71.1.2.5")
PROFESSION_CODE_OID = ObjectIdentifier("1.2.250.1.71.1.2.7")
# Where the subject's private key lives, as the product category says it (SPEC §3). Relying
# parties (the login broker) grade an authentication by it, so it must say what the CA knows:
# "card" only for keys generated on a card during `card issue`.
KeyStorage = Literal["card", "hsm", "software"]
KEY_STORAGE_CATEGORY: dict[str, int] = {"card": 0, "hsm": 2, "software": 3}
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
    critical_extended_key_usage: bool = False

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
                            profession_extension=bool(spec["profession_extension"]),
                            critical_extended_key_usage=bool(
                                spec.get("critical_extended_key_usage", False)))
    return out


def profile(name: str) -> Profile:
    table = profiles()
    if name not in table:
        raise InvalidInput(f"unknown certificate profile {name!r}; known: {', '.join(table)}")
    return table[name]


def random_serial() -> int:
    """16 random bytes, top bit cleared: positive, 127 bits of entropy, never zero."""
    return next(random_serials(1))


def random_serials(block: int = 256) -> Iterator[int]:
    """An endless supply of ``random_serial`` values, drawing the entropy ``block`` at a time.

    One ``os.urandom`` call per block instead of per serial: each call releases the GIL, and in
    batched issuance every release hands it to the HSM signing thread.
    """
    while True:
        pool = secrets.token_bytes(16 * block)
        for start in range(0, 16 * block, 16):
            serial = int.from_bytes(pool[start:start + 16], "big") >> 1
            if serial >= 1 << 64:
                yield serial


def key_storage_of(cert: x509.Certificate) -> KeyStorage:
    """Where ``cert`` says its key lives; "software" when it does not say (or says oddly)."""
    try:
        raw = cert.extensions.get_extension_for_oid(PRODUCT_CATEGORY_OID).value
    except x509.ExtensionNotFound:
        return "software"
    value = raw.value if isinstance(raw, x509.UnrecognizedExtension) else b""
    by_category = {der_integer(c): s for s, c in KEY_STORAGE_CATEGORY.items()}
    return by_category.get(value, "software")  # type: ignore[return-value]


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
    """What a builder needs of the issuing CA (no key).

    Keep one view per CA: it caches the extensions every certificate it issues repeats.
    """

    slug: str
    certificate: x509.Certificate
    _templates: dict[tuple[object, ...], _Template] = field(
        default_factory=dict, init=False, compare=False, repr=False)

    @functools.cached_property
    def ski(self) -> x509.SubjectKeyIdentifier:
        return self.certificate.extensions.get_extension_for_class(
            x509.SubjectKeyIdentifier).value

    @functools.cached_property
    def name(self) -> x509.Name:
        return self.certificate.subject

    @functools.cached_property
    def not_after(self) -> dt.datetime:
        return self.certificate.not_valid_after_utc

    def template(self, prof: Profile, base_url: str, policy_oid: str, shard: int | None,
                 ec_key: bool, category: int | None = None) -> _Template:
        category = prof.product_category if category is None else category
        key = (prof, base_url, policy_oid, shard, ec_key, category)
        tpl = self._templates.get(key)
        if tpl is None:
            tpl = self._templates[key] = _template(self, prof, base_url, policy_oid, shard,
                                                   ec_key, category)
        return tpl


class _Template(NamedTuple):
    """The extensions of an end-entity certificate that depend on its issuer, profile, key
    family and CRL shard only, before and after the subject key identifier, DER-encoded."""

    head: tuple[x509.Extension[x509.ExtensionType], ...]
    tail: tuple[x509.Extension[x509.ExtensionType], ...]


def _template(issuer: IssuerView, prof: Profile, base_url: str, policy_oid: str,
              shard: int | None, ec_key: bool, category: int) -> _Template:
    usage = {flag: flag in prof.key_usage for flag in _KEY_USAGE_FLAGS}
    if ec_key:
        # An EC key cannot encrypt (RFC 5480 §3): keyEncipherment is for RSA subjects only.
        usage["key_encipherment"] = False
    head: list[x509.ExtensionType] = [
        x509.BasicConstraints(ca=False, path_length=None),
        x509.KeyUsage(**usage),
        x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer.ski),
    ]
    tail: list[x509.ExtensionType] = [
        x509.CertificatePolicies([x509.PolicyInformation(ObjectIdentifier(policy_oid), None)]),
        x509.CRLDistributionPoints([x509.DistributionPoint(
            [x509.UniformResourceIdentifier(urls.crl_url(base_url, issuer.slug, shard))],
            None, None, None)]),
        x509.FreshestCRL([x509.DistributionPoint(
            [x509.UniformResourceIdentifier(urls.crl_url(base_url, issuer.slug, shard,
                                                         delta=True))],
            None, None, None)]),
        x509.AuthorityInformationAccess([
            x509.AccessDescription(AuthorityInformationAccessOID.OCSP,
                                   x509.UniformResourceIdentifier(urls.ocsp_url(base_url))),
            x509.AccessDescription(AuthorityInformationAccessOID.CA_ISSUERS,
                                   x509.UniformResourceIdentifier(
                                       urls.ca_cert_url(base_url, issuer.slug))),
        ]),
        x509.UnrecognizedExtension(PRODUCT_CATEGORY_OID, der_integer(category)),
    ]
    if prof.extended_key_usage:
        tail.append(x509.ExtendedKeyUsage(
            [ObjectIdentifier(oid) for oid in prof.extended_key_usage]))
    critical = {x509.BasicConstraints.oid: True, x509.KeyUsage.oid: prof.critical_key_usage,
                x509.ExtendedKeyUsage.oid: prof.critical_extended_key_usage}
    return _Template(tuple(_encoded(v, critical.get(v.oid, False)) for v in head),
                     tuple(_encoded(v, critical.get(v.oid, False)) for v in tail))


def _encoded(value: x509.ExtensionType, critical: bool
             ) -> x509.Extension[x509.ExtensionType]:
    """``value`` as its DER, made by cryptography's own encoder once: the builder copies the
    bytes of an UnrecognizedExtension instead of encoding the value again for each signature.
    """
    raw = x509.UnrecognizedExtension(value.oid, value.public_bytes())
    return x509.Extension(value.oid, critical, raw)


@functools.lru_cache(maxsize=256)
def _profession_extension(code: int) -> x509.Extension[x509.UnrecognizedExtension]:
    return x509.Extension(PROFESSION_CODE_OID, False,
                          x509.UnrecognizedExtension(PROFESSION_CODE_OID, der_integer(code)))


def end_entity_builder(config: Config, prof: Profile, issuer: IssuerView, subject: x509.Name,
                       public_key: PublicKey, *, serial: int, not_before: dt.datetime,
                       profession_code: int | None = None,
                       dns_names: tuple[str, ...] = (),
                       not_after: dt.datetime | None = None,
                       key_storage: KeyStorage | None = None) -> x509.CertificateBuilder:
    """The to-be-signed end-entity certificate for ``prof`` (SPEC §3).

    ``key_storage`` sets the product category; without it, the profile's default.

    Extensions, in this order: basicConstraints, keyUsage, authorityKeyIdentifier,
    subjectKeyIdentifier, certificatePolicies, cRLDistributionPoints, freshestCRL,
    authorityInfoAccess, product category, [extKeyUsage], [profession code], [subjectAltName].
    All but the SKI, the profession code and the SAN come from the issuer's cached template.
    """
    if prof.profession_extension and profession_code is None:
        raise InvalidInput(f"profile {prof.name} needs a profession code")
    end = not_after or not_before + dt.timedelta(days=prof.validity_days(config))
    end = min(end, issuer.not_after)   # never outlive the issuer
    ec_key = isinstance(public_key, ec.EllipticCurvePublicKey)
    if not ec_key and not isinstance(public_key, rsa.RSAPublicKey):
        # Not a key: the builder's own TypeError, as before (the SKI would fail obscurely).
        x509.CertificateBuilder().public_key(public_key)
    category = None if key_storage is None else KEY_STORAGE_CATEGORY[key_storage]
    tpl = issuer.template(prof, config.base_url, prof.policy_oid(config),
                          urls.shard_of(serial, config.crl.shards), ec_key, category)
    extensions = [*tpl.head, x509.Extension(
        x509.SubjectKeyIdentifier.oid, False,
        x509.SubjectKeyIdentifier.from_public_key(public_key)), *tpl.tail]
    if prof.profession_extension:
        assert profession_code is not None
        extensions.append(_profession_extension(profession_code))
    if dns_names:
        extensions.append(x509.Extension(
            x509.SubjectAlternativeName.oid, False,
            x509.SubjectAlternativeName([x509.DNSName(n) for n in dns_names])))
    # The extensions are distinct by construction (fixed OIDs, each once), so they go straight
    # into the builder instead of through add_extension's quadratic duplicate check; the other
    # fields still go through the validating setters.
    return (x509.CertificateBuilder(issuer_name=issuer.name, extensions=extensions)
            .subject_name(subject)
            .public_key(public_key)
            .serial_number(serial)
            .not_valid_before(not_before)
            .not_valid_after(end))


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
