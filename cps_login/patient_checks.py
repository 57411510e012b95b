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
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any
from zoneinfo import ZoneInfo

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


def _check_pdf(data: bytes) -> None:
    """A PDF that pyHanko's reader opens, with pages, and no active content anywhere — every
    object of every revision is read (object streams decompressed), not just the raw bytes."""
    from pyhanko.pdf_utils.misc import PdfError
    from pyhanko.pdf_utils.reader import PdfFileReader

    if b"%%EOF" not in data[-2048:]:
        raise Refused("pdf_truncated")
    problem = declared_size_problem(data)     # before pyHanko builds what the file declares
    if problem is not None:
        raise Refused("pdf_unreadable", detail=problem[:80])
    try:
        reader = PdfFileReader(io.BytesIO(data), strict=False)
        pages = int(reader.root["/Pages"]["/Count"])
        active = _active_content(reader)
    except (PdfError, KeyError, TypeError, ValueError, IndexError, RecursionError) as exc:
        raise Refused("pdf_unreadable", detail=str(exc)[:80]) from None
    if active is not None:
        raise Refused("pdf_active", what=active[1:])
    if pages < 1:
        raise Refused("pdf_no_page")


def _active_content(reader: Any) -> str | None:
    """The first active-content key or name in any object of the file, or None."""
    from pyhanko.pdf_utils import generic

    seen = 0
    for revision in range(reader.xrefs.total_revisions):
        for ref in reader.xrefs.explicit_refs_in_revision(revision):
            seen += 1
            if seen > _MAX_PDF_OBJECTS:
                raise ValueError("too many objects")
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
