"""End-to-end: openssl ocsp, pkilint, pyhanko-certvalidator against the running responder."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import re
import time
import urllib.request
from urllib.parse import quote

import pytest
from asn1crypto import x509 as a_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from pki.ca import lifecycle
from pki.ca.authority import Authority
from pki.ca.lint import lint_ocsp_response
from pki.ocsp import der
from pki.ocsp.request import MalformedRequest, parse_request

from .conftest import Env


def _cert(env: Env, name: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(env.certs[name].read_bytes())


def _issuer(env: Env) -> x509.Certificate:
    return x509.load_pem_x509_certificate(env.ca_pem.read_bytes())


def _request(env: Env, name: str, algorithm: hashes.HashAlgorithm | None = None,
             nonce: bytes | None = None) -> bytes:
    builder = ocsp.OCSPRequestBuilder().add_certificate(
        _cert(env, name), _issuer(env), algorithm or hashes.SHA1())
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(serialization.Encoding.DER)


def post(env: Env, body: bytes, ctype: str = "application/ocsp-request"
         ) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(env.url, data=body, headers={"Content-Type": ctype})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def get(env: Env, path: str) -> tuple[int, dict[str, str], bytes]:
    url = f"http://127.0.0.1:{env.running.port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def _verify(env: Env, response: ocsp.OCSPResponse) -> None:
    """The response is signed by the delegated responder, itself issued by the CA."""
    responder = response.certificates[0]
    responder.verify_directly_issued_by(_issuer(env))
    eku = responder.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert x509.oid.ExtendedKeyUsageOID.OCSP_SIGNING in eku
    responder.extensions.get_extension_for_class(x509.OCSPNoCheck)
    pub = responder.public_key()
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
    if isinstance(pub, rsa.RSAPublicKey):
        pub.verify(response.signature, response.tbs_response_bytes, padding.PKCS1v15(),
                   hashes.SHA256())
    else:
        assert isinstance(pub, ec.EllipticCurvePublicKey)
        pub.verify(response.signature, response.tbs_response_bytes, ec.ECDSA(hashes.SHA256()))


# --- openssl ocsp ---------------------------------------------------------------------------
@pytest.mark.parametrize("nonce", ["-nonce", "-no_nonce"])
@pytest.mark.parametrize(("name", "expected"), [
    ("good", r": good\n"),
    ("revoked", r": revoked\n.*Reason: keyCompromise"),
    ("held", r": revoked\n.*Reason: certificateHold"),
])
def test_openssl_verifies_each_status(env: Env, name: str, expected: str, nonce: str) -> None:
    out = env.openssl(name, nonce)
    assert "Response verify OK" in out, out
    assert re.search(expected, out, re.S), out
    assert "WARNING" not in out, out          # e.g. "WARNING: no nonce in response"


def test_openssl_unknown_serial(env: Env) -> None:
    serial = "0x" + "7E" * 16
    cmd_out = env.openssl("good", "-no_nonce")
    assert "good" in cmd_out
    import subprocess
    proc = subprocess.run(["openssl", "ocsp", "-issuer", str(env.ca_pem), "-serial", serial,
                           "-url", env.url, "-CAfile", str(env.chain_pem), "-nonce"],
                          capture_output=True, text=True, timeout=30)
    out = proc.stdout + proc.stderr
    assert "Response verify OK" in out, out
    assert re.search(r": unknown\n", out), out


def test_openssl_multi_certificate_request(env: Env) -> None:
    import subprocess
    cmd = ["openssl", "ocsp", "-issuer", str(env.ca_pem), "-url", env.url,
           "-CAfile", str(env.chain_pem), "-no_nonce", "-resp_text"]
    for name in ("good", "revoked", "held"):
        cmd += ["-cert", str(env.certs[name])]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    text = out.stdout + out.stderr
    assert "Response verify OK" in text, text
    assert text.count("Cert Status:") == 3, text
    assert re.search(r"good\.pem: good", text) and re.search(r"revoked\.pem: revoked", text) \
        and re.search(r"held\.pem: revoked", text), text


def test_unauthorized_for_an_issuer_not_served(env: Env) -> None:
    root = env.auth.chain(next(c.slug for c in env.auth.issuing_cas()
                               if c.role == "PERSONNES"))[-1].certificate
    req = ocsp.OCSPRequestBuilder().add_certificate_by_hash(
        b"\x01" * 20, b"\x02" * 20, 5, hashes.SHA1()).build()
    status, _, body = post(env, req.public_bytes(serialization.Encoding.DER))
    assert status == 200
    assert ocsp.load_der_ocsp_response(body).response_status == \
        ocsp.OCSPResponseStatus.UNAUTHORIZED
    # A CertID naming the root (which this responder does not serve)
    from pki.ocsp import response as r
    name_hash, key_hash = r.issuer_hashes(root, "sha1")
    req = ocsp.OCSPRequestBuilder().add_certificate_by_hash(
        name_hash, key_hash, _issuer(env).serial_number, hashes.SHA1()).build()
    _, _, body = post(env, req.public_bytes(serialization.Encoding.DER))
    assert body == r.UNAUTHORIZED


# --- pkilint -------------------------------------------------------------------------------
def test_every_kind_of_response_lints_clean(env: Env) -> None:
    kinds = {
        "good": _request(env, "good"),
        "revoked": _request(env, "revoked"),
        "held": _request(env, "held"),
        "nonce": _request(env, "good", nonce=b"n" * 16),
        "sha256": _request(env, "revoked", hashes.SHA256()),
    }
    unknown = ocsp.OCSPRequestBuilder().add_certificate_by_hash(
        *_issuer_hashes(env), 0x1234567890ABCDEF, hashes.SHA1()).build()
    kinds["unknown"] = unknown.public_bytes(serialization.Encoding.DER)
    for kind, request in kinds.items():
        status, headers, body = post(env, request)
        assert status == 200 and headers["content-type"] == "application/ocsp-response"
        assert lint_ocsp_response(body) == [], kind
        _verify(env, ocsp.load_der_ocsp_response(body))


def _issuer_hashes(env: Env) -> tuple[bytes, bytes]:
    from pki.ocsp import response as r
    return r.issuer_hashes(_issuer(env), "sha1")


def test_sha256_cert_id_and_nonce_are_echoed(env: Env) -> None:
    nonce = bytes(range(32))
    _, _, body = post(env, _request(env, "held", hashes.SHA256(), nonce=nonce))
    response = ocsp.load_der_ocsp_response(body)
    assert response.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
    assert isinstance(response.hash_algorithm, hashes.SHA256)
    assert response.serial_number == _cert(env, "held").serial_number
    assert response.certificate_status == ocsp.OCSPCertStatus.REVOKED
    assert response.revocation_reason == x509.ReasonFlags.certificate_hold
    assert response.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == nonce
    _verify(env, response)


@pytest.mark.parametrize("length", [0, 33, 64])
def test_nonce_outside_1_to_32_is_malformed(env: Env, length: int) -> None:
    good = _request(env, "good")
    # Rebuild the request with a hand-made nonce extension of the given length.
    tbs_start = 2 if good[1] < 0x80 else 2 + (good[1] & 0x7F)
    _, s, e = der.read_tlv(good, tbs_start, len(good))
    ext = der.seq(der.encode_oid("1.3.6.1.5.5.7.48.1.2"),
                  der.tlv(0x04, der.tlv(0x04, b"\xaa" * length)))
    tbs = der.seq(good[s:e], der.tlv(0xA2, der.seq(ext)))
    request = der.seq(tbs)
    with pytest.raises(MalformedRequest):
        parse_request(request)
    _, _, body = post(env, request)
    assert ocsp.load_der_ocsp_response(body).response_status == \
        ocsp.OCSPResponseStatus.MALFORMED_REQUEST


# --- GET and HTTP caching -------------------------------------------------------------------
def test_get_form_with_rfc5019_caching_headers(env: Env) -> None:
    request = _request(env, "revoked")
    path = "/ocsp/" + quote(base64.b64encode(request).decode(), safe="")
    status, headers, body = get(env, path)
    assert status == 200
    response = ocsp.load_der_ocsp_response(body)
    assert response.certificate_status == ocsp.OCSPCertStatus.REVOKED
    assert response.revocation_reason == x509.ReasonFlags.key_compromise
    _verify(env, response)
    cache = headers["cache-control"]
    assert "public" in cache and "no-transform" in cache and "must-revalidate" in cache
    max_age = int(re.search(r"max-age=(\d+)", cache).group(1))  # type: ignore[union-attr]
    next_update = response.next_update_utc
    assert abs((next_update - dt.datetime.now(dt.UTC)).total_seconds() - max_age) < 5
    assert headers["last-modified"] and headers["expires"] and headers["etag"].startswith('"')
    # URL-safe alphabet and unescaped form answer the same bytes
    safe = base64.urlsafe_b64encode(request).decode().rstrip("=")
    assert get(env, "/ocsp/" + safe)[2] == body
    # conditional GET
    req = urllib.request.Request(f"http://127.0.0.1:{env.running.port}{path}",
                                 headers={"If-None-Match": headers["etag"]})
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=5)
    assert info.value.code == 304


def test_bad_base64_and_wrong_content_type(env: Env) -> None:
    status, _, body = get(env, "/ocsp/%%%not-base64!!")
    assert status == 200 and body == bytes.fromhex("30030a0101")
    status, _, _ = post(env, _request(env, "good"), ctype="text/plain")
    assert status == 415
    assert post(env, _request(env, "good"))[0] == 200


# --- freshness -----------------------------------------------------------------------------
def _status(env: Env, name: str) -> ocsp.OCSPCertStatus:
    _, _, body = post(env, _request(env, name))
    return ocsp.load_der_ocsp_response(body).certificate_status


def test_revoke_through_lifecycle_is_visible_on_the_next_request(env: Env) -> None:
    serial = env.issue("fresh1", "1000000010")
    deadline = time.monotonic() + 2
    while _status(env, "fresh1") != ocsp.OCSPCertStatus.GOOD:   # new certificate picked up
        assert time.monotonic() < deadline
        time.sleep(0.05)
    lifecycle.revoke(env.auth, serial, "superseded")            # listener: on_status_change
    assert _status(env, "fresh1") == ocsp.OCSPCertStatus.REVOKED


def test_change_by_another_process_is_seen_by_the_watcher_within_a_second(env: Env) -> None:
    serial = env.issue("fresh2", "1000000011")
    time.sleep(0.5)
    assert _status(env, "fresh2") == ocsp.OCSPCertStatus.GOOD
    other = Authority.open(env.home)            # no listener: only the status_event watcher
    try:
        lifecycle.hold(other, serial)
        started = time.monotonic()
        while _status(env, "fresh2") != ocsp.OCSPCertStatus.REVOKED:
            assert time.monotonic() - started < 1.0, "hold not visible within 1 s"
            time.sleep(0.02)
        lifecycle.release(other, serial)
        started = time.monotonic()
        while _status(env, "fresh2") != ocsp.OCSPCertStatus.GOOD:
            assert time.monotonic() - started < 1.0, "release not visible within 1 s"
            time.sleep(0.02)
    finally:
        other.close()


# --- pyhanko-certvalidator -------------------------------------------------------------------
def test_pyhanko_validates_a_card_certificate_through_the_responder(env: Env) -> None:
    from pyhanko_certvalidator import CertificateValidator, ValidationContext
    from pyhanko_certvalidator.errors import RevokedError
    from pyhanko_certvalidator.policy_decl import (
        CertRevTrustPolicy,
        RevocationCheckingPolicy,
        RevocationCheckingRule,
    )

    chain = [a_x509.Certificate.load(c.public_bytes(serialization.Encoding.DER))
             for c in x509.load_pem_x509_certificates(env.chain_pem.read_bytes())]
    policy = CertRevTrustPolicy(RevocationCheckingPolicy(
        ee_certificate_rule=RevocationCheckingRule.OCSP_REQUIRED,
        intermediate_ca_cert_rule=RevocationCheckingRule.NO_CHECK))

    def validate(name: str) -> None:
        _, _, body = post(env, _request(env, name))
        leaf = a_x509.Certificate.load(_cert(env, name).public_bytes(
            serialization.Encoding.DER))
        ctx = ValidationContext(trust_roots=[chain[-1]], other_certs=chain[:-1],
                                ocsps=[body], revinfo_policy=policy)
        validator = CertificateValidator(leaf, validation_context=ctx)
        asyncio.run(validator.async_validate_usage({"digital_signature"}))

    validate("good")
    with pytest.raises(RevokedError):
        validate("revoked")
    with pytest.raises(RevokedError):
        validate("held")


# --- observability -------------------------------------------------------------------------
def test_health_and_metrics(env: Env) -> None:
    status, _, body = get(env, "/health")
    assert status == 200 and body == b'{"status":"ok"}'
    post(env, _request(env, "good"))
    status, headers, body = get(env, "/metrics")
    text = body.decode()
    assert status == 200 and headers["content-type"].startswith("text/plain")
    assert re.search(r'ocsp_requests_total\{result="good"\} [1-9]', text), text
    assert re.search(r"ocsp_presigned_responses [1-9]", text), text
    assert 'ocsp_request_seconds_bucket{le="+Inf"}' in text
    assert "ocsp_presigned_age_seconds" in text


def test_presign_batches_are_audited(env: Env) -> None:
    from sqlalchemy import select

    from pki.store.models import AuditRecord
    with env.auth.store.session() as session:
        actions = set(session.execute(select(AuditRecord.action)).scalars())
    assert {"ocsp.presign", "ocsp.responder.issue"} <= actions
