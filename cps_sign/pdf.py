"""What a PAdES signature is made of, read with pyHanko: the CMS, the digest of the signed
byte range, the coverage of the document, and the OCSP responses of the DSS (B-LT)."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

from asn1crypto import cms

from cps_sign import report as r
from cps_sign.report import Verdict
from pki.pdfguard import declared_size_problem

MiB = 1024 * 1024
# What pyHanko may inflate for one document, in all: 16 MiB, or 100 times the file for a
# larger one (a local file given to cps-verify). pyHanko's own default is 256 MiB whatever the
# file: each of many small object streams may inflate to its 4 MiB floor, so 248 KB posted to
# the public POST /verify made the broker hold 259 MiB and spend 1.8 s of CPU.
DOCUMENT_DECODE_BASE = 16 * MiB
DOCUMENT_DECODE_RATIO = 100


def _decode_limits() -> object:
    from pyhanko.pdf_utils.decode_limits import DecodeLimits, DocumentDecodeBudget

    return DecodeLimits(document_budget=DocumentDecodeBudget(
        base_allowance=DOCUMENT_DECODE_BASE, max_ratio=DOCUMENT_DECODE_RATIO))


@dataclass(frozen=True)
class PdfSignature:
    signed_data: cms.SignedData
    digest_of: Callable[[str], bytes]
    ocsp: list[bytes]


def read_pdf_signature(pdf: bytes) -> PdfSignature:
    """The document's last signature; the signed byte range must cover the whole revision
    (later incremental updates may only add validation data: the DSS)."""
    from pyhanko.pdf_utils.misc import PdfError
    from pyhanko.pdf_utils.reader import PdfFileReader
    from pyhanko.sign.diff_analysis import DiffResult, ModificationLevel
    from pyhanko.sign.validation.dss import DocumentSecurityStore
    from pyhanko.sign.validation.errors import SignatureValidationError
    from pyhanko.sign.validation.status import SignatureCoverageLevel

    problem = declared_size_problem(pdf)      # before pyHanko builds what the file declares
    if problem is not None:
        raise Verdict(r.TOTAL_FAILED, r.FORMAT_FAILURE, f"not a readable PDF: {problem}")
    try:
        reader = PdfFileReader(io.BytesIO(pdf), strict=False,
                               decode_limits=_decode_limits())  # type: ignore[arg-type]
        signatures = reader.embedded_regular_signatures
    except (PdfError, SignatureValidationError, ValueError, KeyError, IndexError,
            TypeError, AttributeError) as exc:
        raise Verdict(r.TOTAL_FAILED, r.FORMAT_FAILURE, f"not a readable PDF: {exc}"[:300]
                      ) from None
    if not signatures:
        raise Verdict(r.INDETERMINATE, r.SIGNED_DATA_NOT_FOUND, "the PDF carries no signature")
    sig = signatures[-1]
    try:
        sig.compute_integrity_info()     # digest, coverage, pyHanko's diff analysis
    except (PdfError, SignatureValidationError, ValueError, KeyError, TypeError,
            NotImplementedError) as exc:
        raise Verdict(r.TOTAL_FAILED, r.FORMAT_FAILURE, f"byte range unreadable: {exc}"[:300]
                      ) from None
    if sig.coverage < SignatureCoverageLevel.ENTIRE_REVISION:
        raise Verdict(r.TOTAL_FAILED, r.HASH_FAILURE,
                      "the signature does not cover its whole revision of the document")
    changes = sig.diff_result
    if sig.coverage != SignatureCoverageLevel.ENTIRE_FILE and (
            not isinstance(changes, DiffResult)
            or changes.modification_level > ModificationLevel.LTA_UPDATES):
        raise Verdict(r.TOTAL_FAILED, r.HASH_FAILURE,
                      "the document was changed after it was signed")
    ocsp: list[bytes] = []
    try:
        dss = DocumentSecurityStore.read_dss(reader)
        ocsp = [ref.get_object().data for ref in dss.ocsps]
    except (PdfError, ValueError, KeyError, TypeError, AttributeError):
        ocsp = []     # no DSS (B-B, B-T) or an unreadable one: no embedded revocation data
    return PdfSignature(sig.signed_data, lambda name: sig.compute_digest(name), ocsp)
