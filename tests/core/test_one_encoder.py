"""One DER/BER-TLV writer (pki.der) and one RSA-or-ECDSA signature check (pki.sigcheck); the
broker's OCSP requests come from cryptography's OCSPRequestBuilder, not a hand-written encoder."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from pki import der
from pki.cards import apdu
from pki.sigcheck import verify_signature

ROOT = Path(__file__).resolve().parents[2]
TREES = ("pki", "cps_login", "cps_sign")


def python_files() -> list[Path]:
    return sorted(p for t in TREES for p in (ROOT / t).rglob("*.py"))


@pytest.mark.parametrize(("tag", "size", "head"), [
    (0x04, 5, "0405"), (0x30, 0x80, "308180"), (0x53, 0x100, "53820100"),
    (0x5FC105, 300, "5fc10582012c"), (0x7F49, 3, "7f4903"),
])
def test_one_tlv_writer(tag: int, size: int, head: str) -> None:
    assert apdu.tlv is der.tlv
    encoded = der.tlv(tag, b"\xaa" * size)
    assert encoded.hex().startswith(head) and len(encoded) == len(head) // 2 + size
    assert apdu.parse_tlv(encoded) == {tag: b"\xaa" * size}


def test_no_other_length_encoder() -> None:
    """A function that writes a DER/BER length (the long form's 0x80 | count octet) lives in
    pki/der.py only."""
    found = []
    for path in python_files():
        source = path.read_text("utf-8")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef):
                body = ast.get_source_segment(source, node) or ""
                if "< 0x80" in body and re.search(r"0x80 \||0x81\b", body):
                    found.append(f"{path.relative_to(ROOT)}:{node.name}")
    assert found == ["pki/der.py:length"]


def test_one_signature_check() -> None:
    """Nothing but pki/sigcheck.py calls verify() with PKCS#1 v1.5 or ECDSA; cps_sign/verify.py
    checks CMS signatures that may be RSA-PSS, a case the plain check does not cover."""
    callers = set()
    for path in python_files():
        for line in path.read_text("utf-8").splitlines():
            if ".verify(" in line and ("PKCS1v15(" in line or "ECDSA(" in line):
                callers.add(str(path.relative_to(ROOT)))
    assert callers == {"pki/sigcheck.py", "cps_sign/verify.py"}


@pytest.mark.parametrize("kind", ["rsa", "ec"])
def test_verify_signature(kind: str) -> None:
    data = b"message"
    if kind == "rsa":
        key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey = rsa.generate_private_key(65537, 2048)
        assert isinstance(key, rsa.RSAPrivateKey)
        signature = key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    else:
        key = ec.generate_private_key(ec.SECP256R1())
        signature = key.sign(data, ec.ECDSA(hashes.SHA256()))
    public = key.public_key()
    assert verify_signature(public, signature, data)
    assert not verify_signature(public, signature, data + b"!")
    assert not verify_signature(public, signature[:-1] + bytes((signature[-1] ^ 1,)), data)
    assert not verify_signature(public, signature, data, hashes.SHA384())
    assert not verify_signature(public, signature, data, None)
    assert not verify_signature(b"not a key", signature, data)


def test_ocsp_request_is_cryptographys() -> None:
    from cps_login import revocation

    source = Path(revocation.__file__).read_text("utf-8")
    assert "OCSPRequestBuilder" in source
    assert not re.search(r"def _der\w*\(", source)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "CA")])
    import datetime as dt
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    ca = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
          .public_key(key.public_key()).serial_number(1).not_valid_before(start)
          .not_valid_after(start + dt.timedelta(days=9)).sign(key, hashes.SHA256()))
    request = x509.ocsp.load_der_ocsp_request(
        revocation.ocsp_request_der(revocation._issuer_facts(ca), 0xC0FFEE))
    assert request.serial_number == 0xC0FFEE and isinstance(request.hash_algorithm, hashes.SHA1)
    assert list(request.extensions) == []
