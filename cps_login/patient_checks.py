"""What the patient space accepts from patients and professionals, checked before anything is
stored: files (PDF, PNG, JPEG judged by their content, bounded), texts, health data (measures
in the plausible ranges of ``cps_login/data/health_data.json``). A refusal is ``Refused(key,
**fields)``: an ``InvalidInput`` whose English text the JSON API gives, and whose key the pages
say in their own language (``invalid.<key>`` in ``cps_login/pages/i18n.py``)."""

from __future__ import annotations

import datetime as dt
import functools
import io
import json
import logging
import threading
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from multiprocessing.connection import Connection
from typing import Any
from zoneinfo import ZoneInfo

from pki import sandbox
from pki.errors import InvalidInput
from pki.pdfguard import declared_size_problem

HEALTH_KINDS = ("allergy", "vaccination", "measure")

REFUSALS = {
    "file_empty": "the file is empty",
    "file_too_large": "the file is too large: {size} bytes, at most {max}",
    "file_type": "only PDF, PNG and JPEG files are accepted; this file is none of them",
    "file_disguised": "the file is named '{name}' but its content is {type}",
    "pdf_truncated": "the PDF is truncated (no end-of-file marker)",
    "pdf_active": "the PDF contains active content ({what}); print it to a plain PDF first",
    "pdf_unreadable": "the PDF cannot be read ({detail})",
    "pdf_no_page": "the PDF has no page",
    "pdf_busy": "the server is checking other PDF files; try again in a minute",
    "image_too_large": "the image is too large: {width}x{height} pixels",
    "image_unreadable": "the image cannot be read ({detail})",
    "image_mismatch": "the image's content ({format}) does not match its type",
    "required": "{field} is required",
    "too_long": "{field} is too long: {length} characters, at most {max}",
    "health_kind": "kind must be one of {kinds}",
    "date_future": "the date is in the future",
    "date_too_old": "the date is before 1900",
    "measure_unknown": "unknown measure '{name}'; known: {known}",
    "measure_value": "a {name} needs a value in {unit}",
    "measure_range": "{name} {value} {unit} is outside the plausible range {min}–{max} {unit}",
    "measure_two": "a {name} needs two values (systolic/diastolic)",
    "diastolic_below": "the diastolic pressure must be below the systolic",
    "share_days": "a share lasts 1 to {max} days, not {days}",
    "document_kind": "kind must be document or upload",
    "upload_quota": "the record already holds {count} of the patient's documents: the limit "
                    "is reached ({mb} MB at most in all)",
}

log = logging.getLogger(__name__)

# The record's calendar days are France's: a date a patient writes, "today" on a form, an age.
PARIS = ZoneInfo("Europe/Paris")


def today_in_france(now: dt.datetime) -> dt.date:
    """The calendar day in France at ``now`` (between 22:00 and midnight UTC it is already
    tomorrow's in Paris)."""
    return now.astimezone(PARIS).date()


class Refused(InvalidInput):
    """Bad input, with the key and fields to say it in the page's language."""

    def __init__(self, key: str, **fields: Any) -> None:
        super().__init__(REFUSALS[key].format(**fields))
        self.key = key
        self.fields = fields


@functools.cache
def health_data() -> Mapping[str, Any]:
    text = resources.files("cps_login.data").joinpath("health_data.json").read_text("utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


def limits() -> Mapping[str, Any]:
    return health_data()["limits"]  # type: ignore[no-any-return]


@dataclass(frozen=True)
class CheckedFile:
    filename: str
    media_type: str
    data: bytes


def check_file(filename: str, data: bytes, max_bytes: int) -> CheckedFile:
    """A PDF, PNG or JPEG file checked by its content (not its name or declared type): size,
    type, and that it parses; refused with a message naming the problem."""
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1].strip()[:128] or "document"
    if not data:
        raise Refused("file_empty")
    if len(data) > max_bytes:
        raise Refused("file_too_large", size=len(data), max=max_bytes)
    media_type = _sniff(data)
    if media_type is None:
        raise Refused("file_type")
    expected = {"pdf": "application/pdf", "png": "image/png", "jpg": "image/jpeg",
                "jpeg": "image/jpeg"}.get(name.rsplit(".", 1)[-1].lower() if "." in name else "")
    if expected is not None and expected != media_type:
        raise Refused("file_disguised", name=name, type=media_type)
    if media_type == "application/pdf":
        _check_pdf(data)
    else:
        _check_image(data, media_type)
    return CheckedFile(name, media_type, data)


def _sniff(data: bytes) -> str | None:
    if data.startswith(b"%PDF-"):
        return "application/pdf"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    return None


_ACTIVE_PDF = ("/JavaScript", "/JS", "/Launch", "/EmbeddedFile", "/EmbeddedFiles", "/RichMedia",
               "/XFA")
_MAX_PDF_OBJECTS = 200_000
# What the compressed streams the check decodes (object streams, xref streams) may expand to, in
# all, per upload: 4x the largest upload. zlib reaches ~1000:1: a 4 MiB upload, ~4 GB; pyHanko's
# own limits (0.38) allow 256 MiB or 100x the file, object streams kept in memory while read.
_MAX_PDF_INFLATED = 16 * 1024 * 1024
_MAX_PDF_XREF_STREAM = 4 * 1024 * 1024   # 20 bytes for each of _MAX_PDF_OBJECTS entries
_INFLATE_STEP = 64 * 1024
_FLATE = ("/FlateDecode", "/Fl")
_TOO_INFLATED = f"its compressed streams expand too much: {_MAX_PDF_INFLATED // 2**20} MiB at most"

# pyHanko makes ~250 bytes of Python objects of each byte it parses, and some files cost it far
# more CPU than their size says: what it parses of an upload is parsed in a child process, with
# hard limits (the child dies; the upload is refused; the worker stays as it was).
_PDF_CHILD_MEMORY = 384 * 1024 * 1024  # address space the child may add to what it starts with
_PDF_CHILD_CPU = 10                    # seconds of CPU: SIGXCPU, then SIGKILL a second later
_PDF_CHILD_WALL = 15.0                 # seconds until the parent kills it (asleep, or no CPU)
_PDF_CHECKS_AT_ONCE = 2                # children of one server process at a time
_PDF_CHECK_WAIT = 1.0                  # seconds an upload waits for one of them, then "busy"
# (short: a waiting upload holds one of the worker's threads; red team round 7, R7-2)
_PDF_ANSWER_MAX = 4096                 # bytes of the child's answer (JSON)
_PDF_SLOTS = threading.BoundedSemaphore(_PDF_CHECKS_AT_ONCE)
_TOO_COMPLEX = "too large or too complex to read safely"
# Imported once by the fork server (pki.sandbox), not by each child.
sandbox.preload(__name__, "pyhanko.pdf_utils.reader", "pyhanko.pdf_utils.filters",
                "pyhanko.pdf_utils.decode_limits")


class _Unreadable(Exception):
    """A reason to refuse the PDF found inside pyHanko's reader: no pyHanko error, so that no
    handler of pyHanko's (which turns some read errors into null objects) swallows it."""


def _check_pdf(data: bytes) -> None:
    """A PDF that pyHanko's reader opens, with pages, and no active content anywhere — every
    object of every revision is read (object streams decompressed, each only once it is known
    to stay within ``_MAX_PDF_INFLATED`` with the others), not just the raw bytes. The reading
    is done by a child process (``_read_pdf_in_child``)."""
    if b"%%EOF" not in data[-2048:]:
        raise Refused("pdf_truncated")
    problem = declared_size_problem(data)     # before pyHanko builds what the file declares
    if problem is not None:
        raise Refused("pdf_unreadable", detail=problem[:80])
    pages, active = _read_pdf_in_child(data)
    if active is not None:
        raise Refused("pdf_active", what=active[1:])
    if pages < 1:
        raise Refused("pdf_no_page")


def _read_pdf(data: bytes) -> tuple[int, str | None]:
    """The PDF's page count and first active-content key (or None), as pyHanko reads it; a
    ``Refused`` when it cannot. Run in the child process."""
    from pyhanko.pdf_utils.misc import PdfDecodeLimitError, PdfError

    try:
        reader = _upload_reader()(io.BytesIO(data))
        reader.check_object_streams()
        pages = int(reader.root["/Pages"]["/Count"])
        active = _active_content(reader)
    except _Unreadable as exc:
        raise Refused("pdf_unreadable", detail=str(exc)[:80]) from None
    except PdfDecodeLimitError:
        raise Refused("pdf_unreadable", detail=_TOO_INFLATED) from None
    except (PdfError, LookupError, TypeError, ValueError, AttributeError, AssertionError,
            NotImplementedError, ArithmeticError, RecursionError, zlib.error) as exc:
        raise Refused("pdf_unreadable", detail=str(exc)[:80]) from None
    return pages, active


def _read_pdf_in_child(data: bytes) -> tuple[int, str | None]:
    """``_read_pdf(data)`` in a child process with hard limits (``_PDF_CHILD_*``), at most
    ``_PDF_CHECKS_AT_ONCE`` at a time (then waiting up to ``_PDF_CHECK_WAIT``, then refused as
    busy). A child that dies or outlives ``_PDF_CHILD_WALL`` (killed) refuses the upload."""
    if not _PDF_SLOTS.acquire(timeout=_PDF_CHECK_WAIT):
        raise Refused("pdf_busy")
    try:
        return _answer(_run_child(data))
    finally:
        _PDF_SLOTS.release()


def _run_child(data: bytes) -> bytes | None:
    """The child's answer, or None when it gave none (killed, crashed, or timed out)."""
    try:
        return sandbox.run_child(_pdf_child, (data, _PDF_CHILD_MEMORY, _PDF_CHILD_CPU),
                                 wall=_PDF_CHILD_WALL, answer_max=_PDF_ANSWER_MAX,
                                 name="cps-pdf-check")
    except sandbox.NoChild:
        raise Refused("pdf_busy") from None


def _answer(raw: bytes | None) -> tuple[int, str | None]:
    """The child's answer (JSON, read as data: a child that parsed a hostile file is trusted
    with nothing else), or a refusal."""
    try:
        answer = json.loads(raw) if raw is not None else None
    except (ValueError, RecursionError):
        answer = None
    if isinstance(answer, dict) and isinstance(answer.get("unreadable"), str):
        raise Refused("pdf_unreadable", detail=answer["unreadable"][:80])
    if isinstance(answer, dict) and set(answer) == {"pages", "active"}:
        pages, active = answer["pages"], answer["active"]
        if type(pages) is int and (active is None or active in _ACTIVE_PDF):
            return pages, active
    raise Refused("pdf_unreadable", detail=_TOO_COMPLEX)


def _pdf_child(send: Connection, data: bytes, memory: int, cpu: int) -> None:
    """In the child: the limits, then ``_read_pdf(data)``, its answer sent as JSON."""
    sandbox.limit_child(memory, cpu)
    logging.disable(logging.CRITICAL)    # pyHanko's warnings, one per damaged object
    answer: dict[str, Any] = {"unreadable": _TOO_COMPLEX}
    try:
        pages, active = _read_pdf(data)
        answer = {"pages": pages, "active": active}
    except Refused as exc:
        answer = {"unreadable": str(exc.fields.get("detail", exc))}
    except (MemoryError, SystemError):   # out of memory (SystemError: C code that failed to
        pass                             # allocate); what the parse held is freed only now
    send.send_bytes(json.dumps(answer).encode())
    send.close()


@functools.cache
def _upload_reader() -> type[Any]:
    """pyHanko's reader for one upload (a subclass, not a global change: the signature verifier
    keeps pyHanko's own). Every object stream is checked before pyHanko inflates it: all those
    the file's objects are in as soon as the file is opened, any other the moment pyHanko is
    about to read one. Checked: FlateDecode or no filter, and what it inflates to (counted in steps,
    nothing kept) within what is left of ``_MAX_PDF_INFLATED``. pyHanko's decode limits, at the
    same budget, bound whatever else it decodes (xref streams, while the file is opened) and
    stay a second bound on object streams."""
    from pyhanko.pdf_utils import generic, misc
    from pyhanko.pdf_utils.decode_limits import (
        DEFAULT_PURPOSE_LIMITS,
        DecodeLimits,
        DecodePurpose,
        DocumentDecodeBudget,
        StreamDecodeLimits,
    )
    from pyhanko.pdf_utils.reader import PdfFileReader
    from pyhanko.pdf_utils.xref import ObjStreamRef

    decode_limits = DecodeLimits(
        per_stream=StreamDecodeLimits(max_output_size=_MAX_PDF_INFLATED),
        per_purpose={**DEFAULT_PURPOSE_LIMITS,     # an xref stream: a few bytes an object
                     DecodePurpose.XREF_STREAM: StreamDecodeLimits(
                         max_output_size=_MAX_PDF_XREF_STREAM)},
        document_budget=DocumentDecodeBudget(base_allowance=_MAX_PDF_INFLATED, max_ratio=0))

    read_non_whitespace: Any = misc.read_non_whitespace
    read_number: Any = generic.NumberObject.read_from_stream
    read_object: Any = generic.read_object

    class _StreamIndex:
        """An object stream's header, read as pyHanko reads it, each pair once."""

        def __init__(self, stream: Any, data: bytes) -> None:
            self.stream = stream
            self.header = io.BytesIO(data)        # the two share ``data``: no copy
            self.objects = io.BytesIO(data)
            self.read = 0                         # pairs read
            self.offsets: dict[Any, Any] = {}     # object number: offset of its first pair
            self.damaged = False

        def offset(self, idnum: int, count: int) -> Any:
            """The offset of the first of the ``count`` pairs naming ``idnum``, or None (no
            such pair before the end or before damage: pyHanko's ValueError). Any other error
            is raised, again at each call that reaches that pair, as pyHanko does."""
            if idnum in self.offsets:
                return self.offsets[idnum]
            header = self.header
            while self.read < count and not self.damaged:
                start = header.tell()
                try:
                    read_non_whitespace(header, seek_back=True)
                    objnum = read_number(header)
                    read_non_whitespace(header, seek_back=True)
                    offset = read_number(header)
                    read_non_whitespace(header, seek_back=True)
                except ValueError:
                    self.damaged = True
                    break
                except BaseException:
                    header.seek(start)
                    raise
                self.read += 1
                self.offsets.setdefault(objnum, offset)
                if objnum == idnum:
                    return offset
            return None

    class UploadReader(PdfFileReader):
        def __init__(self, stream: io.BytesIO) -> None:
            self.inflated = 0                    # what the checked object streams inflate to
            self.checked: set[int] = set()
            self.checking: set[int] = set()
            self.indexes: dict[int, _StreamIndex] = {}
            super().__init__(stream, strict=False, decode_limits=decode_limits)

        def check_object_streams(self) -> None:
            """The object streams the file's objects are read from (where pyHanko will look
            for each: its latest revision's), all checked before any is inflated."""
            numbers: set[int] = set()
            for ref in _all_refs(self):
                where = self.xrefs[ref]
                if isinstance(where, ObjStreamRef):
                    numbers.add(where.obj_stream_id)
            for number in sorted(numbers):
                self.check_object_stream(number)

        def check_object_stream(self, stmnum: int) -> None:
            if stmnum in self.checked:
                return
            if stmnum in self.checking:
                raise _Unreadable(f"object stream {stmnum} is inside itself")
            self.checking.add(stmnum)
            container = self.get_object(  # type: ignore[no-untyped-call]
                generic.Reference(stmnum, 0, self))
            self.inflated += _object_stream_size(container, stmnum,
                                                 _MAX_PDF_INFLATED - self.inflated)
            self.checked.add(stmnum)

        def _get_object_from_stream(self, idnum: int, stmnum: int, idx: int) -> Any:
            """pyHanko's (0.38, not strict), but the stream's header ("number offset" pairs)
            read once, as far as needed: pyHanko reads it from the start for each object,
            a cost in the square of the objects in the stream (3,000: 15 s of CPU)."""
            self.check_object_stream(stmnum)     # any other way pyHanko comes to read one
            stream = generic.Reference(stmnum, 0, self).get_object()
            assert isinstance(stream, generic.StreamObject)
            assert stream["/Type"] == "/ObjStm"
            if not (0 <= idx < stream["/N"]):
                return generic.NullObject()
            data = stream.read_data(DecodePurpose.OBJECT_STREAM)
            first_object = stream["/First"]
            count = len(range(stream["/N"]))     # a non-integer /N: pyHanko's TypeError
            if count > _MAX_PDF_OBJECTS:
                raise _Unreadable(f"object stream {stmnum} holds too many objects")
            index = self.indexes.get(stmnum)
            if index is None or index.stream is not stream:
                index = self.indexes[stmnum] = _StreamIndex(stream, data)
            offset = index.offset(idnum, count)
            if offset is None:                   # not there, or the header is damaged before
                return generic.NullObject()
            objects = index.objects
            objects.seek(first_object + offset)
            try:
                obj = read_object(objects, generic.Reference(idnum, 0, self))
            except (misc.PdfStreamError, misc.PdfReadError):
                return generic.NullObject()
            if isinstance(obj, (generic.StreamObject, generic.IndirectObject)):
                return obj
            # as pyHanko: what follows the object is read too (and may fail, as it fails there)
            read_non_whitespace(objects, seek_back=True, allow_eof=True)
            return obj

    return UploadReader


def _object_stream_size(stream: Any, number: int, allowed: int) -> int:
    """What object stream ``number`` decodes to, in bytes, found without keeping it: refused if
    it is no stream, has another filter than FlateDecode, is damaged or exceeds ``allowed``."""
    from pyhanko.pdf_utils import generic

    if not isinstance(stream, generic.StreamObject):
        raise _Unreadable(f"object stream {number} is no stream")
    filters = stream.raw_get("/Filter") if "/Filter" in stream else generic.ArrayObject()
    if isinstance(filters, generic.NameObject):
        filters = generic.ArrayObject([filters])
    data = stream.encoded_data
    if not isinstance(filters, generic.ArrayObject) or len(filters) > 1 or (
            filters and filters[0] not in _FLATE):
        raise _Unreadable(f"object stream {number} has filter {str(filters)[:40]}")
    if not filters:
        if len(data) > allowed:
            raise _Unreadable(_TOO_INFLATED)
        return len(data)
    return _inflated_size(data, number, allowed)


def _inflated_size(data: bytes, number: int, allowed: int) -> int:
    """The length of zlib ``data`` inflated, ``_INFLATE_STEP`` bytes in and out at a time: an
    ``_Unreadable`` as soon as it passes ``allowed``, never more than a step in memory."""
    inflater = zlib.decompressobj()
    total = 0
    view = memoryview(data)
    try:
        for start in range(0, len(view), _INFLATE_STEP):
            pending: bytes | memoryview = view[start:start + _INFLATE_STEP]
            while True:
                out = inflater.decompress(pending, _INFLATE_STEP)
                total += len(out)
                if total > allowed:
                    raise _Unreadable(_TOO_INFLATED)
                if inflater.eof:
                    return total
                pending = inflater.unconsumed_tail
                if not pending and len(out) < _INFLATE_STEP:
                    break
    except zlib.error as exc:
        raise _Unreadable(f"object stream {number}: {exc}") from None
    raise _Unreadable(f"object stream {number} is truncated")


def _all_refs(reader: Any) -> Iterator[Any]:
    """Every object reference of every revision of the file; a ValueError past
    ``_MAX_PDF_OBJECTS``."""
    seen = 0
    for revision in range(reader.xrefs.total_revisions):
        for ref in reader.xrefs.explicit_refs_in_revision(revision):
            seen += 1
            if seen > _MAX_PDF_OBJECTS:
                raise ValueError("too many objects")
            yield ref


def _active_content(reader: Any) -> str | None:
    """The first active-content key or name in any object of the file, or None."""
    from pyhanko.pdf_utils import generic

    for ref in _all_refs(reader):
        stack = [reader.get_object(ref)]
        while stack:
            obj = stack.pop()
            if isinstance(obj, generic.DictionaryObject):   # streams too
                for key in obj:
                    if str(key) in _ACTIVE_PDF:
                        return str(key)
                stack.extend(v for v in obj.values()
                             if not isinstance(v, generic.IndirectObject))
            elif isinstance(obj, generic.ArrayObject):
                stack.extend(v for v in obj if not isinstance(v, generic.IndirectObject))
            elif isinstance(obj, generic.NameObject) and str(obj) in _ACTIVE_PDF:
                return str(obj)
    return None


def _check_image(data: bytes, media_type: str) -> None:
    from PIL import Image, UnidentifiedImageError

    max_pixels = int(limits()["image_max_pixels"])
    try:
        with Image.open(io.BytesIO(data)) as image:
            fmt = image.format
            width, height = image.size
            if width * height > max_pixels:
                raise Refused("image_too_large", width=width, height=height)
            image.verify()
    except InvalidInput:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError,
            Image.DecompressionBombError) as exc:
        raise Refused("image_unreadable", detail=str(exc)[:80]) from None
    if {"PNG": "image/png", "JPEG": "image/jpeg"}.get(fmt or "") != media_type:
        raise Refused("image_mismatch", format=fmt)


def check_text(text: str, field: str, max_chars: int, required: bool = True) -> str:
    value = (text or "").strip()
    if required and not value:
        raise Refused("required", field=field)
    if len(value) > max_chars:
        raise Refused("too_long", field=field, length=len(value), max=max_chars)
    return value


@dataclass(frozen=True)
class HealthInput:
    kind: str
    name: str
    on_date: dt.date
    value: float | None = None
    value2: float | None = None
    note: str = ""


def check_health(entry: HealthInput, today: dt.date) -> tuple[float | None, float | None,
                                                              str | None]:
    """(value, value2, unit) of a valid entry; InvalidInput naming the field otherwise."""
    if entry.kind not in HEALTH_KINDS:
        raise Refused("health_kind", kinds=", ".join(HEALTH_KINDS))
    if entry.on_date > today:
        raise Refused("date_future")
    if entry.on_date < dt.date(1900, 1, 1):
        raise Refused("date_too_old")
    check_text(entry.note, "note", 500, required=False)
    if entry.kind != "measure":
        check_text(entry.name, "allergy" if entry.kind == "allergy" else "vaccine", 128)
        return None, None, None
    spec = health_data()["measures"].get(entry.name)
    if spec is None:
        raise Refused("measure_unknown", name=entry.name,
                      known=", ".join(sorted(health_data()["measures"])))
    unit = str(spec["unit"])
    if entry.value is None:
        raise Refused("measure_value", name=entry.name, unit=unit)
    if not spec["min"] <= entry.value <= spec["max"]:
        raise Refused("measure_range", name=entry.name, value=f"{entry.value:g}", unit=unit,
                      min=f"{spec['min']:g}", max=f"{spec['max']:g}")
    if "min2" in spec:
        if entry.value2 is None:
            raise Refused("measure_two", name=entry.name)
        if not spec["min2"] <= entry.value2 <= spec["max2"]:
            raise Refused("measure_range", name="diastolic", value=f"{entry.value2:g}",
                          unit=unit, min=f"{spec['min2']:g}", max=f"{spec['max2']:g}")
        if entry.value2 >= entry.value:
            raise Refused("diastolic_below")
        return entry.value, entry.value2, unit
    return entry.value, None, unit
