"""Red-team finding F5 (POST /verify, deep nesting): fixed; the test holds it."""

from __future__ import annotations

from tests.oidc.conftest import OidcServer
from tests.redteam.test_verify_attacks import _b64, _pdf, _post


def test_deeply_nested_pdf_is_a_format_failure_not_a_crash(oidc: OidcServer) -> None:
    """FINDING: a PDF whose trailer nests 50,000 arrays makes pyHanko's parser raise
    RecursionError, which cps_sign/pdf.py does not catch: 500 internal error."""
    pdf = _pdf(b"/X " + b"[" * 50000 + b"]" * 50000 + b" ")
    answer = _post(oidc, {"pdf": _b64(pdf)})
    assert answer.status_code == 200, answer.text
    assert answer.json()["indication"] == "TOTAL_FAILED"
