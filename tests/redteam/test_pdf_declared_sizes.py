"""Red-team finding F10: a tiny PDF declaring millions of xref entries is refused before parsing."""

from __future__ import annotations

from tests.oidc.conftest import OidcServer
from tests.redteam.test_verify_attacks import _b64, _post


def _xref_spin_pdf(entries: int) -> bytes:
    """~300 bytes: an xref stream whose /Index declares ``entries`` entries and holds none.
    pyHanko's non-strict reader pads the missing bytes and makes every entry (~5 µs and
    ~200 bytes each): with 2147483647 the request never ends and the process is OOM-killed."""
    import zlib

    head = (b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n"
            b"2 0 obj\n<< /Type /Pages /Kids [] /Count 1 >>\nendobj\n")
    data = zlib.compress(b"")
    xref = (b"3 0 obj\n<< /Type /XRef /Size %d /Index [0 %d] /W [1 4 2] /Root 1 0 R "
            b"/Filter /FlateDecode /Length %d >>\nstream\n" % (entries, entries, len(data))
            + data + b"\nendstream\nendobj\n")
    return head + xref + b"startxref\n%d\n%%%%EOF\n" % len(head)


def test_a_300_byte_pdf_cannot_spin_the_verifier(oidc: OidcServer) -> None:
    """F10 (HIGH, fixed): unauthenticated POST /verify with a 300-byte PDF declaring 2^31 xref
    entries pins a broker worker at 100 % CPU and grows its memory ~60 MB/s until the OOM
    killer (the test uses 1.2 million entries: ~6 s and ~250 MB before the fix)."""
    import time

    started = time.monotonic()
    answer = _post(oidc, {"pdf": _b64(_xref_spin_pdf(1_200_000))})
    assert time.monotonic() - started < 2, "a 300-byte PDF took seconds to refuse"
    assert answer.status_code == 200 and answer.json()["indication"] == "TOTAL_FAILED"


def test_a_300_byte_pdf_upload_cannot_spin_the_patient_role() -> None:
    """F10 (HIGH, fixed), same PDF through the patient space's upload check (a signed-in
    patient, or a message attachment): cps_login/patient_checks.py _check_pdf."""
    import contextlib
    import time

    from cps_login.patient_checks import check_file
    from pki.errors import InvalidInput

    started = time.monotonic()
    with contextlib.suppress(InvalidInput):
        check_file("x.pdf", _xref_spin_pdf(1_200_000), 10 * 1024 * 1024)
    assert time.monotonic() - started < 2, "a 300-byte PDF took seconds to check"
