"""Patient uploads (read later by professionals in their browser): active content a curious or
hostile patient hides from the byte-marker filter of cps_login/patient_checks.py."""

from __future__ import annotations

import io

import pytest

from cps_login.patient_checks import check_file
from pki.errors import InvalidInput


def _pdf(objs: list[bytes]) -> bytes:
    out = io.BytesIO()
    out.write(b"%PDF-1.7\n")
    offsets = []
    for i, obj in enumerate(objs, 1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % i + obj + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1))
    for off in offsets:
        out.write(b"%010d 00000 n \n" % off)
    out.write(b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n"
              % (len(objs) + 1, xref))
    return out.getvalue()


PAGES = [b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
         b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 10 10] >>"]


@pytest.mark.parametrize("catalog", [
    # PDF name escapes: /J#61vaScript is /JavaScript, /J#53 is /JS, /L#61unch is /Launch
    b"<< /Type /Catalog /Pages 2 0 R /OpenAction << /S /J#61vaScript /J#53 (app.alert(1)) >> >>",
    b"<< /Type /Catalog /Pages 2 0 R /OpenAction << /S /L#61unch /F (calc.exe) >> >>",
    b"<< /Type /Catalog /Pages 2 0 R /Names << /#45mbeddedFiles 4 0 R >> >>",
])
def test_escaped_active_content_is_refused(catalog: bytes) -> None:
    """FINDING F6 (fixed by 5a98c2c): the active-content check grepped raw bytes for
    '/JavaScript', '/JS', '/Launch'...; a PDF name may spell any character as #xx, which every
    reader decodes, so one escape bypassed the filter: a scripted PDF was stored and served to
    professionals."""
    pdf = _pdf([catalog, *PAGES, b"<< /Names [] >>"])
    with pytest.raises(InvalidInput):
        check_file("report.pdf", pdf, 10 * 1024 * 1024)


def test_plain_active_content_is_refused() -> None:
    pdf = _pdf([b"<< /Type /Catalog /Pages 2 0 R /OpenAction << /S /JavaScript /JS (x) >> >>",
                *PAGES])
    with pytest.raises(InvalidInput):
        check_file("report.pdf", pdf, 10 * 1024 * 1024)


@pytest.mark.parametrize(("name", "data"), [
    ("x.svg", b"<svg xmlns='http://www.w3.org/2000/svg'><script>alert(1)</script></svg>"),
    ("x.html", b"<html><script>alert(1)</script></html>"),
    ("x.pdf", b"<html><script>alert(1)</script></html>%PDF-1.4"),
    ("x.png", b"%PDF-1.4\n<html><script>alert(1)</script>"),
])
def test_disguised_files_are_refused(name: str, data: bytes) -> None:
    with pytest.raises(InvalidInput):
        check_file(name, data, 10 * 1024 * 1024)
