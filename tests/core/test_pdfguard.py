"""pki.pdfguard: counts a PDF declares beyond what its bytes could hold are refused before
parsing; real documents pass."""

from __future__ import annotations

import io

import pytest

from pki.pdfguard import declared_size_problem


def _pillow_pdf(pages: int = 3) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    frames = [Image.new("RGB", (40, 30), (i * 40, 80, 120)) for i in range(pages)]
    frames[0].save(out, "PDF", save_all=True, append_images=frames[1:])
    return out.getvalue()


def _pyhanko_pdf() -> bytes:
    from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
    from pyhanko.pdf_utils.writer import PdfFileWriter

    writer = PdfFileWriter()
    out = io.BytesIO()
    writer.write(out)
    inc = IncrementalPdfFileWriter(io.BytesIO(out.getvalue()))
    again = io.BytesIO()
    inc.write(again)                       # an incremental update: a second xref section
    return again.getvalue()


@pytest.mark.parametrize("make", [_pillow_pdf, _pyhanko_pdf])
def test_real_documents_pass(make: object) -> None:
    data = make()  # type: ignore[operator]
    assert data.startswith(b"%PDF")
    assert declared_size_problem(data) is None


def test_a_trailer_size_beyond_the_file_is_refused() -> None:
    data = _pillow_pdf().replace(b"/Size ", b"/Size 99999999", 1)
    assert "declares 99999999" in (declared_size_problem(data) or "")


def test_an_escaped_name_does_not_hide_the_size() -> None:
    data = _pillow_pdf().replace(b"/Size ", b"/Si#7Ae 5000000", 1)
    assert declared_size_problem(data) is not None


def test_xref_stream_index_counts_are_summed() -> None:
    body = b"%PDF-1.7\n3 0 obj\n<< /Type /XRef /Size 4 /Index [0 2 900 5000] /W [1 2 1] >>\n"
    assert "xref stream declares 5002" in (declared_size_problem(body + b" " * 100) or "")


def test_classic_table_subsections_are_summed() -> None:
    table = b"xref\n0 1\n0000000000 65535 f \n7 3000\n0000000009 00000 n \n"
    problem = declared_size_problem(b"%PDF-1.4\n" + table + b"trailer\n<< >>\n%%EOF\n")
    assert "xref table declares 3001" in (problem or "")


def test_object_stream_count_beyond_the_file_is_refused() -> None:
    assert declared_size_problem(b"%PDF-1.5\n1 0 obj << /Type /ObjStm /N 100000 >>") is not None
