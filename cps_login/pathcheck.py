"""Certificate path validation for card logins and mTLS clients.

cryptography's Rust verifier (RFC 5280 path building, signatures, basicConstraints, name
chaining) with an extension policy widened for the IGC-Santé profiles, which carry no SAN.
Validated paths are cached by the leaf's SHA-256: a path, once valid, stays valid until the
earliest notAfter on it, and the validity window of the leaf is checked on every call with the
injected clock. Only valid paths are cached, in a cache bounded in bytes (``ByteLru``), so that
certificates an attacker makes cannot hold the broker's memory. Revocation is not this
module's business (see ``revocation``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.x509 import verification as xv
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

from cps_login.errors import CredentialRefused
from pki.bytelru import ByteLru as ByteLru  # re-exported: the broker's caches use it too

PROFESSION_CODE_OID = ObjectIdentifier("1.2.250.1.71.1.2.7")
# Product category (SPEC §3): where the certificate's key lives. The same table as the CA's
# (pki.ca.profiles.KEY_STORAGE_CATEGORY), kept here because the broker imports no pki.ca.
PRODUCT_CATEGORY_OID = ObjectIdentifier("1.2.250.1.71.1.2.5")
_KEY_STORAGE = {0: "card", 2: "hsm", 3: "software"}
# What a cached certificate is counted beyond its DER: the parsed object, its Python wrappers,
# the dataclasses around it. Generous: tracemalloc sees ~650 bytes of Python objects per cached
# login certificate, beside its DER held by cryptography's Rust side.
ENTRY_OVERHEAD = 2048
DEFAULT_CACHE_BYTES = 32 * 1024 * 1024

# A verifier's own time only matters for the CA certificates (the leaf window is checked
# exactly, per call); rebuild it when the clock moves further than this from its time.
_VERIFIER_REFRESH = dt.timedelta(seconds=60)


@dataclass(frozen=True)
class ValidatedPath:
    leaf: x509.Certificate
    issuer: x509.Certificate
    chain: tuple[x509.Certificate, ...]        # leaf first, anchor last
    valid_until: dt.datetime


@dataclass(frozen=True)
class Holder:
    national_id: str            # the CN: "8" + RPPS
    profession_code: int | None
    given_name: str
    surname: str


def _verifier(anchors: Sequence[x509.Certificate], at: dt.datetime) -> xv.ClientVerifier:
    ee = xv.ExtensionPolicy.webpki_defaults_ee().may_be_present(
        x509.SubjectAlternativeName, xv.Criticality.AGNOSTIC, None)
    return (xv.PolicyBuilder().store(xv.Store(list(anchors))).time(at).max_chain_depth(4)
            .extension_policies(ca_policy=xv.ExtensionPolicy.webpki_defaults_ca(),
                                ee_policy=ee)
            .build_client_verifier())


class PathValidator:
    """Validates leaves against fixed trust anchors; thread-safe; caches validated paths."""

    def __init__(self, anchors: Sequence[x509.Certificate],
                 intermediates: Sequence[x509.Certificate], *, cache_size: int = 200_000,
                 cache_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        if not anchors:
            raise ValueError("no trust anchors configured")
        self._anchors = tuple(anchors)
        self._intermediates = tuple(intermediates)
        self._lock = threading.Lock()
        self._verifier: tuple[dt.datetime, xv.ClientVerifier] | None = None
        self._cache: ByteLru[bytes, ValidatedPath] = ByteLru(cache_bytes, cache_size)
        self.cache_hits = 0
        self.cache_misses = 0

    def validate(self, leaf: x509.Certificate, presented: Sequence[x509.Certificate],
                 at: dt.datetime) -> ValidatedPath:
        """The path from ``leaf`` to an anchor valid at ``at``, or CredentialRefused."""
        if at < leaf.not_valid_before_utc:
            raise CredentialRefused("not_yet_valid", leaf.not_valid_before_utc.isoformat())
        if at > leaf.not_valid_after_utc:
            raise CredentialRefused("expired", leaf.not_valid_after_utc.isoformat())
        signed = leaf.tbs_certificate_bytes + leaf.signature
        key = hashlib.sha256(signed).digest()
        cached = self._cache.get(key)
        if cached is not None and cached.valid_until >= at:
            self.cache_hits += 1
            return cached
        self.cache_misses += 1
        path = self._build(leaf, presented, at)   # raises for a path to none of our roots
        self._cache.put(key, path, len(signed) + ENTRY_OVERHEAD)
        return path

    @property
    def cache_bytes(self) -> int:
        return self._cache.bytes

    def _build(self, leaf: x509.Certificate, presented: Sequence[x509.Certificate],
               at: dt.datetime) -> ValidatedPath:
        verifier = self._verifier_at(at)
        try:
            verified = verifier.verify(leaf, [*self._intermediates, *presented])
        except xv.VerificationError as exc:
            # Unknown CA, broken signature on the chain, an expired CA...: all "unknown" outside.
            raise CredentialRefused("other_ca", str(exc).split(" (encountered")[0]) from None
        chain = tuple(verified.chain)
        if len(chain) < 2:
            raise CredentialRefused("other_ca", "a trust anchor cannot log in")
        for ca in chain[1:]:
            if not ca.not_valid_before_utc <= at <= ca.not_valid_after_utc:
                raise CredentialRefused("other_ca", f"CA {ca.subject.rfc4514_string()} "
                                                    f"not valid at {at.isoformat()}")
        valid_until = min(c.not_valid_after_utc for c in chain)
        return ValidatedPath(leaf=leaf, issuer=chain[1], chain=chain, valid_until=valid_until)

    def _verifier_at(self, at: dt.datetime) -> xv.ClientVerifier:
        with self._lock:
            current = self._verifier
            if current is None or abs(current[0] - at) > _VERIFIER_REFRESH:
                current = (at, _verifier(self._anchors, at))
                self._verifier = current
            return current[1]


def check_usage(leaf: x509.Certificate, policy_oid: str, *, client_auth: bool = True) -> None:
    """The leaf must be an authentication certificate: digitalSignature, the expected policy
    and (if it has an EKU) clientAuth. A signature (non-repudiation) certificate is refused."""
    try:
        ku = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        raise CredentialRefused("wrong_usage", "no keyUsage") from None
    if not ku.digital_signature:
        raise CredentialRefused("wrong_usage", "keyUsage lacks digitalSignature")
    try:
        policies = leaf.extensions.get_extension_for_class(x509.CertificatePolicies).value
    except x509.ExtensionNotFound:
        raise CredentialRefused("wrong_usage", "no certificatePolicies") from None
    if policy_oid not in {p.policy_identifier.dotted_string for p in policies}:
        raise CredentialRefused("wrong_usage", f"policy {policy_oid} absent")
    if client_auth:
        try:
            eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            return
        if ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
            raise CredentialRefused("wrong_usage", "extendedKeyUsage lacks clientAuth")


def key_storage_of(leaf: x509.Certificate) -> str:
    """"card", "hsm" or "software" as the certificate's product category says; "software"
    when it says nothing we know (the lowest assurance, never a guess upwards)."""
    try:
        ext = leaf.extensions.get_extension_for_oid(PRODUCT_CATEGORY_OID).value
        assert isinstance(ext, x509.UnrecognizedExtension)
        return _KEY_STORAGE.get(_der_integer(ext.value), "software")
    except (x509.ExtensionNotFound, ValueError):
        return "software"


def holder_of(leaf: x509.Certificate) -> Holder:
    """The professional named by a card certificate (CN = 8 + RPPS, profession extension)."""
    def first(oid: ObjectIdentifier) -> str:
        attrs = leaf.subject.get_attributes_for_oid(oid)
        value = attrs[0].value if attrs else ""
        return value if isinstance(value, str) else value.decode("utf-8", "replace")

    cn = first(NameOID.COMMON_NAME)
    if len(cn) != 12 or not cn.isdigit() or not cn.startswith("8"):
        raise CredentialRefused("wrong_usage", f"CN {cn!r} is not a national identifier 8+RPPS")
    code: int | None = None
    try:
        ext = leaf.extensions.get_extension_for_oid(PROFESSION_CODE_OID).value
        assert isinstance(ext, x509.UnrecognizedExtension)
        code = _der_integer(ext.value)
    except (x509.ExtensionNotFound, ValueError):
        code = None
    return Holder(national_id=cn, profession_code=code, given_name=first(NameOID.GIVEN_NAME),
                  surname=first(NameOID.SURNAME))


def _der_integer(data: bytes) -> int:
    if len(data) < 3 or data[0] != 0x02 or data[1] != len(data) - 2 or data[1] > 8:
        raise ValueError("not a small DER INTEGER")
    return int.from_bytes(data[2:], "big", signed=True)
