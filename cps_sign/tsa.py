"""An RFC 3161 time-stamping authority: a ``TimeStampReq`` in, a ``TimeStampResp`` out.

The protocol objects are asn1crypto's (``asn1crypto.tsp``, ``asn1crypto.cms``): a request is
parsed by them and checked against our policy; a token is a CMS SignedData over a ``TSTInfo``
(RFC 3161 §2.4.2) with the signed attributes RFC 3161 and RFC 5816 ask for (content type,
message digest, signing-certificate-v2). Only the signature value comes from the key, which is
any cryptography private key: in the tsa role the ``pki.hsm`` key in the TSA's own token
(``CPS-TSA``), whose session lock serialises the HSM calls of concurrent requests.

What a request gets (PKIStatus ``granted``, or ``rejection`` with one failInfo and a text):

* SHA-256, SHA-384 and SHA-512 imprints of the right length; any other algorithm ``badAlg``.
* anything that does not parse as one DER ``TimeStampReq`` (truncated, trailing bytes, a
  wrong-length digest, an unknown version) ``badDataFormat`` — never an exception;
* a ``reqPolicy`` other than ours ``unacceptedPolicy``; any extension ``unacceptedExtension``;
* the nonce echoed; the TSA certificate and its issuing CA included when ``certReq`` is true;
* a serial number of 127 random bits (unique across replicas without shared state);
* ``genTime`` from the injected clock, whole seconds, with ``accuracy`` (one second default);
* a signing failure (the HSM away) ``systemFailure``, logged; a time outside the TSA
  certificate's validity ``timeNotAvailable`` (renew with ``cps-admin tsa cert``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from asn1crypto import cms, core, tsp
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from pki.clock import SYSTEM_CLOCK, Clock

log = logging.getLogger("cps.tsa")

# Imprint algorithms accepted, with their digest sizes (RFC 3161 §2.4.1: the TSA checks both).
ACCEPTED_HASHES: dict[str, int] = {"sha256": 32, "sha384": 48, "sha512": 64}
# A TimeStampReq with a SHA-512 imprint, a policy and a 64-byte nonce is under 200 bytes; the
# HTTP layer refuses larger bodies (413) before they are read whole.
MAX_QUERY = 4 * 1024
CONTENT_TYPE_QUERY = "application/timestamp-query"
CONTENT_TYPE_REPLY = "application/timestamp-reply"
SERIAL_BITS = 127           # positive, fits 16 DER bytes; RFC 3161 allows up to 160 bits


class TimeStampResp(tsp.TimeStampResp):  # type: ignore[misc]
    """``TimeStampResp`` with ``timeStampToken`` OPTIONAL, as RFC 3161 §2.4.2 defines it
    (asn1crypto 1.5 marks it required, so a rejection could be neither built nor parsed)."""

    _fields: ClassVar[list[tuple[object, ...]]] = [
        ("status", tsp.PKIStatusInfo),
        ("time_stamp_token", cms.ContentInfo, {"optional": True}),
    ]


class Rejected(Exception):
    """A request refused with ``fail_info`` (an asn1crypto ``PKIFailureInfo`` bit name)."""

    def __init__(self, fail_info: str, text: str) -> None:
        super().__init__(text)
        self.fail_info = fail_info
        self.text = text


TsaKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def random_serial() -> int:
    while True:
        serial = secrets.randbits(SERIAL_BITS)
        if serial:
            return serial


@dataclass(frozen=True)
class TsaSettings:
    policy: str                         # the time-stamp policy OID put in every TSTInfo
    accuracy_seconds: int = 1
    include_name: bool = True           # the TSTInfo ``tsa`` field: the certificate's subject


class TimeStampAuthority:
    """Answers DER time-stamp queries; ``respond`` never raises on what a client sends."""

    def __init__(self, key: TsaKey, certificate: x509.Certificate,
                 chain: Sequence[x509.Certificate], settings: TsaSettings,
                 clock: Clock = SYSTEM_CLOCK) -> None:
        _check_certificate(key, certificate)
        self.key = key
        self.settings = settings
        self.clock = clock
        self.certificate = certificate
        # Why this TSA must not stamp now (its own certificate revoked or on hold), or None.
        self.suspended: str | None = None
        der = certificate.public_bytes(serialization.Encoding.DER)
        self._cert = asn1_x509.Certificate.load(der)
        chain_certs = [asn1_x509.Certificate.load(c.public_bytes(serialization.Encoding.DER))
                       for c in chain]
        signature_algorithm = ("sha256_rsa" if isinstance(key, rsa.RSAPrivateKey)
                               else "sha256_ecdsa")
        # What every token repeats is built once and kept as DER; each token loads these
        # templates (asn1crypto parses lazily) and sets only its own fields, so the
        # certificates and names are copied as bytes instead of re-encoded per stamp.
        tst = {"version": "v1", "policy": settings.policy,
               "message_imprint": {"hash_algorithm": {"algorithm": "sha256"},
                                   "hashed_message": bytes(32)},
               "serial_number": 1, "gen_time": dt.datetime(2000, 1, 1, tzinfo=dt.UTC),
               "accuracy": {"seconds": settings.accuracy_seconds}, "ordering": False}
        if settings.include_name:
            tst["tsa"] = asn1_x509.GeneralName(name="directory_name",
                                               value=self._cert.subject)
        self._tst_template = tsp.TSTInfo(tst).dump()
        # RFC 5816: ESSCertIDv2 with SHA-256 (the default, so its algorithm is left out).
        self._signing_certificate = cms.CMSAttribute({
            "type": "signing_certificate_v2",
            "values": [tsp.SigningCertificateV2({"certs": [tsp.ESSCertIDv2({
                "cert_hash": hashlib.sha256(der).digest(),
                "issuer_serial": {
                    "issuer": [asn1_x509.GeneralName(name="directory_name",
                                                     value=self._cert.issuer)],
                    "serial_number": self._cert.serial_number}})]})]}).dump()
        self._signer_template = cms.SignerInfo({
            "version": "v1",
            "sid": cms.SignerIdentifier(name="issuer_and_serial_number", value={
                "issuer": self._cert.issuer, "serial_number": self._cert.serial_number}),
            "digest_algorithm": {"algorithm": "sha256"},
            "signature_algorithm": {"algorithm": signature_algorithm},
            "signature": b"",
        }).dump()
        signed_data = {
            "version": "v3",
            "digest_algorithms": [{"algorithm": "sha256"}],
            "encap_content_info": {"content_type": "tst_info"},
            "signer_infos": [],
        }
        self._signed_data_template = {
            False: cms.SignedData(signed_data).dump(),
            # The TSA's certificate and its issuing CA (not the root: the relying party has it).
            True: cms.SignedData({**signed_data, "certificates": [
                cms.CertificateChoices(name="certificate", value=c)
                for c in [self._cert, *chain_certs[:1]]]}).dump(),
        }

    # --- the protocol ----------------------------------------------------------------------
    def respond(self, query: bytes) -> bytes:
        """The DER ``TimeStampResp`` for the DER ``query`` (granted or rejected)."""
        try:
            request = self.check(query)
        except Rejected as refused:
            return rejection(refused.fail_info, refused.text)
        try:
            token = self.token(request)
        except Rejected as refused:
            if self.suspended is None:      # a suspension is logged once, where it is decided
                log.error("time stamp refused: %s", refused.text)
            return rejection(refused.fail_info, refused.text)
        except Exception:   # the HSM away, a broken session: the client gets an answer
            log.exception("time-stamp signature failed")
            return rejection("system_failure", "the time-stamp could not be signed")
        der: bytes = TimeStampResp({"status": {"status": "granted"},
                                    "time_stamp_token": token}).dump()
        return der

    def check(self, query: bytes) -> tsp.TimeStampReq:
        """``query`` parsed and accepted, or ``Rejected`` saying why."""
        if len(query) > MAX_QUERY:
            raise Rejected("bad_data_format", f"request over {MAX_QUERY} bytes")
        try:
            request = tsp.TimeStampReq.load(query, strict=True)
            _ = request.native    # parse every field now: asn1crypto parses lazily
            version = request["version"].native
            imprint = request["message_imprint"]
            algorithm = imprint["hash_algorithm"]["algorithm"].native
            parameters = imprint["hash_algorithm"]["parameters"]
            digest = imprint["hashed_message"].native
        except Exception as exc:    # asn1crypto raises ValueError, TypeError, ...
            raise Rejected("bad_data_format", f"not a DER TimeStampReq ({_short(exc)})") from None
        if version != "v1":
            raise Rejected("bad_data_format", f"unsupported TimeStampReq version {version}")
        if algorithm not in ACCEPTED_HASHES:
            raise Rejected("bad_alg", f"hash algorithm {algorithm} not accepted; use "
                                      f"{', '.join(ACCEPTED_HASHES)}")
        if not isinstance(parameters, (core.Void, core.Null)):
            raise Rejected("bad_alg", f"{algorithm} with parameters")
        if len(digest) != ACCEPTED_HASHES[algorithm]:
            raise Rejected("bad_data_format", f"a {algorithm} imprint has "
                                              f"{ACCEPTED_HASHES[algorithm]} bytes, not "
                                              f"{len(digest)}")
        policy = request["req_policy"].native
        if policy is not None and policy != self.settings.policy:
            raise Rejected("unaccepted_policy", f"policy {policy} not offered; this TSA "
                                                f"time-stamps under {self.settings.policy}")
        if request["extensions"].native:
            raise Rejected("unaccepted_extensions", "no request extension is supported")
        return request

    def tst_info(self, request: tsp.TimeStampReq, serial: int | None = None) -> tsp.TSTInfo:
        info = tsp.TSTInfo.load(self._tst_template)
        info["message_imprint"] = request["message_imprint"]
        info["serial_number"] = serial if serial is not None else random_serial()
        info["gen_time"] = self.clock.now().astimezone(dt.UTC).replace(microsecond=0)
        if request["nonce"].native is not None:
            info["nonce"] = request["nonce"]
        return info

    def token(self, request: tsp.TimeStampReq) -> cms.ContentInfo:
        """The TimeStampToken (CMS SignedData over the TSTInfo), signed by the TSA key."""
        if self.suspended is not None:
            # RFC 3161 has no failInfo for it: a system failure, with the reason in clear.
            raise Rejected("system_failure", self.suspended)
        info = self.tst_info(request)
        now = info["gen_time"].native
        if not (self.certificate.not_valid_before_utc <= now
                <= self.certificate.not_valid_after_utc):
            # A token its own certificate does not cover would fail every verifier.
            raise Rejected("time_not_available", "the TSA certificate is not valid now")
        content = info.dump()
        signed_attrs = cms.CMSAttributes([
            cms.CMSAttribute({"type": "content_type", "values": ["tst_info"]}),
            cms.CMSAttribute({"type": "message_digest",
                              "values": [hashlib.sha256(content).digest()]}),
            cms.CMSAttribute.load(self._signing_certificate),
        ])
        signer = cms.SignerInfo.load(self._signer_template)
        signer["signed_attrs"] = signed_attrs
        signer["signature"] = self._sign(signed_attrs.dump())
        signed_data = cms.SignedData.load(
            self._signed_data_template[bool(request["cert_req"].native)])
        signed_data["encap_content_info"] = {"content_type": "tst_info",
                                             "content": core.ParsableOctetString(content)}
        signed_data["signer_infos"] = [signer]
        return cms.ContentInfo({"content_type": "signed_data", "content": signed_data})

    def _sign(self, data: bytes) -> bytes:
        if isinstance(self.key, rsa.RSAPrivateKey):
            return self.key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        return self.key.sign(data, ec.ECDSA(hashes.SHA256()))


def rejection(fail_info: str, text: str) -> bytes:
    """A DER ``TimeStampResp`` with status ``rejection``, one failInfo bit and a reason."""
    der: bytes = TimeStampResp({"status": {
        "status": "rejection",
        "status_string": [text],
        "fail_info": tsp.PKIFailureInfo({fail_info}),
    }}).dump()
    return der


def _short(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:120]


def _check_certificate(key: TsaKey, certificate: x509.Certificate) -> None:
    """The certificate must be a TSA's (RFC 3161 §2.3) and certify ``key``."""
    try:
        eku = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    except x509.ExtensionNotFound:
        raise ValueError("the TSA certificate has no extendedKeyUsage") from None
    if not eku.critical or list(eku.value) != [ExtendedKeyUsageOID.TIME_STAMPING]:
        raise ValueError("the TSA certificate's extendedKeyUsage must be id-kp-timeStamping "
                         "only, critical")
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*spki) != certificate.public_key().public_bytes(*spki):
        raise ValueError("the TSA certificate does not certify the TSA key")
