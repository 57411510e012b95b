"""OCSP requests (RFC 6960 §4.1), parsed strictly into frozen values.

Anything that is not a well-formed OCSPRequest raises ``MalformedRequest``; the responder turns
that into the ``malformedRequest`` response status, never into an HTTP error.
"""

from __future__ import annotations

from dataclasses import dataclass

from pki.ocsp import der
from pki.ocsp.der import DerError

SHA1_OID = "1.3.14.3.2.26"
SHA256_OID = "2.16.840.1.101.3.4.2.1"
NONCE_OID = "1.3.6.1.5.5.7.48.1.2"
# OID content octets, compared on the hot path without decoding.
_HASH_OIDS = {
    der.encode_oid(SHA1_OID)[2:]: ("sha1", 20),
    der.encode_oid(SHA256_OID)[2:]: ("sha256", 32),
}
_NONCE_OID_CONTENT = der.encode_oid(NONCE_OID)[2:]

MAX_CERTS_PER_REQUEST = 32
MAX_NONCE = 32   # RFC 8954 §2.1


class MalformedRequest(ValueError):
    """Not an OCSP request this responder can read (→ malformedRequest)."""


@dataclass(frozen=True)
class CertId:
    hash_name: str           # "sha1" | "sha256"
    issuer_name_hash: bytes
    issuer_key_hash: bytes
    serial: bytes            # INTEGER content octets, as in the certificate

    @property
    def serial_number(self) -> int:
        return int.from_bytes(self.serial, "big", signed=True)


@dataclass(frozen=True)
class OcspRequest:
    cert_ids: tuple[CertId, ...]
    nonce: bytes | None      # the Nonce OCTET STRING's content (RFC 8954), when asked


def parse_request(data: bytes) -> OcspRequest:
    try:
        return _parse(data)
    except DerError as exc:
        raise MalformedRequest(str(exc)) from None


def _parse(buf: bytes) -> OcspRequest:
    end = len(buf)
    start, stop = der.expect(buf, 0, end, der.SEQUENCE, "OCSPRequest")
    if stop != end:
        raise MalformedRequest("trailing bytes after OCSPRequest")
    top = der.children(buf, start, stop)
    if not top or top[0][0] != der.SEQUENCE:
        raise MalformedRequest("OCSPRequest: missing tbsRequest")
    if len(top) > 2 or (len(top) == 2 and top[1][0] != 0xA0):
        raise MalformedRequest("OCSPRequest: unexpected element after tbsRequest")
    _, _, tstart, tstop = top[0]
    items = der.children(buf, tstart, tstop)
    i = 0
    if i < len(items) and items[i][0] == 0xA0:          # version [0] EXPLICIT, must be v1 (0)
        vs, ve = der.expect(buf, items[i][2], items[i][3], der.INTEGER, "version")
        if ve != items[i][3] or der.integer_value(buf[vs:ve]) != 0:
            raise MalformedRequest("unsupported OCSP request version")
        i += 1
    if i < len(items) and items[i][0] == 0xA1:          # requestorName: accepted, not used
        i += 1
    if i >= len(items) or items[i][0] != der.SEQUENCE:
        raise MalformedRequest("TBSRequest: missing requestList")
    cert_ids = _request_list(buf, items[i][2], items[i][3])
    i += 1
    nonce = None
    if i < len(items) and items[i][0] == 0xA2:
        es, ee = der.expect(buf, items[i][2], items[i][3], der.SEQUENCE, "requestExtensions")
        if ee != items[i][3]:
            raise MalformedRequest("requestExtensions: trailing bytes")
        nonce = _extensions(buf, es, ee)
        i += 1
    if i != len(items):
        raise MalformedRequest("TBSRequest: unexpected trailing element")
    return OcspRequest(cert_ids, nonce)


def _request_list(buf: bytes, start: int, stop: int) -> tuple[CertId, ...]:
    requests = der.children(buf, start, stop)
    if not requests:
        raise MalformedRequest("requestList is empty")
    if len(requests) > MAX_CERTS_PER_REQUEST:
        raise MalformedRequest(f"more than {MAX_CERTS_PER_REQUEST} certificates in one request")
    out = []
    for tag, _, rs, re_ in requests:
        if tag != der.SEQUENCE:
            raise MalformedRequest("requestList: Request is not a SEQUENCE")
        parts = der.children(buf, rs, re_)
        if not parts or parts[0][0] != der.SEQUENCE or len(parts) > 2:
            raise MalformedRequest("Request: bad structure")
        if len(parts) == 2:
            if parts[1][0] != 0xA0:
                raise MalformedRequest("Request: unexpected element")
            es, ee = der.expect(buf, parts[1][2], parts[1][3], der.SEQUENCE,
                                "singleRequestExtensions")
            _extensions(buf, es, ee, single=True)
        out.append(_cert_id(buf, parts[0][2], parts[0][3]))
    return tuple(out)


def _cert_id(buf: bytes, start: int, stop: int) -> CertId:
    parts = der.children(buf, start, stop)
    if len(parts) != 4 or [p[0] for p in parts] != [der.SEQUENCE, der.OCTET_STRING,
                                                    der.OCTET_STRING, der.INTEGER]:
        raise MalformedRequest("CertID: bad structure")
    alg = der.children(buf, parts[0][2], parts[0][3])
    if not alg or alg[0][0] != der.OID or len(alg) > 2:
        raise MalformedRequest("CertID.hashAlgorithm: bad structure")
    if len(alg) == 2 and (alg[1][0] != der.NULL or alg[1][3] != alg[1][2]):
        raise MalformedRequest("CertID.hashAlgorithm: unexpected parameters")
    known = _HASH_OIDS.get(buf[alg[0][2]:alg[0][3]])
    if known is None:
        raise MalformedRequest("CertID.hashAlgorithm: only SHA-1 and SHA-256 are supported")
    name, size = known
    name_hash = buf[parts[1][2]:parts[1][3]]
    key_hash = buf[parts[2][2]:parts[2][3]]
    if len(name_hash) != size or len(key_hash) != size:
        raise MalformedRequest("CertID: hash length does not match its algorithm")
    serial = buf[parts[3][2]:parts[3][3]]
    der.integer_value(serial)
    return CertId(name, name_hash, key_hash, serial)


def _extensions(buf: bytes, start: int, stop: int, *, single: bool = False) -> bytes | None:
    """The nonce, if any; unknown critical extensions and duplicates are malformed."""
    nonce = None
    seen: set[bytes] = set()
    for tag, _, es, ee in der.children(buf, start, stop):
        if tag != der.SEQUENCE:
            raise MalformedRequest("Extension is not a SEQUENCE")
        parts = der.children(buf, es, ee)
        if len(parts) not in (2, 3) or parts[0][0] != der.OID or parts[-1][0] != der.OCTET_STRING:
            raise MalformedRequest("Extension: bad structure")
        oid = buf[parts[0][2]:parts[0][3]]
        if oid in seen:
            raise MalformedRequest("Extension repeated")
        seen.add(oid)
        critical = False
        if len(parts) == 3:
            if parts[1][0] != der.BOOLEAN or parts[1][3] - parts[1][2] != 1 \
                    or buf[parts[1][2]] not in (0x00, 0xFF):
                raise MalformedRequest("Extension.critical: bad BOOLEAN")
            critical = buf[parts[1][2]] == 0xFF
        value_start, value_end = parts[-1][2], parts[-1][3]
        if oid == _NONCE_OID_CONTENT and not single:
            nonce = _nonce(buf, value_start, value_end)
        elif critical:
            # Non-critical extensions the responder does not know are ignored (RFC 6960 §4.4).
            raise MalformedRequest("unsupported critical extension")
    return nonce


def _nonce(buf: bytes, start: int, stop: int) -> bytes:
    # RFC 8954: extnValue holds a DER OCTET STRING of 1..32 octets; reject 0 or more than 32.
    try:
        ns, ne = der.expect(buf, start, stop, der.OCTET_STRING, "Nonce")
    except DerError:
        raise MalformedRequest("Nonce is not an OCTET STRING") from None
    if ne != stop:
        raise MalformedRequest("Nonce: trailing bytes")
    if not 1 <= ne - ns <= MAX_NONCE:
        raise MalformedRequest(f"Nonce length {ne - ns} outside 1..{MAX_NONCE}")
    return buf[ns:ne]


def fast_single_sha1(buf: bytes) -> tuple[bytes, bytes, bytes] | None:
    """(issuerNameHash, issuerKeyHash, serial) of the commonest request shape: one SHA-1 CertID,
    no version, no requestor name, no extensions, no signature (what openssl -no_nonce, browsers
    and RFC 5019 clients send). ``None`` for any other shape: the caller then parses fully."""
    try:
        _, s, e = der.read_tlv(buf, 0, len(buf))
        if buf[0] != 0x30 or e != len(buf):
            return None
        tag, s1, e1 = der.read_tlv(buf, s, e)            # tbsRequest
        if tag != 0x30 or e1 != e:
            return None
        tag, s2, e2 = der.read_tlv(buf, s1, e1)          # requestList
        if tag != 0x30 or e2 != e1:
            return None
        tag, s3, e3 = der.read_tlv(buf, s2, e2)          # Request
        if tag != 0x30 or e3 != e2:
            return None
        tag, s4, e4 = der.read_tlv(buf, s3, e3)          # CertID
        if tag != 0x30 or e4 != e3:
            return None
        # hashAlgorithm sha1 with NULL parameters, then two 20-byte OCTET STRINGs
        if buf[s4:s4 + 11] != b"\x30\x09\x06\x05\x2b\x0e\x03\x02\x1a\x05\x00":
            return None
        p = s4 + 11
        if buf[p:p + 2] != b"\x04\x14" or buf[p + 22:p + 24] != b"\x04\x14":
            return None
        name_hash = buf[p + 2:p + 22]
        key_hash = buf[p + 24:p + 44]
        tag, s5, e5 = der.read_tlv(buf, p + 44, e4)
        if tag != der.INTEGER or e5 != e4:
            return None
        serial = buf[s5:e5]
        der.integer_value(serial)
        return name_hash, key_hash, serial
    except (DerError, IndexError):
        return None
