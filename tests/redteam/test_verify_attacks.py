"""POST /verify (broker role) fed hostile CMS and PDF by an unauthenticated client."""

from __future__ import annotations

import base64
import io
import time

import pytest
import requests

from tests.oidc.conftest import OidcServer


def _pdf(trailer_extra: bytes = b"", objs: list[bytes] | None = None) -> bytes:
    objs = objs or [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [] /Count 0 >>"]
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
    out.write(b"trailer\n<< /Size %d /Root 1 0 R " % (len(objs) + 1) + trailer_extra +
              b">>\nstartxref\n%d\n%%%%EOF\n" % xref)
    return out.getvalue()


def _post(oidc: OidcServer, body: dict[str, str]) -> requests.Response:
    started = time.monotonic()
    answer = requests.post(oidc.issuer + "/verify", json=body, timeout=60)
    assert time.monotonic() - started < 20, "verification took too long"
    return answer


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()




@pytest.mark.parametrize("der", [
    b"\x30\x80" * 30000 + b"\x00\x00" * 30000,                   # indefinite-length nesting
    b"\x30\x84\xff\xff\xff\xff" + b"\x00" * 16,                      # length past the end
    b"\x30\x89" + b"\xff" * 9 + b"\x00",                             # 9-byte length
    b"\x06\x83\x01\x00\x00" + b"\x80" * 65536,                      # endless OID arc
    bytes.fromhex("3082000d06092a864886f70d010702a000"),           # SignedData, empty [0]
    b"",
])
def test_hostile_cms_gets_a_verdict(oidc: OidcServer, der: bytes) -> None:
    answer = _post(oidc, {"signature": _b64(der), "content": _b64(b"hello")})
    assert answer.status_code == 200, answer.text[:300]
    assert answer.json()["indication"] in ("TOTAL_FAILED", "INDETERMINATE")
    digest = _post(oidc, {"signature": _b64(der), "content_sha256": "00" * 32})
    assert digest.status_code == 200, digest.text[:300]


def test_pdf_loops_get_a_verdict(oidc: OidcServer) -> None:
    plain = _pdf()
    loop = plain.replace(b"/Root 1 0 R", b"/Root 1 0 R /Prev %d" % plain.index(b"xref"))
    kids = _pdf(objs=[b"<< /Type /Catalog /Pages 2 0 R /AcroForm << /Fields [3 0 R] >> >>",
                      b"<< /Type /Pages /Kids [2 0 R] /Count 1 >>",
                      b"<< /FT /Sig /Kids [3 0 R] /Parent 3 0 R >>"])
    for pdf in (loop, kids, b"%PDF-1.7\n" + b"1 0 obj\n<<" * 3000):
        answer = _post(oidc, {"pdf": _b64(pdf)})
        assert answer.status_code == 200, answer.text[:300]


def test_oversized_body_is_refused_before_parsing(oidc: OidcServer) -> None:
    answer = requests.post(oidc.issuer + "/verify", data=b"{" + b" " * (2 * 1024 * 1024),
                           headers={"Content-Type": "application/json"}, timeout=60)
    assert answer.status_code == 413
