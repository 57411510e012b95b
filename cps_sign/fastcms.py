"""The verifier's fast path: the parts of a CAdES signature (and of its time-stamp token) read
straight from the DER with asn1crypto's TLV parser, for the usual shape only.

Why (``bench/verify.py`` prints it): asn1crypto's CMS classes cost ~0.5 ms of lazy parsing per
B-LT signature, two thirds of a whole verification, which kept ``cps-verify --batch`` under
its 2,000 a second per core. Here each needed element is located with ``parser.parse`` (tag,
length, content: the library's own reader, strict DER lengths) and typed values (times, OIDs)
still go through asn1crypto's classes.

The shape read here is what pyHanko writes (and RFC 5652 allows): any element that is not where
or what it should be raises ``Unfamiliar``, and the caller reads the signature with the
reference reader (``cps_sign.cmsparts``) instead, which gives the verdict. So this path never
decides a format question; ``tests/signatures/test_fastcms.py`` checks both readers give the
same parts and the same reports, on good signatures and on thousands of mutated ones.
"""

from __future__ import annotations

import datetime as dt

from asn1crypto import algos, core, parser

from cps_sign.cmsparts import SignedParts, TstParts, oid_name


class Unfamiliar(Exception):
    """Not the usual shape: read it with asn1crypto's classes."""


_UNIVERSAL, _CONTEXT = 0, 2
_INTEGER, _OCTET_STRING, _NULL, _OID, _SEQUENCE, _SET = 2, 4, 5, 6, 16, 17
_UTC_TIME, _GENERALIZED_TIME = 23, 24

_Tlv = tuple[int, int, int, bytes, bytes]     # class, constructed, tag, whole element, content


def _oid_der(dotted: str) -> bytes:
    contents: bytes = core.ObjectIdentifier(dotted).contents
    return contents


DATA = _oid_der("1.2.840.113549.1.7.1")
SIGNED_DATA = _oid_der("1.2.840.113549.1.7.2")
TST_INFO = _oid_der("1.2.840.113549.1.9.16.1.4")
OCSP_RESPONSE = _oid_der("1.3.6.1.5.5.7.16.2")
ATTR_NAMES = {
    _oid_der("1.2.840.113549.1.9.3"): "content_type",
    _oid_der("1.2.840.113549.1.9.4"): "message_digest",
    _oid_der("1.2.840.113549.1.9.5"): "signing_time",
    _oid_der("1.2.840.113549.1.9.16.2.47"): "signing_certificate_v2",
    _oid_der("1.2.840.113549.1.9.16.2.14"): "signature_time_stamp_token",
}
_NAMES: dict[tuple[type[core.ObjectIdentifier], bytes], str] = {}


def _tlv(data: bytes) -> _Tlv:
    try:
        cls, method, tag, _header, content, trailer = parser.parse(data, strict=True)
    except (ValueError, TypeError) as exc:
        raise Unfamiliar(str(exc)) from None
    if trailer:
        raise Unfamiliar("indefinite length (BER)")
    return cls, method, tag, data, content


def _children(content: bytes) -> list[_Tlv]:
    out: list[_Tlv] = []
    offset = 0
    try:
        while offset < len(content):
            rest = content[offset:]
            cls, method, tag, header, inner, trailer = parser.parse(rest)
            if trailer:
                raise Unfamiliar("indefinite length (BER)")
            size = len(header) + len(inner)
            out.append((cls, method, tag, rest[:size], inner))
            offset += size
    except (ValueError, TypeError) as exc:
        raise Unfamiliar(str(exc)) from None
    return out


def _expect(item: _Tlv, cls: int, tag: int) -> bytes:
    if item[0] != cls or item[2] != tag:
        raise Unfamiliar(f"class {item[0]} tag {item[2]} where {cls}/{tag} was expected")
    # DER: a SEQUENCE or SET is constructed, every other universal type read here primitive
    # (an OID with the constructed bit set is a format error for the reference reader), and
    # every context-tagged element read here is constructed (EXPLICIT, or IMPLICIT over a SET
    # or SEQUENCE: a [0] or [1] with the bit cleared is one too)
    if item[1] != (tag in (_SEQUENCE, _SET) if cls == _UNIVERSAL else True):
        raise Unfamiliar(f"tag {tag} {'constructed' if item[1] else 'primitive'}")
    return item[4]


def _distinguished_name(item: _Tlv) -> bytes:
    """A Name's DER, its shape checked as the reference reader checks it (SEQUENCE OF SET OF
    SEQUENCE {OID, value}, each constructed where DER says so)."""
    for rdn in _seq(item):
        for atv in _children(_expect(rdn, _UNIVERSAL, _SET)):
            fields = _seq(atv)
            if len(fields) != 2:
                raise Unfamiliar("AttributeTypeAndValue shape")
            _expect(fields[0], _UNIVERSAL, _OID)
    return item[3]


def _seq(item: _Tlv) -> list[_Tlv]:
    return _children(_expect(item, _UNIVERSAL, _SEQUENCE))


def _name(oid: _Tlv, kind: type[core.ObjectIdentifier]) -> str:
    """The OID's name as asn1crypto's ``kind`` (with its table of names) gives it."""
    content = _expect(oid, _UNIVERSAL, _OID)
    key = (kind, content)
    name = _NAMES.get(key)
    if name is None:
        name = oid_name(kind.load(oid[3]))
        if len(_NAMES) < 10_000:
            _NAMES[key] = name
    return name


def _algorithm(item: _Tlv, kind: type[core.ObjectIdentifier] = algos.DigestAlgorithmId) -> str:
    """Algorithms without parameters (or NULL ones) only: PSS and others go the other way."""
    parts = _seq(item)
    if not parts or len(parts) > 2:
        raise Unfamiliar("AlgorithmIdentifier shape")
    if len(parts) == 2 and (parts[1][0], parts[1][2], parts[1][4]) != (_UNIVERSAL, _NULL, b""):
        raise Unfamiliar("algorithm parameters")
    return _name(parts[0], kind)


def _integer(item: _Tlv) -> int:
    content = _expect(item, _UNIVERSAL, _INTEGER)
    if not content:
        raise Unfamiliar("empty INTEGER")
    return int.from_bytes(content, "big", signed=True)


def _octets(item: _Tlv) -> bytes:
    if item[1]:
        raise Unfamiliar("constructed OCTET STRING")
    return _expect(item, _UNIVERSAL, _OCTET_STRING)


def _time(item: _Tlv) -> dt.datetime:
    if item[0] != _UNIVERSAL or item[2] not in (_UTC_TIME, _GENERALIZED_TIME):
        raise Unfamiliar("not a time")
    value = (core.UTCTime if item[2] == _UTC_TIME else core.GeneralizedTime).load(item[3])
    when = value.native
    if not isinstance(when, dt.datetime):
        raise Unfamiliar("time without a date")
    return when


def _signed_data(content_info: bytes) -> list[_Tlv]:
    top = _seq(_tlv(content_info))
    if len(top) != 2 or _expect(top[0], _UNIVERSAL, _OID) != SIGNED_DATA:
        raise Unfamiliar("not a SignedData ContentInfo")
    explicit = _children(_expect(top[1], _CONTEXT, 0))
    if len(explicit) != 1:
        raise Unfamiliar("[0] holds more than the SignedData")
    return _seq(explicit[0])


class _SignedData:
    """SignedData's fields: encapContentInfo, certificates, crls, the one SignerInfo."""

    def __init__(self, content_info: bytes) -> None:
        fields = _signed_data(content_info)
        if len(fields) < 4:
            raise Unfamiliar("SignedData too short")
        _integer(fields[0])
        for digest in _children(_expect(fields[1], _UNIVERSAL, _SET)):
            _algorithm(digest)
        self.encap = _seq(fields[2])
        if not self.encap or len(self.encap) > 2:
            raise Unfamiliar("EncapsulatedContentInfo shape")
        _expect(self.encap[0], _UNIVERSAL, _OID)
        self.certs: tuple[bytes, ...] = ()
        self.crls: list[_Tlv] = []
        for item in fields[3:-1]:
            if not item[1]:
                raise Unfamiliar("primitive certificates or crls")
            if item[0] == _CONTEXT and item[2] == 0 and not self.certs:
                self.certs = tuple(_expect(c, _UNIVERSAL, _SEQUENCE) and c[3]
                                   for c in _children(item[4]))
            elif item[0] == _CONTEXT and item[2] == 1 and not self.crls:
                self.crls = _children(item[4])
            else:
                raise Unfamiliar("unexpected SignedData field")
        infos = _children(_expect(fields[-1], _UNIVERSAL, _SET))
        if len(infos) != 1:
            raise Unfamiliar("not one SignerInfo")
        si = _seq(infos[0])
        if len(si) < 6:
            raise Unfamiliar("SignerInfo too short")
        _integer(si[0])
        self.sid = si[1]
        self.digest_name = _algorithm(si[2])
        attrs = si[3]
        if attrs[0] != _CONTEXT or attrs[2] != 0 or not attrs[1] or attrs[3][:1] != b"\xa0":
            raise Unfamiliar("no signed attributes")
        self.signed_attrs = b"\x31" + attrs[3][1:]
        self.attrs = _attributes(attrs[4])
        self.sig_algo = _algorithm(si[4], algos.SignedDigestAlgorithmId)
        self.signature = _octets(si[5])
        self.unsigned: dict[bytes, list[_Tlv]] = {}
        if len(si) == 7:
            self.unsigned = _attributes(_expect(si[6], _CONTEXT, 1))
        elif len(si) > 7:
            raise Unfamiliar("SignerInfo too long")

    def sid_issuer_serial(self) -> tuple[bytes, int] | None:
        if (self.sid[0], self.sid[2]) != (_UNIVERSAL, _SEQUENCE):
            if (self.sid[0], self.sid[1], self.sid[2]) != (_CONTEXT, 0, 0):
                raise Unfamiliar("SignerIdentifier shape")
            return None          # [0] subjectKeyIdentifier
        parts = _seq(self.sid)
        if len(parts) != 2:
            raise Unfamiliar("issuerAndSerialNumber shape")
        return _distinguished_name(parts[0]), _integer(parts[1])

    def value(self, oid: bytes) -> _Tlv | None:
        values = self.attrs.get(oid)
        if values is None:
            return None
        if len(values) != 1:
            raise Unfamiliar("attribute not single-valued")
        return values[0]


def _attributes(content: bytes) -> dict[bytes, list[_Tlv]]:
    out: dict[bytes, list[_Tlv]] = {}
    for attr in _children(content):
        parts = _seq(attr)
        if len(parts) != 2:
            raise Unfamiliar("Attribute shape")
        oid = _expect(parts[0], _UNIVERSAL, _OID)
        if oid in out:
            raise Unfamiliar("attribute repeated")
        out[oid] = _children(_expect(parts[1], _UNIVERSAL, _SET))
    return out


def signed_parts(signature: bytes) -> SignedParts:
    sd = _SignedData(signature)
    econtent = None
    if _expect(sd.encap[0], _UNIVERSAL, _OID) != DATA:
        raise Unfamiliar("content type other than data")
    if len(sd.encap) == 2:
        inner = _children(_expect(sd.encap[1], _CONTEXT, 0))
        if len(inner) != 1:
            raise Unfamiliar("eContent shape")
        econtent = _octets(inner[0])
    ocsp: list[bytes] = []
    for item in sd.crls:
        if (item[0], item[2]) == (_UNIVERSAL, _SEQUENCE):
            continue                                     # a CRL
        other = _children(_expect(item, _CONTEXT, 1))
        if len(other) != 2:
            raise Unfamiliar("OtherRevocationInfoFormat shape")
        if _expect(other[0], _UNIVERSAL, _OID) == OCSP_RESPONSE:
            _expect(other[1], _UNIVERSAL, _SEQUENCE)
            ocsp.append(other[1][3])
    md = sd.value(ATTR_NAMES_R["message_digest"])
    ct = sd.value(ATTR_NAMES_R["content_type"])
    if ct is not None:
        _expect(ct, _UNIVERSAL, _OID)
    st = sd.value(ATTR_NAMES_R["signing_time"])
    ess_value = sd.value(ATTR_NAMES_R["signing_certificate_v2"])
    ess: tuple[str, bytes] | None = None
    ess_empty = False
    if ess_value is not None:
        ess_fields = _seq(ess_value)
        if len(ess_fields) != 1:
            raise Unfamiliar("SigningCertificateV2 shape (policies are read the other way)")
        ids = _seq(ess_fields[0])
        if not ids:
            ess_empty = True
        else:
            first = _seq(ids[0])
            if first and (first[0][0], first[0][2]) == (_UNIVERSAL, _SEQUENCE):
                algorithm, first = _algorithm(first[0]), first[1:]
            else:
                algorithm = "sha256"                     # hashAlgorithm DEFAULT sha256
            if not first or len(first) > 2:
                raise Unfamiliar("ESSCertIDv2 shape")
            ess = (algorithm, _octets(first[0]))
            if len(first) == 2:
                _seq(first[1])                           # issuerSerial
    sid = sd.sid_issuer_serial()
    tst = None
    token_values = sd.unsigned.get(ATTR_NAMES_R["signature_time_stamp_token"])
    if token_values:
        tst = token_values[0][3]
        _expect(token_values[0], _UNIVERSAL, _SEQUENCE)
    return SignedParts(
        certs=sd.certs, ocsp=tuple(ocsp), econtent=econtent, digest_name=sd.digest_name,
        sig_algo=sd.sig_algo, signature=sd.signature, signed_attrs=sd.signed_attrs,
        message_digest=_octets(md) if md is not None else None, has_content_type=ct is not None,
        signing_time=_time(st) if st is not None else None, ess=ess, ess_empty=ess_empty,
        sid_serial=sid[1] if sid else None, tst=tst)


ATTR_NAMES_R = {name: oid for oid, name in ATTR_NAMES.items()}


def tst_parts(token: bytes) -> TstParts:
    sd = _SignedData(token)
    if len(sd.encap) != 2 or _expect(sd.encap[0], _UNIVERSAL, _OID) != TST_INFO:
        raise Unfamiliar("not a TSTInfo")
    inner = _children(_expect(sd.encap[1], _CONTEXT, 0))
    if len(inner) != 1:
        raise Unfamiliar("eContent shape")
    tst_bytes = _octets(inner[0])
    info = _seq(_tlv(tst_bytes))
    if len(info) < 5:
        raise Unfamiliar("TSTInfo too short")
    imprint = _seq(info[2])
    if len(imprint) != 2:
        raise Unfamiliar("MessageImprint shape")
    md = sd.value(ATTR_NAMES_R["message_digest"])
    sid = sd.sid_issuer_serial()
    return TstParts(
        tst_info=tst_bytes, imprint_algo=_algorithm(imprint[0]), imprint=_octets(imprint[1]),
        gen_time=_time(info[4]), digest_name=sd.digest_name,
        message_digest=_octets(md) if md is not None else None, signed_attrs=sd.signed_attrs,
        sig_algo=sd.sig_algo, signature=sd.signature,
        sid_serial=sid[1] if sid else None, sid_issuer=sid[0] if sid else None,
        certs=sd.certs)
