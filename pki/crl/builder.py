"""Build, lint and sign one CRL: entries streamed into a single buffer, TBS signed in the HSM.

Memory: the entries are appended to one ``bytearray`` that starts with reserved room for the
TBSCertList and CertificateList headers, so wrapping the list costs no copy of the entries; the
signer is handed one copy of the TBS and the caller gets one immutable copy of the result. Peak:
about twice the DER size (see tests/crl/test_scale.py).

Lint before sign: a CRL of the same shape with a throw-away signature goes through pkilint before
the HSM sees anything. pkilint parses every entry into Python objects (~10^4 entries/s), which at a
million entries would cost more than building and signing; every entry comes out of the one
fixed-shape encoder in ``der.revoked_entry``, so above ``LINT_ENTRY_LIMIT`` the linted CRL carries a
bounded sample instead: the first entries plus the first entry of every distinct shape (reason,
presence of an invalidity date, time type, serial length). Everything size-independent (name,
times, extensions, algorithm) is linted byte for byte as it will be signed.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from cryptography import x509

from pki.ca.lint import lint_crl
from pki.crl import der
from pki.errors import LintFailed

LINT_ENTRY_LIMIT = 2000     # lint the real CRL up to this many entries, a sample above
SAMPLE_HEAD = 100           # entries kept from the start of a big list for its lint sample
_RESERVE = 8192             # room before the entries for the TBS and CertificateList headers
_VERSION_V2 = b"\x02\x01\x01"

# Status of a certificate row -> CRL reason for its entry. ``active`` only appears in deltas:
# a released hold is listed once more with removeFromCRL (RFC 5280 §5.2.4).
HOLD = der.REASON_CODES["certificateHold"]
REMOVE_FROM_CRL = der.REASON_CODES["removeFromCRL"]


class Signer(Protocol):
    """What the builder needs from pki.signer.TbsSigner (the consumer declares it)."""

    @property
    def algorithm_identifier(self) -> bytes: ...

    def sign(self, tbs: bytes) -> bytes: ...

    def throwaway_sign(self, tbs: bytes) -> bytes: ...


Row = tuple[str, "dt.datetime | str", "str | None", "dt.datetime | str | None", str]
"""(serial hex, revocation time, reason name, invalidity date, status) as the store gives it."""


def entry_reason(status: str, reason: str | None) -> int:
    if status == "hold":
        return HOLD
    if status == "active":
        return REMOVE_FROM_CRL
    if status == "revoked":
        return der.reason_code(reason)
    raise ValueError(f"certificate status {status!r} has no CRL entry")


class EntryBuffer:
    """revokedCertificates entries, DER-encoded into one growing buffer."""

    def __init__(self) -> None:
        self.buffer = bytearray(_RESERVE)
        self.count = 0
        self.sample: list[bytes] = []
        self._shapes: set[tuple[int, bool, int, int]] = set()

    @property
    def size(self) -> int:
        return len(self.buffer) - _RESERVE

    def extend(self, rows: Iterable[Row]) -> None:
        """Append entries for store rows.

        The loop is the hot path at 10^6 rows, so it is flat and takes shortcuts for the common
        shapes (even-length hex serial without leading zero byte, SQLite time text of a year in
        2000..2049); anything else goes through the general encoders in ``der``.
        """
        buf = self.buffer
        append = buf.extend
        join = b"".join
        fromhex = bytes.fromhex
        sample = self.sample
        shapes = self._shapes
        reasons: dict[tuple[str, str | None], int] = {}
        reason_exts = der.REASON_EXTENSIONS
        count = self.count
        for serial_hex, revoked_at, reason, invalidity, status in rows:
            key = (status, reason)
            code = reasons.get(key)
            if code is None:
                code = reasons[key] = entry_reason(status, reason)
            if len(serial_hex) & 1 or serial_hex[:2] == "00":
                serial = der.serial_from_hex(serial_hex)
            else:
                raw = fromhex(serial_hex)
                serial = (_SERIAL_PAD[len(raw)] if raw[0] & 0x80 else _SERIAL[len(raw)]) + raw
            when = _utctime_fast(revoked_at) or der.time_from_store(revoked_at)
            exts = reason_exts[code]
            if invalidity is not None:
                inv = _gentime_fast(invalidity) or der.generalized_time_from_store(invalidity)
                exts += _INVALIDITY_EXT_HDR + inv
            if exts:
                exts = b"\x30" + _LEN[len(exts)] + exts
            entry = join((b"\x30", _LEN[len(serial) + len(when) + len(exts)], serial, when, exts))
            append(entry)
            count += 1
            shape = (code, invalidity is None, when[0], len(serial))
            if count <= SAMPLE_HEAD:
                sample.append(entry)
                shapes.add(shape)
            elif shape not in shapes:
                shapes.add(shape)
                sample.append(entry)
        self.count = count


# Every entry is shorter than 128 bytes (serial <= 23, time <= 17, extensions <= 40), so lengths
# are one byte; these tables save a call per field.
_LEN = [bytes((n,)) for n in range(128)]
_SERIAL = [b"\x02" + bytes((n,)) for n in range(22)]
_SERIAL_PAD = [b"\x02" + bytes((n + 1,)) + b"\x00" for n in range(21)]
# SEQUENCE { OID invalidityDate, OCTET STRING { GeneralizedTime (15 chars) } }, minus the time.
_INVALIDITY_EXT_HDR = b"\x30\x18" + der.OID_INVALIDITY_DATE + b"\x04\x11"
_SQLITE_TIME_LEN = len("2025-01-01 00:00:00.000000")


def _utctime_fast(value: object) -> bytes | None:
    """UTCTime TLV from SQLite's stored text for years 2000..2049; None: use the general path."""
    if type(value) is str and len(value) == _SQLITE_TIME_LEN and value[:2] == "20" \
            and value[2:4] < "50":
        out = b"\x17\x0d" + value[2:19].encode().translate(None, b"-: ") + b"Z"
        if len(out) == 15:
            return out
    return None


def _gentime_fast(value: object) -> bytes | None:
    if type(value) is str and len(value) == _SQLITE_TIME_LEN:
        out = b"\x18\x0f" + value[:19].encode().translate(None, b"-: ") + b"Z"
        if len(out) == 17:
            return out
    return None


@dataclass(frozen=True)
class CrlFields:
    """Everything in a TBSCertList except the entries."""

    issuer: x509.Certificate
    this_update: dt.datetime
    next_update: dt.datetime
    number: int
    delta_base: int | None = None           # set: a delta CRL (critical deltaCRLIndicator)
    idp_uri: str | None = None              # set: critical issuingDistributionPoint (a shard)
    only_user_certs: bool = False
    freshest_uri: str | None = None         # set: freshestCRL (full CRLs with deltas)

    def extensions_der(self) -> bytes:
        """The [0] crlExtensions field, in a fixed order (AKI, number, delta, IDP, freshest)."""
        exts = [der.extension(der.OID_AUTHORITY_KEY_IDENTIFIER, _aki(self.issuer).public_bytes()),
                der.extension(der.OID_CRL_NUMBER, der.integer(self.number))]
        if self.delta_base is not None:
            exts.append(der.extension(der.OID_DELTA_CRL_INDICATOR, der.integer(self.delta_base),
                                      critical=True))
        if self.idp_uri is not None:
            idp = x509.IssuingDistributionPoint(
                full_name=[x509.UniformResourceIdentifier(self.idp_uri)], relative_name=None,
                only_contains_user_certs=self.only_user_certs, only_contains_ca_certs=False,
                only_some_reasons=None, indirect_crl=False,
                only_contains_attribute_certs=False)
            exts.append(der.extension(der.OID_ISSUING_DISTRIBUTION_POINT, idp.public_bytes(),
                                      critical=True))
        if self.freshest_uri is not None:
            freshest = x509.FreshestCRL([x509.DistributionPoint(
                full_name=[x509.UniformResourceIdentifier(self.freshest_uri)],
                relative_name=None, reasons=None, crl_issuer=None)])
            exts.append(der.extension(der.OID_FRESHEST_CRL, freshest.public_bytes()))
        return der.tlv(0xA0, der.sequence(*exts))

    def prefix_der(self, algorithm_identifier: bytes) -> bytes:
        """version .. nextUpdate."""
        if self.next_update <= self.this_update:
            raise ValueError("CRL nextUpdate must be after thisUpdate")
        return (_VERSION_V2 + algorithm_identifier + self.issuer.subject.public_bytes()
                + der.time(self.this_update) + der.time(self.next_update))


def _aki(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    try:
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(
            issuer.public_key())  # type: ignore[arg-type]


def _tbs(prefix: bytes, entries: bytes, extensions: bytes) -> bytes:
    revoked = der.sequence(entries) if entries else b""
    return der.sequence(prefix, revoked, extensions)


def _certificate_list(tbs: bytes, algorithm_identifier: bytes, signature: bytes) -> bytes:
    return der.sequence(tbs, algorithm_identifier, der.bit_string(signature))


def lint_before_sign(fields: CrlFields, entries: EntryBuffer, signer: Signer, what: str) -> None:
    """pkilint the CRL as it will be signed (or its bounded-sample twin); raise on findings."""
    alg = signer.algorithm_identifier
    body = (bytes(entries.buffer[_RESERVE:]) if entries.count <= LINT_ENTRY_LIMIT
            else b"".join(entries.sample))
    tbs = _tbs(fields.prefix_der(alg), body, fields.extensions_der())
    findings = lint_crl(_certificate_list(tbs, alg, signer.throwaway_sign(tbs)))
    if findings:
        raise LintFailed(what, findings)


def build(fields: CrlFields, entries: EntryBuffer, signer: Signer, *,
          what: str = "CRL") -> bytes:
    """Lint, then sign in the HSM and assemble the CertificateList. Consumes ``entries``."""
    lint_before_sign(fields, entries, signer, what)
    return sign(fields, entries, signer)


def sign(fields: CrlFields, entries: EntryBuffer, signer: Signer) -> bytes:
    """Sign an already linted CRL and assemble the CertificateList. Consumes ``entries``."""
    alg = signer.algorithm_identifier
    buf = entries.buffer
    entries_len = len(buf) - _RESERVE
    extensions = fields.extensions_der()
    revoked_hdr = b"\x30" + der.length(entries_len) if entries_len else b""
    prefix = fields.prefix_der(alg)
    tbs_len = len(prefix) + len(revoked_hdr) + entries_len + len(extensions)
    tbs_hdr = b"\x30" + der.length(tbs_len) + prefix + revoked_hdr
    if len(tbs_hdr) + 16 > _RESERVE:
        raise ValueError("CRL issuer name too large for the reserved header room")
    tbs_start = _RESERVE - len(tbs_hdr)
    buf[tbs_start:_RESERVE] = tbs_hdr          # same length: no move
    buf += extensions
    with memoryview(buf) as view:              # one copy of the TBS, not a slice + a copy
        tbs = bytes(view[tbs_start:])
    signature = signer.sign(tbs)
    del tbs
    tail = alg + der.bit_string(signature)
    total = len(buf) - tbs_start + len(tail)
    outer = b"\x30" + der.length(total)
    start = tbs_start - len(outer)
    buf[start:tbs_start] = outer
    del buf[:start]                            # O(1): CPython moves the bytearray's start
    buf += tail
    out = bytes(buf)
    buf.clear()
    return out
