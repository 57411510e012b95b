"""OCSP response DER (RFC 6960 §4.2), built by hand.

cryptography's OCSPResponseBuilder makes exactly one SingleResponse; a request for several
certificates needs several, and the pre-signed store needs the to-be-signed ResponseData to be
reproducible byte for byte from a few stored fields. So ResponseData is assembled here and signed
through the CA's TbsSigner seam; the BasicOCSPResponse around it is plain concatenation.
"""

from __future__ import annotations

import enum
import hashlib

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pki.ocsp import der

BASIC_OID = der.encode_oid("1.3.6.1.5.5.7.48.1.1")
NONCE_OID = der.encode_oid("1.3.6.1.5.5.7.48.1.2")
HASH_ALGORITHMS = {
    "sha1": bytes.fromhex("300906052b0e03021a0500"),
    "sha256": bytes.fromhex("300d06096086480165030402010500"),
}


class ResponseStatus(enum.IntEnum):
    SUCCESSFUL = 0
    MALFORMED_REQUEST = 1
    INTERNAL_ERROR = 2
    TRY_LATER = 3
    SIG_REQUIRED = 5
    UNAUTHORIZED = 6


def error_response(status: ResponseStatus) -> bytes:
    """An OCSPResponse without responseBytes (unsigned, as RFC 6960 §2.3 prescribes)."""
    return bytes((0x30, 0x03, 0x0A, 0x01, int(status)))


MALFORMED = error_response(ResponseStatus.MALFORMED_REQUEST)
UNAUTHORIZED = error_response(ResponseStatus.UNAUTHORIZED)
INTERNAL_ERROR = error_response(ResponseStatus.INTERNAL_ERROR)
TRY_LATER = error_response(ResponseStatus.TRY_LATER)

# RFC 5280 CRLReason names (as pki.ca.lifecycle records them) and codes.
REASON_CODES = {
    "unspecified": 0, "keyCompromise": 1, "cACompromise": 2, "affiliationChanged": 3,
    "superseded": 4, "cessationOfOperation": 5, "certificateHold": 6, "removeFromCRL": 8,
    "privilegeWithdrawn": 9, "aACompromise": 10,
}
NO_REASON = 255


class CertStatus(enum.IntEnum):
    GOOD = 0
    REVOKED = 1
    UNKNOWN = 2


def issuer_hashes(issuer: x509.Certificate, hash_name: str) -> tuple[bytes, bytes]:
    """(issuerNameHash, issuerKeyHash) of an issuing CA for one CertID hash algorithm."""
    name = hashlib.new(hash_name, issuer.subject.public_bytes()).digest()
    return name, hashlib.new(hash_name, public_key_bits(issuer)).digest()


def public_key_bits(cert: x509.Certificate) -> bytes:
    """The subjectPublicKey BIT STRING's value (without the unused-bits octet)."""
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    _, s, e = der.read_tlv(spki, 0, len(spki))
    _, _, alg_end = der.read_tlv(spki, s, e)
    bs, be = der.expect(spki, alg_end, e, der.BIT_STRING, "subjectPublicKey")
    return spki[bs + 1:be]


def responder_id_by_key(responder: x509.Certificate) -> bytes:
    """ResponderID byKey [2] EXPLICIT KeyHash (SHA-1 of the responder's public key bits)."""
    return der.tlv(0xA2, der.tlv(der.OCTET_STRING,
                                 hashlib.sha1(public_key_bits(responder)).digest()))  # noqa: S324


def cert_id(hash_name: str, name_hash: bytes, key_hash: bytes, serial: bytes) -> bytes:
    return der.seq(HASH_ALGORITHMS[hash_name], der.tlv(der.OCTET_STRING, name_hash),
                   der.tlv(der.OCTET_STRING, key_hash), der.tlv(der.INTEGER, serial))


def cert_status(status: int, revoked_at: int = 0, reason: int = NO_REASON) -> bytes:
    if status == CertStatus.GOOD:
        return b"\x80\x00"
    if status == CertStatus.UNKNOWN:
        return b"\x82\x00"
    info = der.generalized_time(revoked_at)
    # unspecified (0) is left out, as RFC 5280 §5.3.1 asks for CRL entries.
    if reason not in (NO_REASON, 0):
        info += b"\xa0\x03\x0a\x01" + bytes((reason,))
    return der.tlv(0xA1, info)


def single_response(cert_id_der: bytes, status_der: bytes, this_update: int,
                    next_update: int) -> bytes:
    return der.seq(cert_id_der, status_der, der.generalized_time(this_update),
                   b"\xa0\x11" + der.generalized_time(next_update))


def response_data(responder_id: bytes, produced_at: int, singles: list[bytes] | tuple[bytes, ...],
                  nonce: bytes | None = None) -> bytes:
    parts = [responder_id, der.generalized_time(produced_at), der.seq(*singles)]
    if nonce is not None:
        ext = der.seq(NONCE_OID, der.tlv(der.OCTET_STRING, der.tlv(der.OCTET_STRING, nonce)))
        parts.append(der.tlv(0xA1, der.seq(ext)))
    return der.seq(*parts)


def certs_field(responder_der: bytes) -> bytes:
    """certs [0] EXPLICIT SEQUENCE OF Certificate, holding the delegated responder certificate."""
    return der.tlv(0xA0, der.seq(responder_der))


def successful(tbs: bytes, algorithm: bytes, signature: bytes, certs: bytes) -> bytes:
    basic = der.seq(tbs, algorithm, der.tlv(der.BIT_STRING, b"\x00" + signature), certs)
    return der.seq(b"\x0a\x01\x00",
                   der.tlv(0xA0, der.seq(BASIC_OID, der.tlv(der.OCTET_STRING, basic))))
