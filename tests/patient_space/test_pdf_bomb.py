"""Compression bombs in a patient's PDF upload: the check of cps_login/patient_checks.py reads
every object, so it inflates the file's object streams (and pyHanko its xref streams). A 4 MiB
upload of zlib data (~1000:1) would inflate to ~4 GB in the worker; what the check inflates is
bounded in all (``_MAX_PDF_INFLATED``), counted before pyHanko inflates anything, and an
ordinary compressed PDF still passes.

What pyHanko parses costs far more than its bytes (~250 bytes of objects a byte of names) and
some files far more CPU than their size says: the whole parse runs in a child process with hard
limits (memory, CPU, wall time), two at a time, and an object stream's header is read once, not
once for each of its objects."""

from __future__ import annotations

import io
import json
import logging
import threading
import time
import tracemalloc
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from sqlalchemy import func, select

from cps_login import patient_checks
from cps_login.patient_checks import _MAX_PDF_INFLATED, Refused, check_file
from pki.errors import InvalidInput
from pki.store.patient_models import PatientUpload
from tests.patient_space.conftest import Space, add_page, pdf, pdf_with_script

MiB = 1024 * 1024
MAX_UPLOAD = 4 * MiB
CATALOG = [(1, b"<< /Type /Catalog /Pages 2 0 R >>"),
           (2, b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>"),
           (3, b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] >>")]


def deflate(parts: Sequence[bytes], gap: int = 0) -> bytes:
    """``parts`` compressed, with ``gap`` bytes of ``x`` after the first, fed 1 MiB at a time
    (the test never holds the inflated data)."""
    out = zlib.compressobj(9)
    chunks = [out.compress(parts[0])]
    block = b"x" * MiB
    for start in range(0, gap, MiB):
        chunks.append(out.compress(block[:min(MiB, gap - start)]))
    chunks.extend(out.compress(part) for part in parts[1:])
    chunks.append(out.flush())
    return b"".join(chunks)


def object_stream(objects: Sequence[tuple[int, bytes]], gap: int = 0,
                  encode: Callable[[Sequence[bytes], int], bytes] | None = deflate,
                  filters: bytes = b"/Filter /FlateDecode") -> tuple[bytes, bytes, list[int]]:
    """The dictionary entries and data of an object stream holding ``objects``, with ``gap``
    unread bytes between its header and its first object (pyHanko seeks over them, so only the
    inflation costs: a bomb, not a slow parse)."""
    body, offsets = b"", []
    for _, obj in objects:
        offsets.append(len(body))
        body += obj + b"\n"
    header = b" ".join(b"%d %d" % (n, off) for (n, _), off in zip(objects, offsets,
                                                                   strict=True)) + b"\n"
    if encode is None:
        data, filters = header + b"x" * gap + body, b""
    else:
        data = encode([header, body], gap)
    entries = b"/Type /ObjStm /N %d /First %d %s" % (len(objects), len(header) + gap, filters)
    return entries, data, [n for n, _ in objects]


def pdf_with_object_streams(streams: Sequence[tuple[bytes, bytes, list[int]]],
                            padding: int = 0, size: int | None = None) -> bytes:
    """A PDF 1.5 file whose objects live in ``streams`` (object streams), with an xref stream;
    ``padding`` bytes of an unused stream before it, ``size`` its declared /Size."""
    out = io.BytesIO()
    out.write(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    where: dict[int, tuple[int, int, int]] = {}
    number = 1 + max(n for _, _, inside in streams for n in inside)
    for entries, data, inside in streams:
        where[number] = (1, out.tell(), 0)
        for index, n in enumerate(inside):
            where[n] = (2, number, index)
        out.write(b"%d 0 obj\n<< %s /Length %d >>\nstream\n" % (number, entries, len(data))
                  + data + b"\nendstream\nendobj\n")
        number += 1
    if padding:
        where[number] = (1, out.tell(), 0)
        out.write(b"%d 0 obj\n<< /Length %d >>\nstream\n" % (number, padding)
                  + b"\0" * padding + b"\nendstream\nendobj\n")
        number += 1
    where[number] = (1, out.tell(), 0)
    declared = size or number + 1
    rows = b"".join(b"%c%s%s" % (kind, a.to_bytes(4, "big"), b.to_bytes(2, "big"))
                    for kind, a, b in (where.get(n, (0, 0, 0)) for n in range(declared)))
    compressed = zlib.compress(rows, 9)
    xref = out.tell()
    out.write(b"%d 0 obj\n<< /Type /XRef /Size %d /W [1 4 2] /Root 1 0 R /Filter /FlateDecode"
              b" /Length %d >>\nstream\n" % (number, declared, len(compressed)))
    out.write(compressed + b"\nendstream\nendobj\nstartxref\n%d\n%%%%EOF\n" % xref)
    return out.getvalue()


def checked(data: bytes) -> tuple[Any, int]:
    """What ``check_file`` gives (or the refusal it raises) and the peak of memory allocated
    meanwhile (pyHanko imported before)."""
    check_file("warm.pdf", pdf_with_object_streams([object_stream(CATALOG)]), MAX_UPLOAD)
    tracemalloc.start()
    try:
        try:
            result: Any = check_file("upload.pdf", data, MAX_UPLOAD)
        except InvalidInput as exc:
            result = exc
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def assert_too_inflated(result: Any) -> None:
    assert isinstance(result, Refused), result
    assert result.key == "pdf_unreadable"
    assert "expand too much" in str(result)


# --- (a) bombs ------------------------------------------------------------------------------
def test_object_stream_bomb_is_refused_before_it_is_inflated() -> None:
    """A 260 KB upload whose object stream inflates to 256 MiB: refused without inflating it
    (before: pyHanko inflated it up to its own cap, ~25 MB here, and a crafted file up to
    64 MiB a stream and 100x the file in all)."""
    bomb = pdf_with_object_streams([object_stream(CATALOG, gap=256 * MiB)])
    assert len(bomb) < MiB
    result, peak = checked(bomb)
    assert_too_inflated(result)
    assert peak < 2 * MiB


def test_bomb_spread_over_object_streams_is_refused_before_any_is_read() -> None:
    """Twelve object streams of 2 MiB each: none over pyHanko's own limit for one stream, 24 MiB
    in all, kept in memory while the objects are read (accepted before). Refused as soon as the
    file is opened: the sum is counted before pyHanko inflates any."""
    streams = [object_stream(CATALOG, gap=2 * MiB)]
    streams += [object_stream([(10 + i, b"<< /Filler %d >>" % i)], gap=2 * MiB)
                for i in range(12)]
    result, peak = checked(pdf_with_object_streams(streams))
    assert 12 * 2 * MiB > _MAX_PDF_INFLATED
    assert_too_inflated(result)
    assert peak < 2 * MiB


def test_xref_stream_bomb_is_refused() -> None:
    """An xref stream declaring 700,000 entries (the file's length allows it) that inflates to
    4.9 MB: pyHanko decodes xref streams while it opens the file, before any check; its limits
    now bound them (before: parsed in full, 0.7 million entries in memory)."""
    bomb = pdf_with_object_streams([object_stream(CATALOG)], padding=720_000, size=700_000)
    result, peak = checked(bomb)
    assert_too_inflated(result)
    assert peak < 16 * MiB


def test_bomb_upload_is_refused_and_nothing_stored(space: Space) -> None:
    ins = space.enrol()
    bomb = pdf_with_object_streams([object_stream(CATALOG, gap=64 * MiB)])
    with pytest.raises(InvalidInput, match="compressed streams expand too much"):
        space.space.upload(ins, ins, "Compte rendu", "cr.pdf", bomb)
    with space.store.session() as session:
        assert session.execute(select(func.count()).select_from(PatientUpload)).scalar() == 0


# --- what each object stream may be ---------------------------------------------------------
def ascii85(parts: Sequence[bytes]) -> bytes:
    from pyhanko.pdf_utils.filters import ASCII85Decode

    return ASCII85Decode().encode(b"".join(parts))


@pytest.mark.parametrize(("filters", "encode"), [
    # inflated, then ASCII85 decoded by pyHanko at once, in pure Python: 4x the bytes it gets
    (b"/Filter [/FlateDecode /ASCII85Decode]", lambda parts, gap: zlib.compress(ascii85(parts))),
    (b"/Filter /LZWDecode", lambda parts, gap: b"".join(parts)),      # no decoder: a crash
    (b"/Filter 9 0 R", lambda parts, gap: b"".join(parts)),
], ids=["flate-then-ascii85", "lzw", "indirect"])
def test_object_stream_with_another_filter_is_refused(
        filters: bytes, encode: Callable[[Sequence[bytes], int], bytes]) -> None:
    result, _ = checked(pdf_with_object_streams(
        [object_stream(CATALOG, encode=encode, filters=filters)]))
    assert isinstance(result, Refused) and result.key == "pdf_unreadable", result
    assert "has filter" in str(result)


@pytest.mark.parametrize("data", [b"\x00" * 40, zlib.compress(b"1 0 " * 400)[:-30]],
                         ids=["not-zlib", "truncated"])
def test_damaged_object_stream_is_refused_not_a_crash(data: bytes) -> None:
    """zlib's errors were no refusal: the upload answered 500."""
    result, _ = checked(pdf_with_object_streams(
        [object_stream(CATALOG, encode=lambda parts, gap: data)]))
    assert isinstance(result, Refused) and result.key == "pdf_unreadable", result
    assert "object stream" in str(result)


# --- (b) ordinary files ---------------------------------------------------------------------
def test_ordinary_object_streams_are_accepted() -> None:
    from pyhanko.pdf_utils import generic
    from pyhanko.pdf_utils.writer import PdfFileWriter

    writer = PdfFileWriter(stream_xrefs=True)
    stream = writer.prepare_object_stream()
    add_page(writer, b"BT /F1 12 Tf 72 720 Td (Bilan) Tj ET")
    for n in range(300):
        writer.add_object(generic.DictionaryObject({
            generic.NameObject("/Type"): generic.NameObject("/StructElem"),
            generic.NameObject("/S"): generic.NameObject("/P"),
            generic.NameObject("/ID"): generic.TextStringObject(f"p{n}")}), obj_stream=stream)
    out = io.BytesIO()
    writer.write(out)
    data = out.getvalue()
    assert b"/ObjStm" in data and b"/StructElem" not in data
    result, _ = checked(data)
    assert result.media_type == "application/pdf"


def test_object_streams_within_the_budget_are_accepted() -> None:
    """Three object streams, one uncompressed, 3 MiB inflated in all: under the budget."""
    streams = [object_stream(CATALOG, gap=MiB),
               object_stream([(10, b"<< /A 1 >>"), (11, b"[1 2 3]")], gap=MiB),
               object_stream([(12, b"<< /B (texte) >>")], gap=MiB, encode=None)]
    result, _ = checked(pdf_with_object_streams(streams))
    assert result.media_type == "application/pdf"


# --- (c) active content still seen ----------------------------------------------------------
def test_javascript_hidden_in_an_object_stream_is_still_refused() -> None:
    result, _ = checked(pdf_with_script(hidden=True))
    assert isinstance(result, Refused) and result.key == "pdf_active", result
    assert result.fields["what"] in ("JS", "JavaScript")


def test_javascript_in_an_object_stream_after_large_ones_is_refused() -> None:
    """Object streams that pass the budget are still all read: the script in the last one."""
    action = b"<< /S /JavaScript /JS (app.alert(1)) >>"
    gap = min(3 * MiB, _MAX_PDF_INFLATED // 4)       # pyHanko refuses one over 4 MiB at 100:1
    streams = [object_stream([(1, b"<< /Type /Catalog /Pages 2 0 R /OpenAction 10 0 R >>"),
                              *CATALOG[1:]], gap=gap),
               object_stream([(11, b"<< /A 1 >>")], gap=gap),
               object_stream([(10, action)], gap=gap)]
    result, _ = checked(pdf_with_object_streams(streams))
    assert isinstance(result, Refused) and result.key == "pdf_active", result


# --- (d) the parse in a child process with hard limits ----------------------------------------
TOO_COMPLEX = "too large or too complex to read safely"


def names(size: int, encode: Callable[[Sequence[bytes], int], bytes] | None = deflate) -> bytes:
    """A one-page PDF whose object stream also holds an array of ``size`` bytes of /a/a/a…:
    each 2 bytes a name object for pyHanko (compressed: a 2 MiB array is a 2.5 KB upload)."""
    return pdf_with_object_streams([object_stream([*CATALOG, (4, b"[" + b"/a" * (size // 2)
                                                             + b"]")], encode=encode)])


def assert_too_complex(result: Any) -> None:
    assert isinstance(result, Refused), result
    assert (result.key, result.fields) == ("pdf_unreadable", {"detail": TOO_COMPLEX})


def test_names_bomb_is_paid_by_the_child_not_the_worker() -> None:
    """2 MiB of names in a 2.5 KB upload: pyHanko made ~500 MiB of objects of them in the worker
    (+503 MiB of its memory, 5 s of CPU). Now the child reading it runs out of its memory
    (``_PDF_CHILD_MEMORY`` more than it starts with) and the upload is refused; the worker
    allocates nothing but the upload's copy to the child."""
    bomb = names(2 * MiB)
    assert len(bomb) < 4096
    started = time.monotonic()
    result, peak = checked(bomb)
    assert time.monotonic() - started < patient_checks._PDF_CHILD_WALL + 2
    assert_too_complex(result)
    assert peak < MiB


@pytest.fixture
def log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.WARNING, logger=patient_checks.__name__)
    return caplog


def test_a_child_over_its_cpu_time_is_killed_and_the_upload_refused(
        monkeypatch: pytest.MonkeyPatch, log: pytest.LogCaptureFixture) -> None:
    """1 MiB of names, not compressed: ~3 s of CPU. With 1 s allowed, the kernel ends the child
    (SIGXCPU) and the upload is refused (the wall time is no limit here)."""
    monkeypatch.setattr(patient_checks, "_PDF_CHILD_CPU", 1)
    monkeypatch.setattr(patient_checks, "_PDF_CHILD_WALL", 120.0)
    result, _ = checked(names(MiB, encode=None))
    assert_too_complex(result)
    assert "SIGXCPU" in log.text


def test_a_child_over_its_wall_time_is_killed_and_the_upload_refused(
        monkeypatch: pytest.MonkeyPatch, log: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(patient_checks, "_PDF_CHILD_WALL", 0.5)
    started = time.monotonic()
    result, _ = checked(names(MiB, encode=None))
    assert time.monotonic() - started < 5
    assert_too_complex(result)
    assert "SIGKILL" in log.text


def many_objects(count: int) -> bytes:
    """One object stream of ``count`` small objects, a script (the open action) the last."""
    script = 10 + count
    objects = [(1, b"<< /Type /Catalog /Pages 2 0 R /OpenAction %d 0 R >>" % script),
               *CATALOG[1:], *((10 + n, b"<< /A %d >>" % n) for n in range(count)),
               (script, b"<< /S /JavaScript /JS (app.alert(1)) >>")]
    return pdf_with_object_streams([object_stream(objects)])


def test_object_stream_of_thousands_of_objects_is_read_in_linear_time() -> None:
    """pyHanko reads an object stream's header from the start for each object it takes from
    it: 3,000 objects in a 30 KB upload cost 15 s of CPU (the square of the objects). The
    header is now read once: a fraction of a second, and the script at the end still found."""
    data = many_objects(4000)
    assert len(data) < 64 * 1024
    cpu = time.process_time()
    assert patient_checks._read_pdf(data) == (1, "/JS")
    assert time.process_time() - cpu < 1.0
    result, _ = checked(data)
    assert isinstance(result, Refused) and result.key == "pdf_active", result


def raw_object_stream(header: bytes, body: bytes, inside: list[int], n: bytes = b"",
                      first: bytes = b"") -> tuple[bytes, bytes, list[int]]:
    """An object stream written by hand (not compressed): ``header`` its "number offset"
    pairs, ``inside`` the objects the xref stream says it holds, in its order."""
    entries = b"/Type /ObjStm /N %s /First %s" % (n or b"%d" % len(inside),
                                                  first or b"%d" % len(header))
    return entries, header + body, inside


@pytest.mark.parametrize(("header", "body", "inside", "n"), [
    (b"10 0 11 11 ", b"<< /A 1 >> [1 2 (x)]", [10, 11], b""),
    (b"10 0 10 11 ", b"<< /A 1 >> << /B 2 >>", [12, 10], b""),        # a number twice
    (b"10 0 x 11 12 22 ", b"<< /A 1 >> << /B 2 >> << /C 3 >>", [10, 11, 12], b""),  # damaged
    (b"10 0 ", b"<< /A 1 >>", [10, 11, 12], b"3"),                    # fewer pairs than /N
    (b"10 0 11", b"", [10, 11, 12], b"3"),                            # ends inside a pair
    (b"10 0 11 500 ", b"<< /A 1 >>", [10, 11], b""),                  # offset past the end
    (b"10 0 11 11 ", b"<< /A 1 >> >>>> ", [10, 11], b""),              # no object there
    (b"10 0 11 -40 ", b"<< /A 1 >> [2]", [10, 11], b""),              # negative offset
    (b"10 0 11 38 ", b"<< /Length 3 >>\nstream\nabc\nendstream\n [1]", [10, 11], b""),
    (b"10 0 11 7 ", b"5 0 R  [1]", [10, 11], b""),                    # a reference
    (b"10 0 11 11 ", b"<< /A 1 >> [2]", [10, 11], b"1"),              # index past /N
    (b"10.0 0 11 11.0 ", b"<< /A 1 >> [2]", [10, 11], b""),           # real numbers
    (b"10 0 11 11 ", b"<< /A 1 >> [2]", [10, 11], b"2.0"),
    (b"10 0 11 1.2.3 12 5 ", b"<< /A 1 >> [2]", [10, 11, 12], b""),   # no number
], ids=["plain", "twice", "damaged", "short", "cut", "past-end", "no-object", "negative",
        "stream", "reference", "past-n", "reals", "real-n", "not-a-number"])
def test_object_stream_reading_is_pyhankos(header: bytes, body: bytes, inside: list[int],
                                           n: bytes) -> None:
    """Each object as pyHanko's own reader (not strict) gives it, or the same error, whatever
    order they are read in, each read once or twice."""
    from pyhanko.pdf_utils import generic
    from pyhanko.pdf_utils.reader import PdfFileReader

    data = pdf_with_object_streams([object_stream(CATALOG),
                                    raw_object_stream(header, body, inside, n)])

    def outcome(reader: Any, number: int) -> Any:
        reader.resolved_objects.pop((0, number), None)      # read again, not from the cache
        try:
            obj = reader.get_object(generic.Reference(number, 0, reader))
        except Exception as exc:                            # the same error: the point
            return type(exc)
        if isinstance(obj, generic.StreamObject):
            return "stream", dict(obj), obj.encoded_data
        if isinstance(obj, generic.IndirectObject):
            return "reference", obj.idnum
        return type(obj), None if isinstance(obj, generic.NullObject) else repr(obj)

    numbers = [1, *inside]
    for order in (numbers, numbers[::-1], numbers * 2):
        ours = patient_checks._upload_reader()(io.BytesIO(data))
        theirs = PdfFileReader(io.BytesIO(data), strict=False)
        assert [outcome(ours, n) for n in order] == [outcome(theirs, n) for n in order]


def test_object_stream_of_too_many_objects_is_refused() -> None:
    """/N by reference, out of reach of the declared-size scan: at most ``_MAX_PDF_OBJECTS``."""
    data = pdf_with_object_streams([
        object_stream([*CATALOG, (9, b"300000")]),
        raw_object_stream(b"10 0 ", b"<< /A 1 >>", [10], n=b"9 0 R")])
    result, _ = checked(data)
    assert isinstance(result, Refused) and result.key == "pdf_unreadable", result
    assert "too many objects" in str(result)


def test_ordinary_upload_is_checked_in_a_child_and_stored(
        space: Space, monkeypatch: pytest.MonkeyPatch) -> None:
    answers: list[bytes | None] = []
    run_child = patient_checks._run_child

    def spy(data: bytes) -> bytes | None:
        answers.append(run_child(data))
        return answers[-1]

    monkeypatch.setattr(patient_checks, "_run_child", spy)
    ins = space.enrol()
    sent = pdf()
    up = space.space.upload(ins, ins, "Compte rendu", "cr.pdf", sent)
    assert [json.loads(a or b"") for a in answers] == [{"pages": 1, "active": None}]
    assert space.space.read_upload(space.doctor.actor, ins, up, download=True)[1] == sent


def test_uploads_wait_for_a_free_check_then_are_refused_as_busy(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """At most ``_PDF_CHECKS_AT_ONCE`` children: the next upload waits for one to end, at most
    ``_PDF_CHECK_WAIT``, then is refused ("try again")."""
    assert patient_checks._PDF_CHECKS_AT_ONCE == 2
    slots = threading.BoundedSemaphore(2)
    assert slots.acquire() and slots.acquire()            # two checks under way
    monkeypatch.setattr(patient_checks, "_PDF_SLOTS", slots)
    monkeypatch.setattr(patient_checks, "_PDF_CHECK_WAIT", 0.2)
    with pytest.raises(Refused) as refused:
        check_file("cr.pdf", pdf(), MAX_UPLOAD)
    assert refused.value.key == "pdf_busy" and "try again" in str(refused.value)
    monkeypatch.setattr(patient_checks, "_PDF_CHECK_WAIT", 30.0)
    ends = threading.Timer(0.3, slots.release)             # one of them ends
    ends.start()
    assert check_file("cr.pdf", pdf(), MAX_UPLOAD).media_type == "application/pdf"
    ends.join()


@pytest.mark.parametrize("answer", [
    None, b"", b"not json", b"[1]", b'{"pages": "1", "active": null}',
    b'{"pages": 1, "active": "/Foo"}', b'{"pages": 1}', b"[" * 3000,
])
def test_the_childs_answer_is_data_checked_not_trusted(answer: bytes | None) -> None:
    """No answer (the child died: out of memory, out of CPU, killed, crashed) or a malformed
    one: the upload is refused, never accepted, never a 500."""
    with pytest.raises(Refused) as refused:
        patient_checks._answer(answer)
    assert_too_complex(refused.value)
