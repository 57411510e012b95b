"""What the verifier reads from a CMS signature and from its time-stamp token, and the
reference way to read it: asn1crypto's CMS classes (``from_signed_data``, ``tst_from_token``).

``cps_sign.fastcms`` reads the same parts from the DER of the usual shape at a fraction of the
cost; anything it does not recognise is read here. Format problems end as verdicts:
TOTAL_FAILED/FORMAT_FAILURE for the signature, INDETERMINATE/NO_POE for its time stamp.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from asn1crypto import cms, core
from asn1crypto import tsp as _tsp  # noqa: F401 - registers signing-certificate-v2 and TSTInfo

from cps_sign import report as r
from cps_sign.report import Verdict


@dataclass(frozen=True)
class SignedParts:
    certs: tuple[bytes, ...]           # SignedData.certificates (X.509 ones), DER
    ocsp: tuple[bytes, ...]            # SignedData.crls: id-ri-ocsp-response values, DER
    econtent: bytes | None             # encapsulated content (None: detached)
    digest_name: str                   # SignerInfo.digestAlgorithm (asn1crypto name)
    sig_algo: str                      # SignerInfo.signatureAlgorithm (asn1crypto name)
    signature: bytes
    signed_attrs: bytes                # the DER the signature covers (SET OF)
    message_digest: bytes | None
    has_content_type: bool
    signing_time: dt.datetime | None
    ess: tuple[str, bytes] | None      # signing-certificate-v2: (hash name, certificate hash)
    ess_empty: bool                    # the attribute is there but names no certificate
    sid_serial: int | None             # None: signer named by subject key identifier
    tst: bytes | None                  # signature-time-stamp token (ContentInfo), DER


@dataclass(frozen=True)
class TstParts:
    tst_info: bytes                    # the DER of TSTInfo (what the TSA's message-digest hashes)
    imprint_algo: str
    imprint: bytes
    gen_time: dt.datetime
    digest_name: str
    message_digest: bytes | None
    signed_attrs: bytes
    sig_algo: str
    signature: bytes
    sid_serial: int | None
    sid_issuer: bytes | None           # DER of the TSA certificate's issuer Name
    certs: tuple[bytes, ...]


_OID_NAMES: dict[tuple[type, bytes], str] = {}


def oid_name(value: core.ObjectIdentifier) -> str:
    """asn1crypto's name of an OID, memoised by its DER content: ``.native`` recomputes the
    dotted form from the bytes for every new object (~25 per signature)."""
    key = (type(value), value.contents)
    name = _OID_NAMES.get(key)
    if name is None:
        name = value.native
        if len(_OID_NAMES) < 10_000:    # OIDs an attacker sends are not all kept
            _OID_NAMES[key] = name
    return name


def present(value: object) -> bool:
    """An OPTIONAL field is there (asn1crypto gives Void when not); ``.native`` would decode
    the whole subtree, certificates included, for the same answer."""
    return not isinstance(value, core.Void)


def set_of_der(attrs: cms.CMSAttributes, verdict: Verdict) -> bytes:
    """The DER the signature covers: the attributes with the SET OF tag, not their [0]
    IMPLICIT tag in SignerInfo (RFC 5652 §5.4). Only the one-byte tag differs (0xA0 -> 0x31);
    asn1crypto's ``untag()`` copies the whole parsed tree for that, ~3 ms a signature. Call it
    before reading any attribute: once its children are parsed, asn1crypto re-encodes a SET OF
    on ``dump()`` (sorting it), another ~3 ms."""
    der: bytes = attrs.dump()
    if der[:1] != b"\xa0":
        raise verdict
    return b"\x31" + der[1:]


def _attributes(attrs: cms.CMSAttributes, bad: Callable[[str], Verdict]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for attr in attrs:
        name = oid_name(attr["type"])
        if name in found:
            raise bad(f"attribute {name} repeated")
        found[name] = attr
    return found


def _value(found: dict[str, Any], name: str, bad: Callable[[str], Verdict]) -> Any:
    attr = found.get(name)
    if attr is None:
        return None
    values = attr["values"]
    if len(values) != 1:
        raise bad(f"attribute {name} not single-valued")
    return values[0]


def _format(detail: str) -> Verdict:
    return Verdict(r.TOTAL_FAILED, r.FORMAT_FAILURE, detail)


def _no_poe(detail: str) -> Verdict:
    return Verdict(r.INDETERMINATE, r.NO_POE, detail)


def _certs(signed: cms.SignedData) -> tuple[bytes, ...]:
    if not present(signed["certificates"]):
        return ()
    return tuple(c.chosen.dump() for c in signed["certificates"] if c.name == "certificate")


def from_signed_data(signed: cms.SignedData) -> SignedParts:
    infos = signed["signer_infos"]
    if len(infos) != 1:
        raise _format(f"{len(infos)} signer infos (one expected)")
    si = infos[0]
    attrs = si["signed_attrs"]
    if not present(attrs):
        raise _format("no signed attributes")
    signed_bytes = set_of_der(attrs, _format("signed attributes badly tagged"))
    digest_name = oid_name(si["digest_algorithm"]["algorithm"])
    found = _attributes(attrs, _format)
    message_digest = _value(found, "message_digest", _format)
    content_type = _value(found, "content_type", _format)
    signing_time = _value(found, "signing_time", _format)
    ess_value = _value(found, "signing_certificate_v2", _format)
    ess: tuple[str, bytes] | None = None
    ess_empty = False
    if ess_value is not None:
        ess_certs = ess_value["certs"]
        if len(ess_certs) < 1:
            ess_empty = True
        else:
            wanted = ess_certs[0]
            ess = (oid_name(wanted["hash_algorithm"]["algorithm"]), wanted["cert_hash"].native)
    sid = si["sid"]
    sid_serial = (sid.chosen["serial_number"].native
                  if sid.name == "issuer_and_serial_number" else None)
    tst = None
    unsigned = si["unsigned_attrs"]
    if present(unsigned):
        for attr in unsigned:
            if oid_name(attr["type"]) == "signature_time_stamp_token":
                tst = attr["values"][0].dump()
                break
    ocsp: tuple[bytes, ...] = ()
    if present(signed["crls"]):
        ocsp = tuple(c.chosen["other_rev_info"].dump() for c in signed["crls"]
                     if c.name == "other"
                     and oid_name(c.chosen["other_rev_info_format"]) == "ocsp_response")
    econtent = signed["encap_content_info"]["content"]
    return SignedParts(
        certs=_certs(signed), ocsp=ocsp,
        econtent=econtent.native if present(econtent) else None,
        digest_name=digest_name, sig_algo=oid_name(si["signature_algorithm"]["algorithm"]),
        signature=si["signature"].native, signed_attrs=signed_bytes,
        message_digest=message_digest.native if message_digest is not None else None,
        has_content_type=content_type is not None,
        signing_time=signing_time.native if signing_time is not None else None,
        ess=ess, ess_empty=ess_empty, sid_serial=sid_serial, tst=tst)


def tst_from_token(token: cms.ContentInfo) -> TstParts:
    if oid_name(token["content_type"]) != "signed_data":
        raise _no_poe("not a SignedData")
    signed = token["content"]
    encap = signed["encap_content_info"]
    if oid_name(encap["content_type"]) != "tst_info":
        raise _no_poe("not a TSTInfo")
    tst_bytes = encap["content"].contents
    tst_info = encap["content"].parsed
    imprint = tst_info["message_imprint"]
    if len(signed["signer_infos"]) != 1:
        raise _no_poe("one signer expected")
    tsi = signed["signer_infos"][0]
    tattrs = tsi["signed_attrs"]
    if not present(tattrs):
        raise _no_poe("no signed attributes")
    tsigned = set_of_der(tattrs, _no_poe("signed attributes badly tagged"))
    md = _value(_attributes(tattrs, _no_poe), "message_digest", _no_poe)
    sid = tsi["sid"]
    by_serial = sid.name == "issuer_and_serial_number"
    return TstParts(
        tst_info=tst_bytes, imprint_algo=oid_name(imprint["hash_algorithm"]["algorithm"]),
        imprint=imprint["hashed_message"].native, gen_time=tst_info["gen_time"].native,
        digest_name=oid_name(tsi["digest_algorithm"]["algorithm"]),
        message_digest=md.native if md is not None else None, signed_attrs=tsigned,
        sig_algo=oid_name(tsi["signature_algorithm"]["algorithm"]),
        signature=tsi["signature"].native,
        sid_serial=sid.chosen["serial_number"].native if by_serial else None,
        sid_issuer=sid.chosen["issuer"].dump() if by_serial else None, certs=_certs(signed))
