"""Hand-written DER for CRLs: the pieces whose cost grows with the number of revoked entries.

cryptography's ``CertificateRevocationListBuilder`` is quadratic in the number of entries and
asn1crypto builds one Python object per node; at national scale (10^5..10^6 entries per CA) both
dominate publication. A revoked-certificate entry is one small fixed shape::

    SEQUENCE { INTEGER serial, Time revocationDate,
               SEQUENCE OF Extension OPTIONAL  -- reasonCode, invalidityDate }

so it is encoded here with byte concatenation, and the rare, size-independent parts (names,
extensions, algorithm identifiers) are either copied from DER that cryptography produced or
encoded with the few helpers below. Every function returns ``bytes``; callers append to one
``bytearray`` so the list is built in a single buffer.
"""

from __future__ import annotations

import datetime as dt

from pki.der import (  # the primitives, re-exported: CRL code says der.sequence, der.tlv, ...
    bit_string,
    boolean_true,
    integer,
    length,
    octet_string,
    oid,
    sequence,
    tlv,
)

__all__ = ["bit_string", "boolean_true", "integer", "length", "octet_string", "oid", "sequence",
           "tlv"]


def serial_from_hex(text: str) -> bytes:
    """The INTEGER TLV of a positive serial stored as hex (``openssl x509 -serial`` form)."""
    raw = bytes.fromhex(text if len(text) % 2 == 0 else "0" + text)
    raw = raw.lstrip(b"\x00")
    if not raw:
        raise ValueError("certificate serial must be positive, got 0")
    if raw[0] & 0x80:
        raw = b"\x00" + raw
    return b"\x02" + length(len(raw)) + raw


def _as_utc(value: dt.datetime) -> dt.datetime:
    if value.tzinfo is dt.UTC:
        return value
    if value.tzinfo is None:
        raise ValueError("naive datetime in a CRL; use timezone-aware UTC")
    return value.astimezone(dt.UTC)


def time(value: dt.datetime) -> bytes:
    """RFC 5280 Time: UTCTime for 1950..2049, GeneralizedTime otherwise; whole seconds."""
    v = _as_utc(value)
    if 1950 <= v.year < 2050:
        # %-formatting: about twice as fast as an f-string with format specs (PostgreSQL rows).
        return b"\x17\x0d" + ("%02d%02d%02d%02d%02d%02dZ" % (  # noqa: UP031
            v.year % 100, v.month, v.day, v.hour, v.minute, v.second)).encode()
    return generalized_time(v)


def generalized_time(value: dt.datetime) -> bytes:
    v = _as_utc(value)
    return b"\x18\x0f" + ("%04d%02d%02d%02d%02d%02dZ" % (  # noqa: UP031
        v.year, v.month, v.day, v.hour, v.minute, v.second)).encode()


def time_from_store(value: dt.datetime | str) -> bytes:
    """``time()`` for a value straight from a DB row.

    PostgreSQL drivers give datetimes; SQLite gives the text SQLAlchemy stored
    (``YYYY-MM-DD HH:MM:SS[.ffffff]``, naive UTC, see pki.store.models.UtcDateTime). Slicing that
    text is several times faster than parsing it, which matters at a million rows.
    """
    if isinstance(value, str):
        if len(value) >= 19 and value[4] == "-" and value[10] in " T" and "+" not in value[19:]:
            year = value[0:4]
            digits = (value[5:7] + value[8:10] + value[11:13] + value[14:16]
                      + value[17:19] + "Z")
            if "1950" <= year < "2050":
                return b"\x17\x0d" + (year[2:] + digits).encode()
            return b"\x18\x0f" + (year + digits).encode()
        parsed = dt.datetime.fromisoformat(value)
        return time(parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC))
    return time(value)


def generalized_time_from_store(value: dt.datetime | str) -> bytes:
    if isinstance(value, str):
        if len(value) >= 19 and value[4] == "-" and value[10] in " T" and "+" not in value[19:]:
            return b"\x18\x0f" + (value[0:4] + value[5:7] + value[8:10] + value[11:13]
                                  + value[14:16] + value[17:19] + "Z").encode()
        parsed = dt.datetime.fromisoformat(value)
        return generalized_time(parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC))
    return generalized_time(value)


def extension(oid_der: bytes, value: bytes, *, critical: bool = False) -> bytes:
    return sequence(oid_der, boolean_true() if critical else b"", octet_string(value))


# --- CRL-specific OIDs -----------------------------------------------------------------------

OID_REASON_CODE = oid("2.5.29.21")
OID_INVALIDITY_DATE = oid("2.5.29.24")
OID_CRL_NUMBER = oid("2.5.29.20")
OID_DELTA_CRL_INDICATOR = oid("2.5.29.27")
OID_ISSUING_DISTRIBUTION_POINT = oid("2.5.29.28")
OID_FRESHEST_CRL = oid("2.5.29.46")
OID_AUTHORITY_KEY_IDENTIFIER = oid("2.5.29.35")

# RFC 5280 §5.3.1 CRLReason; 7 is not used.
REASON_CODES: dict[str, int] = {
    "unspecified": 0,
    "keyCompromise": 1,
    "cACompromise": 2,
    "affiliationChanged": 3,
    "superseded": 4,
    "cessationOfOperation": 5,
    "certificateHold": 6,
    "removeFromCRL": 8,
    "privilegeWithdrawn": 9,
    "aACompromise": 10,
}
_REASON_BY_FOLDED = {name.lower(): code for name, code in REASON_CODES.items()}


def reason_code(name: str | None) -> int:
    """The CRLReason of a stored reason name (camelCase as in RFC 5280; case and ``_`` ignored)."""
    if name is None:
        return 0
    code = _REASON_BY_FOLDED.get(name.replace("_", "").replace("-", "").lower())
    if code is None:
        raise ValueError(f"unknown revocation reason {name!r}; expected one of "
                         f"{', '.join(REASON_CODES)}")
    return code


def reason_extension(code: int) -> bytes:
    """The reasonCode entry extension (non-critical, RFC 5280 §5.3.1)."""
    return extension(OID_REASON_CODE, b"\x0a\x01" + bytes((code,)))


# Precomputed per code: an entry's extension for its reason, b"" for unspecified (RFC 5280
# §5.3.1: "the reason code extension SHOULD be absent instead of using unspecified").
REASON_EXTENSIONS: dict[int, bytes] = {
    code: (b"" if code == 0 else reason_extension(code)) for code in REASON_CODES.values()
}
