"""What a PAdES signature is made of, read with pyHanko: the CMS, the digest of the signed
byte range, the coverage of the document, and the OCSP responses of the DSS (B-LT).

``read_pdf_signature`` reads in this process (``cps-verify`` on a local file);
``read_pdf_signature_isolated`` in a child with hard limits (pki.sandbox), for ``POST /verify``:
a 2 KB PDF whose one array holds a million entries costs pyHanko 11 s of CPU and +290 MB, and
the decode budget bounds inflated bytes, not the objects built of them."""

from __future__ import annotations

import base64
import io
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from asn1crypto import cms

from cps_sign import report as r
from cps_sign.report import Verdict
from pki import sandbox
from pki.pdfguard import declared_size_problem

MiB = 1024 * 1024
# What pyHanko may inflate for one document, in all: 16 MiB, or 100 times the file for a
# larger one (a local file given to cps-verify). pyHanko's own default is 256 MiB whatever the
# file: each of many small object streams may inflate to its 4 MiB floor, so 248 KB posted to
# the public POST /verify made the broker hold 259 MiB and spend 1.8 s of CPU.
DOCUMENT_DECODE_BASE = 16 * MiB
DOCUMENT_DECODE_RATIO = 100

# The child that reads a posted PDF (read_pdf_signature_isolated). A posted PDF is at most
# the broker's 256 KiB body: a real one is read in well under a second.
CHILD_MEMORY = 384 * MiB        # address space it may add to what it starts with
CHILD_CPU = 3                   # seconds of CPU: SIGXCPU, then SIGKILL a second later
CHILD_WALL = 6.0                # seconds until the parent kills it
CHILDREN_AT_ONCE = 2            # per server process
# A request does not wait for a child: it would hold one of the worker's threads, and a few
# of them waiting would stall every other route (red team round 7, R7-2). Busy: 503 at once.
CHILD_WAIT = 0.05
CHILDREN_PER_CLIENT = 1         # at once, per client address (an IPv6 /64): R7-1
_ANSWER_MAX = 4 * MiB           # the CMS and the DSS's OCSP responses of a posted PDF
_SLOTS = threading.BoundedSemaphore(CHILDREN_AT_ONCE)
_CLIENTS: dict[str, int] = {}   # client -> its children running now
_CLIENTS_LOCK = threading.Lock()
_TOO_COMPLEX = "not a readable PDF: too large or too complex to read safely"
MAX_OCSP = 16                   # OCSP responses of a DSS that are looked at
sandbox.preload(__name__, "pyhanko.pdf_utils.reader", "pyhanko.sign.validation",
                "pyhanko.sign.diff_analysis")


class PdfBusy(Exception):
    """Every PDF child of this process is busy (or none can be started), or this client
    already has its share of them: try again later."""

    def __init__(self, mine: bool = False) -> None:
        super().__init__("this client's PDF is still being read" if mine else
                         "every PDF reader is busy")
        self.mine = mine        # the client's own share is taken (429), not the server's (503)


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


def read_pdf_signature_isolated(pdf: bytes, client: str = "") -> PdfSignature:
    """``read_pdf_signature`` in a child process with hard limits (``CHILD_*``): at most
    ``CHILDREN_AT_ONCE`` at a time, ``CHILDREN_PER_CLIENT`` of them for one ``client`` (its
    address, an IPv6 /64), else ``PdfBusy`` at once (no thread waits). A child that dies, or
    outlives ``CHILD_WALL`` (killed), gives FORMAT_FAILURE: the file is too large or too
    complex to read safely. Its answer is read as bounded data."""
    problem = declared_size_problem(pdf)      # cheap, and no child for it
    if problem is not None:
        raise Verdict(r.TOTAL_FAILED, r.FORMAT_FAILURE, f"not a readable PDF: {problem}")
    with _CLIENTS_LOCK:
        if _CLIENTS.get(client, 0) >= CHILDREN_PER_CLIENT:
            raise PdfBusy(mine=True)
        _CLIENTS[client] = _CLIENTS.get(client, 0) + 1
    try:
        if not _SLOTS.acquire(timeout=CHILD_WAIT):
            raise PdfBusy()
        try:
            raw = sandbox.run_child(_read_in_child, (pdf, CHILD_MEMORY, CHILD_CPU),
                                    wall=CHILD_WALL, answer_max=_ANSWER_MAX,
                                    name="cps-verify-pdf")
        except sandbox.NoChild:
            raise PdfBusy() from None
        finally:
            _SLOTS.release()
    finally:
        with _CLIENTS_LOCK:
            left = _CLIENTS.pop(client, 1) - 1
            if left > 0:
                _CLIENTS[client] = left
    return _from_answer(raw)


def _read_in_child(send: Connection, pdf: bytes, memory: int, cpu: int) -> None:
    """In the child: the limits, then ``read_pdf_signature``; its result sent as JSON."""
    sandbox.limit_child(memory, cpu)
    logging.disable(logging.CRITICAL)    # pyHanko's warnings, one per damaged object
    answer: dict[str, Any] = {"verdict": [r.TOTAL_FAILED, r.FORMAT_FAILURE, _TOO_COMPLEX]}
    try:
        found = read_pdf_signature(pdf)
        der = found.signed_data.untag().dump()     # no [0] of its ContentInfo
        name: str | None = None
        digest = b""
        try:
            name = found.signed_data["signer_infos"][0]["digest_algorithm"]["algorithm"].native
            digest = found.digest_of(str(name))
        except Exception:              # the parent's CMS reader says what is malformed
            name, digest = None, b""
        answer = {"signed_data": _b64(der), "digest_name": name, "digest": _b64(digest),
                  "ocsp": [_b64(o) for o in found.ocsp if isinstance(o, bytes)]}
    except Verdict as verdict:
        answer = {"verdict": [verdict.indication, verdict.sub_indication, verdict.detail]}
    except (MemoryError, SystemError):   # out of memory; what the parse held is freed now
        pass
    except Exception as exc:
        answer = {"verdict": [r.TOTAL_FAILED, r.FORMAT_FAILURE,
                              f"not a readable PDF: {type(exc).__name__}: {exc}"[:300]]}
    send.send_bytes(json.dumps(answer).encode())
    send.close()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _from_answer(raw: bytes | None) -> PdfSignature:
    """The child's answer, read as data (a child that parsed a hostile file is trusted with
    nothing else): a PdfSignature, or the Verdict it reached."""
    try:
        answer = json.loads(raw) if raw is not None else None
    except (ValueError, RecursionError):
        answer = None
    if not isinstance(answer, dict):
        raise Verdict(r.TOTAL_FAILED, r.FORMAT_FAILURE, _TOO_COMPLEX)
    verdict = answer.get("verdict")
    if isinstance(verdict, list) and len(verdict) == 3:
        indication, sub, detail = verdict
        if indication in (r.TOTAL_FAILED, r.INDETERMINATE) and isinstance(sub, str) \
                and len(sub) <= 64 and isinstance(detail, str):
            raise Verdict(indication, sub, detail[:300])
        raise Verdict(r.TOTAL_FAILED, r.FORMAT_FAILURE, _TOO_COMPLEX)
    try:
        signed_data = cms.SignedData.load(base64.b64decode(answer["signed_data"],
                                                           validate=True))
        name = answer["digest_name"]
        digest = base64.b64decode(answer["digest"], validate=True)
        # each distinct response once, and a bound: a B-LT document carries two or three
        ocsp = list(dict.fromkeys(base64.b64decode(o, validate=True)
                                  for o in answer["ocsp"][:MAX_OCSP * 4]))[:MAX_OCSP]
        if name is not None and not isinstance(name, str):
            raise TypeError("digest_name")
    except (KeyError, TypeError, ValueError):
        raise Verdict(r.TOTAL_FAILED, r.FORMAT_FAILURE, _TOO_COMPLEX) from None
    return PdfSignature(signed_data, lambda asked: digest if asked == name else b"", ocsp)
