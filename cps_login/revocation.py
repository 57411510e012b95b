"""Live revocation status of a certificate: OCSP first, the CRL when OCSP cannot answer.

OCSP: POST to the certificate's AIA OCSP URL (or a configured one) with a short timeout; the
answer must be ``successful``, name our certificate (CertID with the issuer's name and key
hashes), be signed by the issuing CA or by a delegated responder that the issuing CA certified
with id-kp-OCSPSigning, and be fresh (thisUpdate not in the future nor older than the maximum
age, nextUpdate not passed). Anything else counts as "OCSP unavailable" and the CRL of the
certificate's distribution point is tried (signature by the issuer, nextUpdate not passed, plus
the delta CRL when the certificate names one). When both fail, ``RevocationUnavailable`` is
raised and the caller refuses: fail closed.

The broker asks the status tier over HTTP only (it holds no responder and no CA): a status
tier that is down, slow or stale makes OCSP unusable, and the CRL is fetched from the same tier.
A fetched CRL is reused for ``crl_refresh`` (60 s) and never past that: a failed refetch makes
it unusable rather than answering from a days-old list, so an outage of the status tier refuses
logins (503 ``revocation_unavailable``) within that delay, and the first login after the tier
returns succeeds again (no state to reset).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import threading
from dataclasses import dataclass
from typing import Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID

from cps_login.errors import RevocationUnavailable
from cps_login.httpfetch import FetchError, HttpFetcher
from pki.clock import Clock
from pki.ocsp.response import public_key_bits
from pki.sigcheck import verify_signature


class Fetcher(Protocol):
    def post(self, url: str, body: bytes, content_type: str, timeout: float) -> bytes: ...

    def get(self, url: str, timeout: float) -> bytes: ...


@dataclass(frozen=True)
class RevocationStatus:
    status: str                 # good | revoked | hold | status_unknown
    source: str                 # ocsp | crl
    reason: str | None = None
    revoked_at: dt.datetime | None = None
    ocsp_problem: str | None = None   # why OCSP was not used, when the CRL answered


class _Unusable(Exception):
    """This source gave no usable answer (unreachable, unsigned, stale, ...)."""


def _urls(cert: x509.Certificate, ext_class: type[x509.CRLDistributionPoints]
          | type[x509.FreshestCRL]) -> list[str]:
    try:
        points = cert.extensions.get_extension_for_class(ext_class).value
    except x509.ExtensionNotFound:
        return []
    return [name.value for point in points for name in (point.full_name or [])
            if isinstance(name, x509.UniformResourceIdentifier)]


def ocsp_urls(cert: x509.Certificate) -> list[str]:
    try:
        aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except x509.ExtensionNotFound:
        return []
    return [d.access_location.value for d in aia
            if d.access_method == AuthorityInformationAccessOID.OCSP
            and isinstance(d.access_location, x509.UniformResourceIdentifier)]


@dataclass(frozen=True)
class _IssuerFacts:
    """Per issuing CA, computed once: the CertID hashes."""

    certificate: x509.Certificate
    public_key: object
    name_hash: dict[str, bytes]
    key_hash: dict[str, bytes]
    fingerprint: bytes


def _issuer_facts(issuer: x509.Certificate) -> _IssuerFacts:
    name_der = issuer.subject.public_bytes()
    key_bits = public_key_bits(issuer)
    names = {h: hashlib.new(h, name_der).digest() for h in ("sha1", "sha256")}
    keys = {h: hashlib.new(h, key_bits).digest() for h in ("sha1", "sha256")}
    return _IssuerFacts(issuer, issuer.public_key(), names, keys,
                        issuer.fingerprint(hashes.SHA256()))


def ocsp_request_der(facts: _IssuerFacts, serial: int) -> bytes:
    """One SHA-1 CertID, no nonce, no extensions: the RFC 5019 shape the responder answers from
    pre-signed bytes (built by cryptography from the issuer hashes computed once)."""
    return (ocsp.OCSPRequestBuilder()
            .add_certificate_by_hash(facts.name_hash["sha1"], facts.key_hash["sha1"], serial,
                                     hashes.SHA1())  # noqa: S303 - CertID hash (RFC 5019)
            .build().public_bytes(serialization.Encoding.DER))


@dataclass
class _CachedCrl:
    crl: x509.CertificateRevocationList
    fetched_at: dt.datetime


class RevocationChecker:
    def __init__(self, clock: Clock, *, fetcher: Fetcher | None = None,
                 ocsp_url: str | None = None, timeout: float = 2.0,
                 max_age: dt.timedelta = dt.timedelta(days=2),
                 skew: dt.timedelta = dt.timedelta(minutes=5),
                 crl_refresh: dt.timedelta = dt.timedelta(seconds=60)) -> None:
        self._clock = clock
        self._fetcher = fetcher or HttpFetcher()
        self._ocsp_url = ocsp_url
        self._timeout = timeout
        self._max_age = max_age
        self._skew = skew
        self._crl_refresh = crl_refresh
        self._responders: dict[tuple[bytes, bytes, bytes], tuple[bool, object]] = {}
        self._verified: dict[bytes, dt.datetime] = {}   # signed answer -> signer's notAfter
        self._requests: dict[tuple[bytes, int], bytes] = {}   # (issuer, serial) -> request DER
        self._issuers: dict[int, _IssuerFacts] = {}
        self._crls: dict[str, _CachedCrl] = {}
        self._urls: dict[int, tuple[x509.Certificate, list[str]]] = {}
        self._lock = threading.Lock()

    # --- entry point --------------------------------------------------------------------
    def status(self, cert: x509.Certificate, issuer: x509.Certificate) -> RevocationStatus:
        try:
            return self._ocsp(cert, issuer)
        except _Unusable as exc:
            ocsp_problem = str(exc)
        try:
            crl_status = self._crl(cert, issuer)
        except _Unusable as exc:
            raise RevocationUnavailable(f"OCSP: {ocsp_problem}; CRL: {exc}") from None
        return RevocationStatus(crl_status.status, "crl", crl_status.reason,
                                crl_status.revoked_at, ocsp_problem=ocsp_problem)

    # --- OCSP ---------------------------------------------------------------------------
    def _ocsp(self, cert: x509.Certificate, issuer: x509.Certificate) -> RevocationStatus:
        urls = [self._ocsp_url] if self._ocsp_url else self._ocsp_urls(cert)
        if not urls:
            raise _Unusable("certificate names no OCSP responder")
        facts = self._facts(issuer)
        serial = cert.serial_number
        request = self._requests.get((facts.fingerprint, serial))
        if request is None:
            request = ocsp_request_der(facts, serial)   # the same bytes every time: built once
            with self._lock:
                if len(self._requests) >= 100_000:
                    self._requests.clear()
                self._requests[(facts.fingerprint, serial)] = request
        try:
            data = self._fetcher.post(urls[0], request, "application/ocsp-request",
                                      self._timeout)
        except FetchError as exc:
            raise _Unusable(str(exc)) from None
        try:
            resp = ocsp.load_der_ocsp_response(data)
        except ValueError:
            raise _Unusable("OCSP answer does not parse") from None
        if resp.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
            raise _Unusable(f"OCSP status {resp.response_status.name}")
        self._check_ocsp_signature(resp, facts)
        single = self._matching(resp, cert, facts)
        self._fresh(single.this_update_utc, single.next_update_utc)
        status = single.certificate_status
        if status == ocsp.OCSPCertStatus.GOOD:
            return RevocationStatus("good", "ocsp")
        if status == ocsp.OCSPCertStatus.UNKNOWN:
            return RevocationStatus("status_unknown", "ocsp")
        reason = single.revocation_reason
        return RevocationStatus("hold" if reason == x509.ReasonFlags.certificate_hold
                                else "revoked", "ocsp", reason.value if reason else None,
                                single.revocation_time_utc)

    def _fresh(self, this_update: dt.datetime, next_update: dt.datetime | None) -> None:
        now = self._clock.now()
        if this_update > now + self._skew:
            raise _Unusable("OCSP thisUpdate is in the future")
        if this_update < now - self._max_age:
            raise _Unusable("OCSP answer older than the maximum age")
        if next_update is not None and next_update < now - self._skew:
            raise _Unusable("OCSP answer past its nextUpdate")

    def _ocsp_urls(self, cert: x509.Certificate) -> list[str]:
        """The leaf's AIA OCSP URLs, memoised per certificate object (the broker reuses the
        parsed leaf of identical DER); the entry holds the object, so its id stays unique."""
        cached = self._urls.get(id(cert))
        if cached is not None and cached[0] is cert:
            return cached[1]
        urls = ocsp_urls(cert)
        with self._lock:
            if len(self._urls) >= 100_000:
                self._urls.clear()
            self._urls[id(cert)] = (cert, urls)
        return urls

    def _facts(self, issuer: x509.Certificate) -> _IssuerFacts:
        facts = self._issuers.get(id(issuer))
        if facts is None or facts.certificate is not issuer:
            facts = _issuer_facts(issuer)
            with self._lock:
                if len(self._issuers) > 1000:
                    self._issuers.clear()
                self._issuers[id(issuer)] = facts
        return facts

    @staticmethod
    def _matching(resp: ocsp.OCSPResponse, cert: x509.Certificate,
                  facts: _IssuerFacts) -> ocsp.OCSPSingleResponse:
        for single in resp.responses:
            algorithm = single.hash_algorithm.name
            if algorithm not in facts.name_hash:
                continue
            if (single.serial_number == cert.serial_number
                    and single.issuer_name_hash == facts.name_hash[algorithm]
                    and single.issuer_key_hash == facts.key_hash[algorithm]):
                return single
        raise _Unusable("OCSP answer does not name the certificate")

    def _check_ocsp_signature(self, resp: ocsp.OCSPResponse, facts: _IssuerFacts) -> None:
        """The answer is signed by the issuer or by a responder it delegated to.

        A pre-signed answer comes back byte for byte until it is re-signed, so a signature
        already verified over exactly these bytes is not verified again — until the signer's
        certificate expires. Only the signature is remembered: status and freshness are read
        from every answer, every time."""
        issuer = facts.certificate
        tbs, sig, alg = resp.tbs_response_bytes, resp.signature, resp.signature_hash_algorithm
        signed = hashlib.sha256(tbs + sig).digest() + facts.fingerprint
        now = self._clock.now()
        with self._lock:
            until = self._verified.get(signed)
        if until is not None and now <= until:
            return
        by_issuer = (resp.responder_name == issuer.subject if resp.responder_name is not None
                     else resp.responder_key_hash == facts.key_hash["sha1"])
        if by_issuer and verify_signature(facts.public_key, sig, tbs, alg):
            self._remember(signed, issuer.not_valid_after_utc)
            return
        for responder in resp.certificates:
            key = self._delegated_key(responder, facts)
            if key is not None and verify_signature(key, sig, tbs, alg):
                self._remember(signed, responder.not_valid_after_utc)
                return
        raise _Unusable("OCSP answer not signed by the issuer or its delegated responder")

    def _remember(self, signed: bytes, until: dt.datetime) -> None:
        with self._lock:
            if len(self._verified) >= 100_000:
                self._verified.clear()
            self._verified[signed] = until

    def _delegated_key(self, responder: x509.Certificate, facts: _IssuerFacts) -> object:
        """The public key of a responder certificate the issuer delegated OCSP signing to and
        valid now, or None."""
        now = self._clock.now()
        if not responder.not_valid_before_utc - self._skew <= now <= responder.not_valid_after_utc:
            return None
        # Keyed on the exact signed bytes: a certificate whose TBS or signature differs in any
        # bit is verified afresh.
        key = (responder.tbs_certificate_bytes, responder.signature, facts.fingerprint)
        with self._lock:
            known = self._responders.get(key)
        if known is None:
            known = (_is_delegated_responder(responder, facts.certificate),
                     responder.public_key())
            with self._lock:
                if len(self._responders) > 1000:
                    self._responders.clear()
                self._responders[key] = known
        return known[1] if known[0] else None

    # --- CRL ----------------------------------------------------------------------------
    def _crl(self, cert: x509.Certificate, issuer: x509.Certificate) -> RevocationStatus:
        urls = _urls(cert, x509.CRLDistributionPoints)
        if not urls:
            raise _Unusable("certificate names no CRL distribution point")
        full = self._load_crl(urls[0], issuer, delta=False)
        status = _entry_status(full, cert.serial_number)
        for delta_url in _urls(cert, x509.FreshestCRL)[:1]:
            try:
                delta = self._load_crl(delta_url, issuer, delta=True)
            except _Unusable:
                break   # the full CRL, within its validity, still answers
            delta_status = _entry_status(delta, cert.serial_number)
            if delta_status is not None:
                status = None if delta_status.status == "removed" else delta_status
        return status or RevocationStatus("good", "crl")

    def _load_crl(self, url: str, issuer: x509.Certificate,
                  delta: bool) -> x509.CertificateRevocationList:
        now = self._clock.now()
        with self._lock:
            cached = self._crls.get(url)
        if cached is not None and now - cached.fetched_at < self._crl_refresh:
            return self._still_valid(cached.crl, url, now)
        try:
            data = self._fetcher.get(url, self._timeout)
            crl = x509.load_der_x509_crl(data)
        except (FetchError, ValueError) as exc:
            raise _Unusable(f"{url}: {exc}") from None
        issuer_key = issuer.public_key()
        if not isinstance(issuer_key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey) \
                or crl.issuer != issuer.subject or not crl.is_signature_valid(issuer_key):
            raise _Unusable(f"{url}: CRL not signed by the issuing CA")
        is_delta = any(isinstance(e.value, x509.DeltaCRLIndicator) for e in crl.extensions)
        if is_delta != delta:
            raise _Unusable(f"{url}: expected a {'delta' if delta else 'full'} CRL")
        self._still_valid(crl, url, now)
        with self._lock:
            self._crls[url] = _CachedCrl(crl, now)
        return crl

    def _still_valid(self, crl: x509.CertificateRevocationList, url: str,
                     now: dt.datetime) -> x509.CertificateRevocationList:
        next_update = crl.next_update_utc
        if next_update is None or next_update < now - self._skew:
            raise _Unusable(f"{url}: CRL past its nextUpdate")
        if crl.last_update_utc > now + self._skew:
            raise _Unusable(f"{url}: CRL thisUpdate in the future")
        return crl


def _entry_status(crl: x509.CertificateRevocationList, serial: int) -> RevocationStatus | None:
    entry = crl.get_revoked_certificate_by_serial_number(serial)
    if entry is None:
        return None
    try:
        reason: x509.ReasonFlags | None = entry.extensions.get_extension_for_class(
            x509.CRLReason).value.reason
    except x509.ExtensionNotFound:
        reason = None
    if reason == x509.ReasonFlags.remove_from_crl:
        return RevocationStatus("removed", "crl")
    return RevocationStatus("hold" if reason == x509.ReasonFlags.certificate_hold else "revoked",
                            "crl", reason.value if reason else None, entry.revocation_date_utc)


def _is_delegated_responder(responder: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        responder.verify_directly_issued_by(issuer)
        eku = responder.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return False
    return ExtendedKeyUsageOID.OCSP_SIGNING in eku

