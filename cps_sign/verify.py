"""Validation of CAdES and PAdES baseline signatures (ETSI EN 319 102-1 vocabulary).

Our rules, in order; the first one broken ends with its verdict:

1. the CMS parses, is SignedData with one SignerInfo, signed attributes with content-type,
   message-digest and signing-certificate-v2 naming a certificate it carries
   (TOTAL_FAILED/FORMAT_FAILURE, INDETERMINATE/NO_SIGNING_CERTIFICATE_FOUND);
2. the content's SHA-256 is the message-digest (TOTAL_FAILED/HASH_FAILURE), the signature over
   the signed attributes verifies with the certificate's key (TOTAL_FAILED/SIG_CRYPTO_FAILURE);
3. the certificate chains to one of our roots (INDETERMINATE/NO_CERTIFICATE_CHAIN_FOUND) and is
   a signature certificate: nonRepudiation and the signature policy OID — an authentication key
   is refused here (INDETERMINATE/CHAIN_CONSTRAINTS_FAILURE);
4. the signing time: the time stamp's genTime when the signature carries a valid one from a
   TSA of our PKI (id-kp-timeStamping) over its signature value, else the claimed signing-time
   with no proof (INDETERMINATE/NO_POE for a time stamp that does not verify);
5. the certificate was valid then (TOTAL_FAILED/EXPIRED or NOT_YET_VALID when a time stamp
   proves it; INDETERMINATE/OUT_OF_BOUNDS_NO_POE when expired now and nothing proves when);
6. its revocation status at the signing time: the status tier now when reachable (it knows
   revocations made after the signature, and the invalidity date of a compromised key), else
   the OCSP response the B-LT signature embeds. Revoked (for keyCompromise: from its invalidity
   date) at or before the signing time: TOTAL_FAILED/REVOKED; on hold then: INDETERMINATE/
   TRY_LATER; revoked later: passes when a time stamp proves the signature came first,
   INDETERMINATE/REVOKED_NO_POE when nothing does; no revocation data: INDETERMINATE/TRY_LATER;
7. with the status tier, the issuing CA in the root's CRL: revoked or held at the signing time,
   or since then with no time stamp: INDETERMINATE/REVOKED_CA_NO_POE (no root CRL: not checked).

Parsing is asn1crypto's, signatures cryptography's; chain building is cryptography's RFC 5280
verifier. Per-certificate work (parsing, the path, the TSA's path, OCSP response signatures) is
memoised by exact bytes, so a batch pays for each card and each responder answer once.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from asn1crypto import cms
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509 import verification as xv
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cps_sign import fastcms
from cps_sign import report as r
from cps_sign.cmsparts import SignedParts, TstParts, from_signed_data, oid_name, tst_from_token
from cps_sign.report import Report, Verdict
from cps_sign.revocation import LiveRevocation, OcspChecker, RootCrls, Status, Unusable
from pki.bytelru import ByteLru
from pki.clock import SYSTEM_CLOCK, Clock

if TYPE_CHECKING:
    from cps_sign.pdf import PdfSignature

HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha256": hashes.SHA256, "sha384": hashes.SHA384, "sha512": hashes.SHA512}
# What parsing hostile bytes raises, here or in cryptography's certificate parsing (x509
# InvalidVersion, DuplicateExtension, ... are plain Exceptions there): a format failure.
_PARSE_ERRORS = (Exception,)
_CACHE_BYTES = 64 * 1024 * 1024     # per cache: parsed certificates and paths of our own PKI
_WEIGHT = 3                         # a parsed certificate weighs about three times its DER
MAX_SIGNATURE = 4 * 1024 * 1024


@dataclass(frozen=True)
class _Path:
    leaf: x509.Certificate
    issuer: x509.Certificate


@dataclass(frozen=True)
class _TimeStamp:
    gen_time: dt.datetime
    tsa: str
    cert: x509.Certificate
    issuer: x509.Certificate | None          # the TSA certificate's CA, when found


def _malformed(what: str, exc: Exception, fmt: str = "cades") -> Report:
    return Report(r.TOTAL_FAILED, r.FORMAT_FAILURE,
                  f"malformed {what}: {type(exc).__name__}: {exc}"[:300], format=fmt)


def _digest(name: str, data: bytes) -> bytes:
    if name not in HASHES:
        raise Verdict(r.TOTAL_FAILED, r.FORMAT_FAILURE, f"digest algorithm {name} not accepted")
    digest: bytes = hashlib.new(name, data).digest()
    return digest


def _check_raw_signature(cert: x509.Certificate, signature: bytes, data: bytes,
                         sig_algo: str, digest_name: str) -> bool:
    try:
        key = cert.public_key()
    except (UnsupportedAlgorithm, ValueError):
        return False
    algorithm = HASHES[digest_name]()
    try:
        if isinstance(key, rsa.RSAPublicKey):
            pad: padding.AsymmetricPadding = padding.PKCS1v15()
            if sig_algo == "rsassa_pss":
                pad = padding.PSS(padding.MGF1(algorithm), padding.PSS.AUTO)
            key.verify(signature, data, pad, algorithm)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, data, ec.ECDSA(algorithm))
        else:
            return False
    except (InvalidSignature, ValueError, UnsupportedAlgorithm):
        return False
    return True


def national_id(cert: x509.Certificate) -> str | None:
    values = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    cn = values[0].value if values else None
    return cn if isinstance(cn, str) else None


class Verifier:
    """Validates signatures against ``anchors`` (the IGC-Santé roots); thread-safe.

    ``intermediates``: CA certificates to build paths with besides those a signature carries.
    ``sign_policies``: the certificate policy OIDs of signature certificates.
    ``live``: revocation from the status tier (None: only what signatures embed).
    ``root_crls``: roots' CRLs given as files, for the issuing CA's status (offline too).
    ``pdf_reader``: how a PDF's signature is read (default in process; a public service gives
    ``cps_sign.pdf.read_pdf_signature_isolated``: PdfBusy then escapes ``verify_pades``)."""

    def __init__(self, anchors: Sequence[x509.Certificate],
                 intermediates: Sequence[x509.Certificate], sign_policies: Sequence[str], *,
                 live: LiveRevocation | None = None, clock: Clock = SYSTEM_CLOCK,
                 fast: bool = True, root_crls: RootCrls | None = None,
                 pdf_reader: Callable[[bytes, str], PdfSignature] | None = None) -> None:
        if not anchors:
            raise ValueError("no trust anchor: the IGC-Santé root certificate is needed")
        self._anchors = list(anchors)
        self._intermediates = list(intermediates)
        self._policies = frozenset(sign_policies)
        self._store = xv.Store(self._anchors)
        self._live = live
        self._ca_status: RootCrls | LiveRevocation | None = root_crls or live
        self._pdf_reader = pdf_reader
        self._clock = clock
        self._ocsp = OcspChecker()
        # What an anonymous caller sends is never kept: certificates and paths are cached only
        # once they chain to an IGC-Santé root; a failure is remembered by the SHA-256 of the
        # certificate (its verdict is a few hundred bytes). Every cache is bounded in bytes.
        self._certs: ByteLru[bytes, x509.Certificate] = ByteLru(_CACHE_BYTES)
        self._paths: ByteLru[bytes, _Path] = ByteLru(_CACHE_BYTES)
        self._tsas: ByteLru[bytes, bool] = ByteLru(_CACHE_BYTES // 16)
        self._failed: ByteLru[bytes, Verdict] = ByteLru(_CACHE_BYTES // 16)
        self._fast = fast       # the fast CMS reader first (False: asn1crypto's only)

    # --- entry points -------------------------------------------------------------------
    def verify_cades(self, content: bytes | None, signature: bytes) -> Report:
        """A detached (or enveloping, when ``content`` is None) CAdES signature."""
        try:
            parts = self._parts(signature)
            if content is None:
                if parts.econtent is None:
                    raise Verdict(r.INDETERMINATE, r.SIGNED_DATA_NOT_FOUND,
                                  "detached signature: the signed file is needed")
                content = parts.econtent
            data = content
            return self._verify(parts, lambda name: _digest(name, data), [], "cades")
        except Verdict as verdict:
            return Report(verdict.indication, verdict.sub_indication, verdict.detail)
        except _PARSE_ERRORS as exc:
            return _malformed("signature", exc)

    def verify_cades_digest(self, sha256: bytes, signature: bytes) -> Report:
        """A detached CAdES signature of content the caller hashed (SHA-256) itself."""
        def digest_of(name: str) -> bytes:
            if name != "sha256":
                raise Verdict(r.INDETERMINATE, r.SIGNED_DATA_NOT_FOUND,
                              f"signed with {name}: the content itself is needed")
            return sha256

        try:
            return self._verify(self._parts(signature), digest_of, [], "cades")
        except Verdict as verdict:
            return Report(verdict.indication, verdict.sub_indication, verdict.detail)
        except _PARSE_ERRORS as exc:
            return _malformed("signature", exc)

    def _parts(self, signature: bytes) -> SignedParts:
        """The fast reader for the usual shape, asn1crypto's classes for anything else."""
        if len(signature) > MAX_SIGNATURE:
            raise Verdict(r.TOTAL_FAILED, r.FORMAT_FAILURE, "signature file too large")
        if self._fast:
            try:
                return fastcms.signed_parts(signature)
            except fastcms.Unfamiliar:
                pass
        info = cms.ContentInfo.load(signature, strict=True)
        if oid_name(info["content_type"]) != "signed_data":
            raise Verdict(r.TOTAL_FAILED, r.FORMAT_FAILURE, "not a CMS SignedData")
        return from_signed_data(info["content"])

    def verify_pades(self, pdf: bytes, client: str = "") -> Report:
        """The last signature of a PDF: byte-range digest and DSS from pyHanko's reader."""
        from cps_sign.pdf import PdfBusy, read_pdf_signature

        try:
            found = (self._pdf_reader(pdf, client) if self._pdf_reader is not None
                     else read_pdf_signature(pdf))
            parts = from_signed_data(found.signed_data)
            return self._verify(parts, found.digest_of, found.ocsp, "pades")
        except PdfBusy:
            raise
        except Verdict as verdict:
            return Report(verdict.indication, verdict.sub_indication, verdict.detail,
                          format="pades")
        except _PARSE_ERRORS as exc:
            return _malformed("PDF signature", exc, "pades")

    # --- the rules ----------------------------------------------------------------------
    def _verify(self, parts: SignedParts, digest_of: Callable[[str], bytes],
                extra_ocsp: list[bytes], fmt: str) -> Report:
        if parts.message_digest is None or not parts.has_content_type:
            raise Verdict(r.TOTAL_FAILED, r.FORMAT_FAILURE,
                          "message-digest or content-type attribute missing")
        cert_der = self._signing_certificate(parts)
        cert = self._cert(cert_der)
        certs = list(parts.certs)
        signer, serial = national_id(cert), f"{cert.serial_number:X}"

        def fail(verdict: Verdict, **more: object) -> Report:
            return Report(verdict.indication, verdict.sub_indication, verdict.detail,
                          format=fmt, signer=signer, certificate_serial=serial,
                          **more)  # type: ignore[arg-type]

        try:
            if digest_of(parts.digest_name) != parts.message_digest:
                raise Verdict(r.TOTAL_FAILED, r.HASH_FAILURE,
                              "the content is not the one signed (message-digest differs)")
            if not _check_raw_signature(cert, parts.signature, parts.signed_attrs,
                                        parts.sig_algo, parts.digest_name):
                raise Verdict(r.TOTAL_FAILED, r.SIG_CRYPTO_FAILURE,
                              "the signature value does not verify with the signer's key")
            path = self._path(cert_der, cert, certs)
            self._check_usage(cert)
        except Verdict as verdict:
            return fail(verdict)
        claimed_time = parts.signing_time
        stamp_error: str | None = None
        stamp: _TimeStamp | None = None
        if parts.tst is not None:
            try:
                stamp = self._time_stamp(parts.tst, parts.signature, certs)
            except Verdict as verdict:
                stamp_error = verdict.detail
        # each distinct response once, at most 16: a failing one is checked again each time
        embedded = list(dict.fromkeys([*parts.ocsp, *extra_ocsp]))[:16]
        tsa_note = ""
        if stamp is not None:
            try:
                tsa_note = self._check_tsa_status(stamp, embedded, path.issuer)
            except Verdict as verdict:
                stamp, stamp_error = None, verdict.detail
        level = "B-LT" if stamp and embedded else "B-T" if parts.tst is not None else "B-B"
        signing_time = stamp.gen_time if stamp else claimed_time
        source = "timestamp" if stamp else "claimed" if claimed_time else None
        base = {"level": level, "signing_time": signing_time, "signing_time_source": source}
        if stamp_error is not None:
            return fail(Verdict(r.INDETERMINATE, r.NO_POE, f"time stamp: {stamp_error}"), **base)
        if signing_time is None:
            signing_time = self._clock.now()
        try:
            self._check_validity(cert, signing_time, proven=stamp is not None)
            status = self._revocation(path, embedded, signing_time)
            self._check_status(status, signing_time, proven=stamp is not None)
            ca_note = self._check_ca(path, signing_time, proven=stamp is not None)
        except Verdict as verdict:
            return fail(verdict, **base)
        return Report(r.TOTAL_PASSED, None, "signature valid", format=fmt, signer=signer,
                      certificate_serial=serial,
                      revocation=status.describe() + ca_note + tsa_note,
                      **base)  # type: ignore[arg-type]

    def _signing_certificate(self, parts: SignedParts) -> bytes:
        if parts.ess is None:
            raise Verdict(r.INDETERMINATE, r.NO_SIGNING_CERTIFICATE_FOUND,
                          "signing-certificate-v2 names no certificate" if parts.ess_empty else
                          "no signing-certificate-v2 attribute (not a CAdES baseline signature)")
        hash_name, cert_hash = parts.ess
        if parts.sid_serial is None:
            raise Verdict(r.INDETERMINATE, r.NO_SIGNING_CERTIFICATE_FOUND,
                          "signer identified by key identifier (issuer and serial expected)")
        for der in parts.certs:
            if _digest(hash_name, der) == cert_hash:
                if self._cert(der).serial_number != parts.sid_serial:
                    break
                return der
        raise Verdict(r.INDETERMINATE, r.NO_SIGNING_CERTIFICATE_FOUND,
                      "the certificate named by signing-certificate-v2 is not in the signature")

    def cached_bytes(self) -> int:
        """What the caches hold (their own weights: DER length x 3 for parsed certificates)."""
        return sum(c.bytes for c in (self._certs, self._paths, self._tsas, self._failed))

    def _cert(self, der: bytes) -> x509.Certificate:
        """The parsed certificate; kept only once it is on a proven path (:meth:`_trust`)."""
        cert = self._certs.get(der)
        if cert is None:
            try:
                cert = x509.load_der_x509_certificate(der)
            except (ValueError, x509.InvalidVersion) as exc:
                raise Verdict(r.TOTAL_FAILED, r.FORMAT_FAILURE,
                              f"a certificate does not parse: {exc}") from None
        return cert

    def _trust(self, chain: Sequence[x509.Certificate]) -> None:
        """Keep the parsed certificates of a path that chains to our root."""
        for cert in chain:
            der = cert.public_bytes(serialization.Encoding.DER)
            if self._certs.get(der) is None:
                self._certs.put(der, cert, _WEIGHT * len(der))

    def _failure(self, der: bytes) -> Verdict | None:
        return self._failed.get(hashlib.sha256(der).digest())

    def _remember_failure(self, der: bytes, verdict: Verdict) -> None:
        self._failed.put(hashlib.sha256(der).digest(), verdict, 64 + len(verdict.detail))

    def _build(self, cert: x509.Certificate, others: list[bytes],
               at: dt.datetime) -> list[x509.Certificate]:
        verifier = (xv.PolicyBuilder().store(self._store).time(at).max_chain_depth(4)
                    .extension_policies(ca_policy=xv.ExtensionPolicy.webpki_defaults_ca(),
                                        ee_policy=xv.ExtensionPolicy.permit_all())
                    .build_client_verifier())
        candidates = [*self._intermediates, *(self._cert(d) for d in others)]
        try:
            return list(verifier.verify(cert, [c for c in candidates if c != cert]).chain)
        except xv.VerificationError as exc:
            raise Verdict(r.INDETERMINATE, r.NO_CERTIFICATE_CHAIN_FOUND,
                          "no path to an IGC-Santé root: "
                          + str(exc).split(" (encountered")[0][:200]) from None

    def _path(self, der: bytes, cert: x509.Certificate, others: list[bytes]) -> _Path:
        """The path leaf → root, built inside the leaf's validity (its own dates are checked
        against the signing time separately)."""
        known = self._paths.get(der)
        if known is not None:
            return known
        failed = self._failure(der)
        if failed is not None:
            raise failed
        at = cert.not_valid_before_utc + (cert.not_valid_after_utc
                                          - cert.not_valid_before_utc) / 2
        try:
            chain = self._build(cert, others, min(at, self._clock.now()))
            if len(chain) < 2:
                raise Verdict(r.INDETERMINATE, r.NO_CERTIFICATE_CHAIN_FOUND,
                              "a root cannot sign")
        except Verdict as verdict:
            self._remember_failure(der, verdict)
            raise
        known = _Path(cert, chain[1])
        self._trust(chain)
        self._paths.put(der, known, _WEIGHT * len(der))
        return known

    def _check_usage(self, cert: x509.Certificate) -> None:
        try:
            ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        except x509.ExtensionNotFound:
            ku = None
        if ku is None or not ku.content_commitment:
            raise Verdict(r.INDETERMINATE, r.CHAIN_CONSTRAINTS_FAILURE,
                          "the signing certificate is not a signature certificate (no "
                          "nonRepudiation): an authentication key cannot sign documents")
        try:
            policies = cert.extensions.get_extension_for_class(x509.CertificatePolicies).value
            oids = {p.policy_identifier.dotted_string for p in policies}
        except x509.ExtensionNotFound:
            oids = set()
        if not oids & self._policies:
            raise Verdict(r.INDETERMINATE, r.CHAIN_CONSTRAINTS_FAILURE,
                          "the signing certificate lacks the signature policy "
                          + " or ".join(sorted(self._policies)))

    # --- time stamp ---------------------------------------------------------------------
    def _time_stamp(self, token: bytes, signature: bytes, certs: list[bytes]) -> _TimeStamp:
        def bad(detail: str) -> Verdict:
            return Verdict(r.INDETERMINATE, r.NO_POE, detail)

        t: TstParts | None = None
        if self._fast:
            try:
                t = fastcms.tst_parts(token)
            except fastcms.Unfamiliar:
                t = None
        if t is None:
            t = tst_from_token(cms.ContentInfo.load(token))
        if t.imprint_algo not in HASHES or t.imprint != hashlib.new(
                t.imprint_algo, signature).digest():
            raise bad("it does not stamp this signature value")
        if t.digest_name not in HASHES or t.message_digest is None or \
                t.message_digest != hashlib.new(t.digest_name, t.tst_info).digest():
            raise bad("its signed attributes do not cover the TSTInfo")
        if t.sid_serial is None:
            raise bad("TSA identified by key identifier")
        tsa = next((c for c in map(self._cert, t.certs) if c.serial_number == t.sid_serial
                    and c.issuer.public_bytes() == t.sid_issuer), None)
        if tsa is None:
            raise bad("the TSA certificate is not in the token")
        if not _check_raw_signature(tsa, t.signature, t.signed_attrs, t.sig_algo,
                                    t.digest_name):
            raise bad("the TSA signature does not verify")
        self._check_tsa(tsa, [*t.certs, *certs])
        if not tsa.not_valid_before_utc <= t.gen_time <= tsa.not_valid_after_utc:
            raise bad("genTime outside the TSA certificate's validity")
        issuer = next((c for c in (*map(self._cert, (*t.certs, *certs)), *self._intermediates)
                       if c.subject == tsa.issuer and c != tsa), None)
        return _TimeStamp(t.gen_time, tsa.subject.rfc4514_string(), tsa, issuer)

    def _check_tsa_status(self, stamp: _TimeStamp, embedded: list[bytes],
                          signer_ca: x509.Certificate) -> str:
        """The TSA certificate's status: from the OCSP response the B-LT signature embeds for
        it, else the status tier (B-T). Revoked or on hold at or before the genTime: the time
        stamp proves nothing (NO_POE). No data, or a responder that does not know the TSA:
        not refused, and the report's revocation says so."""
        if stamp.issuer is None:
            return "; TSA: issuer not found, status not checked"
        status: Status | None = None
        for der in reversed(embedded):         # the signer's response comes first
            try:
                status = self._ocsp.status(der, stamp.cert, stamp.issuer)
                break
            except Unusable:
                continue
        if status is None and self._live is not None:
            try:
                status = self._live.status(stamp.cert, stamp.issuer)
            except Unusable:
                status = None
        ca_note = "" if stamp.issuer == signer_ca else self._check_tsa_ca(stamp)
        if status is None or status.status == "unknown":
            return "; TSA: no revocation data" + ca_note
        if status.status == "good":
            return f"; TSA good ({status.source})" + ca_note
        assert status.revoked_at is not None
        since = status.revoked_at
        if status.invalidity_date is not None and status.invalidity_date < since:
            since = status.invalidity_date
        if since <= stamp.gen_time:
            raise Verdict(r.INDETERMINATE, r.NO_POE,
                          f"the TSA certificate is {status.status} "
                          f"({status.reason or 'unspecified'}) since {since.isoformat()}, "
                          "before its time stamp")
        return f"; TSA {status.status} since {since.isoformat()}, after the time stamp" + ca_note

    def _check_tsa_ca(self, stamp: _TimeStamp) -> str:
        """The TSA's issuing CA in its root's CRL, judged as the TSA certificate itself is:
        revoked at or before the genTime, or on hold, and the time stamp proves nothing
        (NO_POE). The signer's own CA is judged as such (REVOKED_CA_NO_POE), not here; a good
        CA is not noted."""
        assert stamp.issuer is not None
        found = self._ca_in_root_crl(stamp.issuer)
        if isinstance(found, str):
            return ""
        status, since = found
        if since <= stamp.gen_time or status.status == "hold":
            raise Verdict(r.INDETERMINATE, r.NO_POE,
                          f"the TSA's issuing CA is "
                          f"{'on hold' if status.status == 'hold' else 'revoked'} "
                          f"({status.reason or 'unspecified'}) in the root's CRL since "
                          f"{since.isoformat()}, before the time stamp")
        return f"; TSA's CA revoked since {since.isoformat()}, after the time stamp"

    def _check_tsa(self, tsa: x509.Certificate, others: list[bytes]) -> None:
        der = tsa.tbs_certificate_bytes + tsa.signature
        if self._tsas.get(der):
            return
        failed = self._failure(der)
        if failed is not None:
            raise failed
        try:
            eku = tsa.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
            if ExtendedKeyUsageOID.TIME_STAMPING not in eku.value or not eku.critical:
                raise Verdict(r.INDETERMINATE, r.NO_POE,
                              "the TSA certificate lacks critical id-kp-timeStamping")
            chain = self._build(tsa, others, min(self._clock.now(), tsa.not_valid_after_utc))
        except x509.ExtensionNotFound:
            verdict = Verdict(r.INDETERMINATE, r.NO_POE, "the TSA certificate has no EKU")
            self._remember_failure(der, verdict)
            raise verdict from None
        except Verdict as failure:
            verdict = Verdict(r.INDETERMINATE, r.NO_POE, "TSA: " + failure.detail)
            self._remember_failure(der, verdict)
            raise verdict from None
        self._trust(chain)
        self._tsas.put(der, True, _WEIGHT * len(der))

    # --- validity and revocation --------------------------------------------------------
    @staticmethod
    def _check_validity(cert: x509.Certificate, at: dt.datetime, *, proven: bool) -> None:
        if at > cert.not_valid_after_utc:
            if proven:
                raise Verdict(r.TOTAL_FAILED, r.EXPIRED, "signed after the certificate expired"
                              f" ({cert.not_valid_after_utc.isoformat()})")
            raise Verdict(r.INDETERMINATE, r.OUT_OF_BOUNDS_NO_POE,
                          "the certificate has expired and no time stamp proves an earlier "
                          "signing time")
        if at < cert.not_valid_before_utc:
            sub = r.NOT_YET_VALID if proven else r.OUT_OF_BOUNDS_NO_POE
            raise Verdict(r.TOTAL_FAILED if proven else r.INDETERMINATE, sub,
                          "signed before the certificate was valid")

    def _revocation(self, path: _Path, embedded: list[bytes], at: dt.datetime) -> Status:
        problems: list[str] = []
        if self._live is not None:
            try:
                return self._live.status(path.leaf, path.issuer)
            except Unusable as exc:
                problems.append(f"status tier: {exc}")
        for der in embedded:
            try:
                status = self._ocsp.status(der, path.leaf, path.issuer)
            except Unusable as exc:
                problems.append(f"embedded OCSP: {exc}")
                continue
            # It speaks of the signing time if it was valid then or issued after it.
            this = status.this_update
            nxt = status.next_update
            if this is not None and (this >= at or (this <= at and (nxt is None or at <= nxt))):
                return status
            problems.append("embedded OCSP response older than the signing time")
        raise Verdict(r.INDETERMINATE, r.TRY_LATER, "no usable revocation data"
                      + (": " + "; ".join(problems) if problems else ""))

    def _check_ca(self, path: _Path, at: dt.datetime, *, proven: bool) -> str:
        """The issuing CA in its root's CRL: a file given (``root_crls``), else the status
        tier's (offline with no file, or no usable root CRL: not checked, and the report says
        so). A CA revoked or on hold at the signing time, or revoked since with no time stamp
        proving the signature came first: INDETERMINATE/REVOKED_CA_NO_POE (EN 319 102-1: the
        signing certificate alone gives TOTAL_FAILED/REVOKED)."""
        found = self._ca_in_root_crl(path.issuer)
        if isinstance(found, str):
            return found
        status, since = found
        if since <= at or not proven or status.status == "hold":
            raise Verdict(r.INDETERMINATE, r.REVOKED_CA_NO_POE,
                          f"the issuing CA is {'on hold' if status.status == 'hold' else 'revoked'}"
                          f" ({status.reason or 'unspecified'}) in the root's CRL since "
                          f"{since.isoformat()}"
                          + (", at or before the signing time" if since <= at else
                             ", and no time stamp proves the signature came first"))
        return f"; issuing CA revoked since {since.isoformat()}, after the signing time"

    def _ca_in_root_crl(self, ca: x509.Certificate) -> str | tuple[Status, dt.datetime]:
        """A CA's entry in its root's CRL: (status, effective since) when revoked or on hold,
        else the report's note (good, no root CRL, not checked; "" when ``ca`` is a root or
        not under one of ours)."""
        root = next((a for a in self._anchors if a.subject == ca.issuer), None)
        if root is None or ca.subject == ca.issuer:
            return ""
        if self._ca_status is None:
            return "; issuing CA not checked (offline, no --root-crl)"
        status = self._ca_status.ca_status(ca, root)
        if status is None:
            return "; issuing CA: no root CRL"
        if status.status == "good":
            return f"; issuing CA good ({status.source})"
        assert status.revoked_at is not None
        since = status.revoked_at
        if status.invalidity_date is not None and status.invalidity_date < since:
            since = status.invalidity_date
        return status, since

    @staticmethod
    def _check_status(status: Status, at: dt.datetime, *, proven: bool) -> None:
        if status.status == "good":
            return
        if status.status == "unknown":
            raise Verdict(r.INDETERMINATE, r.TRY_LATER,
                          f"the responder does not know the certificate ({status.source})")
        assert status.revoked_at is not None
        since = status.revoked_at
        if status.status == "hold":
            if since <= at or not proven:
                raise Verdict(r.INDETERMINATE, r.TRY_LATER,
                              f"the certificate is on hold (suspended) since {since.isoformat()}"
                              f", {'at' if since <= at else 'perhaps at'} the signing time")
            return
        if status.invalidity_date is not None and status.invalidity_date < since:
            since = status.invalidity_date
        if since <= at:
            raise Verdict(r.TOTAL_FAILED, r.REVOKED,
                          f"revoked ({status.reason or 'unspecified'}) with effect from "
                          f"{since.isoformat()}, before the signing time")
        if not proven:
            raise Verdict(r.INDETERMINATE, r.REVOKED_NO_POE,
                          f"revoked since {since.isoformat()} and no time stamp proves the "
                          "signature came first")
