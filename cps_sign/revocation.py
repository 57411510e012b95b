"""Revocation data for a signing certificate: the OCSP response a B-LT signature embeds, or the
status tier now (OCSP, and the CRL for the invalidity date OCSP does not carry).

An embedded response is trusted only when signed by the certificate's issuer or by a responder
the issuer delegated (id-kp-OCSPSigning) and when it names the certificate; a verified response
is remembered by its exact bytes (pre-signed responses repeat byte for byte), never its status
alone. The live answer is cached per certificate for ``ttl`` (a warm cache for batches).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID

from pki.clock import SYSTEM_CLOCK, Clock
from pki.ocsp.response import public_key_bits
from pki.sigcheck import verify_signature

if TYPE_CHECKING:
    from cps_login.revocation import Fetcher, RevocationChecker


@dataclass(frozen=True)
class Status:
    status: str                          # good | revoked | hold | unknown
    source: str                          # embedded OCSP | OCSP | CRL
    revoked_at: dt.datetime | None = None
    reason: str | None = None
    invalidity_date: dt.datetime | None = None
    this_update: dt.datetime | None = None
    next_update: dt.datetime | None = None

    def describe(self) -> str:
        text = f"{self.status} ({self.source})"
        if self.revoked_at is not None:
            text += f", {self.reason or 'revoked'} since {self.revoked_at.isoformat()}"
        if self.invalidity_date is not None:
            text += f", key invalid since {self.invalidity_date.isoformat()}"
        return text


class Unusable(Exception):
    """This revocation data cannot be relied on (bad signature, other certificate, ...)."""


class OcspChecker:
    """Checks OCSP responses (embedded or fetched) against a certificate and its issuer."""

    def __init__(self, max_entries: int = 100_000) -> None:
        self._verified: dict[bytes, bool] = {}
        self._statuses: dict[bytes, Status] = {}
        self._ids: dict[bytes, tuple[dict[str, bytes], dict[str, bytes]]] = {}
        self._delegated: dict[bytes, bool] = {}
        self._max = max_entries
        self._lock = threading.Lock()

    def _issuer_hashes(self, issuer: x509.Certificate
                       ) -> tuple[dict[str, bytes], dict[str, bytes]]:
        fp = issuer.fingerprint(hashes.SHA256())
        known = self._ids.get(fp)
        if known is None:
            name, bits = issuer.subject.public_bytes(), public_key_bits(issuer)
            known = ({h: hashlib.new(h, name).digest() for h in ("sha1", "sha256")},
                     {h: hashlib.new(h, bits).digest() for h in ("sha1", "sha256")})
            with self._lock:
                self._ids[fp] = known
        return known

    def status(self, der: bytes, cert: x509.Certificate, issuer: x509.Certificate,
               source: str = "embedded OCSP") -> Status:
        """The status ``der`` gives ``cert``; a usable answer is remembered for these exact
        bytes, certificate and issuer (pre-signed responses repeat across a batch)."""
        memo = (hashlib.sha256(der).digest() + cert.fingerprint(hashes.SHA256())
                + issuer.fingerprint(hashes.SHA256()) + source.encode())
        known = self._statuses.get(memo)
        if known is not None:
            return known
        status = self._status(der, cert, issuer, source)
        with self._lock:
            if len(self._statuses) >= self._max // 5:     # ~0.5 KiB each
                self._statuses.clear()
            self._statuses[memo] = status
        return status

    def _status(self, der: bytes, cert: x509.Certificate, issuer: x509.Certificate,
                source: str) -> Status:
        try:
            resp = ocsp.load_der_ocsp_response(der)
        except ValueError:
            raise Unusable("OCSP response does not parse") from None
        if resp.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
            raise Unusable(f"OCSP status {resp.response_status.name}")
        names, keys = self._issuer_hashes(issuer)
        self._check_signature(der, resp, issuer, keys)
        singles = list(resp.responses)
        for single in singles:
            algorithm = single.hash_algorithm.name
            if (algorithm in names and single.serial_number == cert.serial_number
                    and single.issuer_name_hash == names[algorithm]
                    and single.issuer_key_hash == keys[algorithm]):
                extensions = resp.single_extensions if len(singles) == 1 else None
                return _single_status(single, source, extensions)
        raise Unusable("OCSP response does not name the signing certificate")

    def _check_signature(self, der: bytes, resp: ocsp.OCSPResponse,
                         issuer: x509.Certificate, keys: dict[str, bytes]) -> None:
        memo = hashlib.sha256(der).digest() + issuer.fingerprint(hashes.SHA256())
        if self._verified.get(memo):
            return
        tbs, sig, alg = resp.tbs_response_bytes, resp.signature, resp.signature_hash_algorithm
        by_issuer = (resp.responder_name == issuer.subject if resp.responder_name is not None
                     else resp.responder_key_hash == keys["sha1"])
        ok = by_issuer and verify_signature(issuer.public_key(), sig, tbs, alg)
        if not ok:
            ok = any(self._is_delegated(r, issuer)
                     and verify_signature(r.public_key(), sig, tbs, alg)
                     for r in resp.certificates)
        if not ok:
            raise Unusable("OCSP response not signed by the issuer or its delegated responder")
        with self._lock:
            if len(self._verified) >= self._max:
                self._verified.clear()
            self._verified[memo] = True

    def _is_delegated(self, responder: x509.Certificate, issuer: x509.Certificate) -> bool:
        memo = hashlib.sha256(responder.tbs_certificate_bytes + responder.signature
                              + issuer.fingerprint(hashes.SHA256())).digest()
        known = self._delegated.get(memo)
        if known is None:
            try:
                responder.verify_directly_issued_by(issuer)
                eku = responder.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
                known = ExtendedKeyUsageOID.OCSP_SIGNING in eku
            except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
                known = False
            with self._lock:
                self._delegated[memo] = known
        return known


def _single_status(single: ocsp.OCSPSingleResponse, source: str,
                   extensions: x509.Extensions | None) -> Status:
    this, nxt = single.this_update_utc, single.next_update_utc
    status = single.certificate_status
    if status == ocsp.OCSPCertStatus.GOOD:
        return Status("good", source, this_update=this, next_update=nxt)
    if status == ocsp.OCSPCertStatus.UNKNOWN:
        return Status("unknown", source, this_update=this, next_update=nxt)
    reason = single.revocation_reason
    invalidity = None
    for ext in extensions or ():     # RFC 6960 §4.4: CRL entry extensions may appear here
        if isinstance(ext.value, x509.InvalidityDate):
            invalidity = ext.value.invalidity_date_utc
    hold = reason == x509.ReasonFlags.certificate_hold
    return Status("hold" if hold else "revoked", source, single.revocation_time_utc,
                  reason.value if reason else None, invalidity, this, nxt)


def ca_status_in(crl: x509.CertificateRevocationList, ca: x509.Certificate,
                 root: x509.Certificate, now: dt.datetime) -> Status | None:
    """The CA's status in ``crl`` when it is a usable CRL of ``root`` (named and signed by it,
    not past its nextUpdate); None otherwise."""
    root_key = root.public_key()
    if (not isinstance(root_key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey)
            or crl.issuer != root.subject or not crl.is_signature_valid(root_key)
            or (crl.next_update_utc is not None and crl.next_update_utc < now)):
        return None
    entry = crl.get_revoked_certificate_by_serial_number(ca.serial_number)
    if entry is None:
        return Status("good", "root CRL", this_update=crl.last_update_utc,
                      next_update=crl.next_update_utc)
    try:
        reason: str | None = entry.extensions.get_extension_for_class(
            x509.CRLReason).value.reason.value
    except x509.ExtensionNotFound:
        reason = None
    try:
        invalid: dt.datetime | None = entry.extensions.get_extension_for_class(
            x509.InvalidityDate).value.invalidity_date_utc
    except x509.ExtensionNotFound:
        invalid = None
    return Status("hold" if reason == "certificateHold" else "revoked", "root CRL",
                  entry.revocation_date_utc, reason, invalid, crl.last_update_utc,
                  crl.next_update_utc)


class RootCrls:
    """Roots' CRLs given as files (``cps-verify --root-crl``): the issuing CA's status without
    the network. A CRL past its nextUpdate is not used (the report then says so). Of the files
    (and, online, the status tier's CRL: ``fallback``) that answer for a root, the newest
    (latest thisUpdate) decides, whatever order they were given in: a root's CRL is current
    for a year, and an older one does not know a revocation since."""

    def __init__(self, crls: list[x509.CertificateRevocationList], clock: Clock = SYSTEM_CLOCK,
                 fallback: LiveRevocation | None = None) -> None:
        self._crls = crls
        self._clock = clock
        self._fallback = fallback

    def ca_status(self, ca: x509.Certificate, root: x509.Certificate) -> Status | None:
        now = self._clock.now()
        found = [Status(status.status, "root CRL file", status.revoked_at, status.reason,
                        status.invalidity_date, status.this_update, status.next_update)
                 for status in (ca_status_in(crl, ca, root, now) for crl in self._crls)
                 if status is not None]
        if self._fallback is not None:
            live = self._fallback.ca_status(ca, root)
            if live is not None:
                found.append(live)
        if not found:
            return None
        oldest = dt.datetime.min.replace(tzinfo=dt.UTC)
        return max(found, key=lambda status: status.this_update or oldest)


class LiveRevocation:
    """The status tier's answer now, through ``cps_login.revocation.RevocationChecker`` (OCSP at
    the certificate's AIA URL, the CRL when OCSP cannot answer), plus the invalidity date of a
    revoked certificate from its CRL entry. Cached per certificate for ``ttl``."""

    def __init__(self, clock: Clock = SYSTEM_CLOCK, *, ttl: dt.timedelta = dt.timedelta(
            seconds=60), timeout: float = 2.0, checker: RevocationChecker | None = None,
            fetcher: Fetcher | None = None) -> None:
        from cps_login.httpfetch import HttpFetcher
        from cps_login.revocation import RevocationChecker

        self._clock = clock
        self._fetcher: Fetcher = fetcher or HttpFetcher()
        self._checker = checker or RevocationChecker(clock, fetcher=self._fetcher,
                                                     timeout=timeout)
        self._timeout = timeout
        self._ttl = ttl
        self._cache: dict[bytes, tuple[dt.datetime, Status]] = {}
        self._ca_cache: dict[bytes, tuple[dt.datetime, Status | None]] = {}
        self._lock = threading.Lock()

    def status(self, cert: x509.Certificate, issuer: x509.Certificate) -> Status:
        """The current status, or ``Unusable`` when the status tier gives no usable answer."""
        from cps_login.errors import RevocationUnavailable

        key = cert.fingerprint(hashes.SHA256())
        now = self._clock.now()
        cached = self._cache.get(key)
        if cached is not None and now - cached[0] < self._ttl:
            return cached[1]
        try:
            answer = self._checker.status(cert, issuer)
        except RevocationUnavailable as exc:
            raise Unusable(str(exc)) from None
        source = "OCSP" if answer.source == "ocsp" else "CRL"
        status = Status({"status_unknown": "unknown"}.get(answer.status, answer.status), source,
                        answer.revoked_at, answer.reason)
        if status.status == "revoked":
            status = Status(status.status, source, status.revoked_at, status.reason,
                            self._invalidity_date(cert, issuer))
        if status.status != "unknown":     # a certificate just issued is known a moment later
            with self._lock:
                if len(self._cache) > 100_000:
                    self._cache.clear()
                self._cache[key] = (now, status)
        return status

    def ca_status(self, ca: x509.Certificate, root: x509.Certificate) -> Status | None:
        """The issuing CA's status in the root's CRL (its CRL distribution point, signed by the
        root, not past its nextUpdate), or None when no usable CRL answers. A root's CRL is a
        ceremony, published every few months: cached per CA for ``ttl`` either way."""
        from cps_login.httpfetch import FetchError

        key = b"ca:" + ca.fingerprint(hashes.SHA256())
        now = self._clock.now()
        cached = self._ca_cache.get(key)
        if cached is not None and now - cached[0] < self._ttl:
            return cached[1]
        status: Status | None = None
        for url in _crl_urls(ca, (x509.CRLDistributionPoints,)):
            try:
                crl = x509.load_der_x509_crl(self._fetcher.get(url, self._timeout))
            except (FetchError, ValueError, OSError):
                continue
            status = ca_status_in(crl, ca, root, now)
            if status is not None:
                break
        with self._lock:
            if len(self._ca_cache) > 1_000:
                self._ca_cache.clear()
            self._ca_cache[key] = (now, status)
        return status

    def _invalidity_date(self, cert: x509.Certificate, issuer: x509.Certificate
                         ) -> dt.datetime | None:
        """From the certificate's entry in its (delta, then full) CRL, signed by the issuer."""
        from cps_login.httpfetch import FetchError

        urls = _crl_urls(cert, (x509.FreshestCRL, x509.CRLDistributionPoints))
        key = issuer.public_key()
        for url in urls:
            try:
                crl = x509.load_der_x509_crl(self._fetcher.get(url, self._timeout))
            except (FetchError, ValueError, OSError):
                continue
            if (not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey)
                    or crl.issuer != issuer.subject or not crl.is_signature_valid(key)):
                continue
            entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
            if entry is None:
                continue
            try:
                return entry.extensions.get_extension_for_class(
                    x509.InvalidityDate).value.invalidity_date_utc
            except x509.ExtensionNotFound:
                return None
        return None


def _crl_urls(cert: x509.Certificate,
              classes: tuple[type[x509.FreshestCRL] | type[x509.CRLDistributionPoints], ...]
              ) -> list[str]:
    """The HTTP(S) URLs of the certificate's CRL distribution points, in ``classes`` order."""
    urls: list[str] = []
    for ext_class in classes:
        try:
            points = cert.extensions.get_extension_for_class(ext_class).value
        except x509.ExtensionNotFound:
            continue
        urls += [n.value for p in points for n in (p.full_name or [])
                 if isinstance(n, x509.UniformResourceIdentifier)]
    return urls
