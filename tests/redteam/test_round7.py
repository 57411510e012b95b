"""Issue 14, seventh round: today's changes attacked (POST /verify's PDF children, the
transaction cookie and RFC 9207 ``iss``, CIBA approvals, the TSA's own status, ``--root-crl``,
civility codes). Each test asserts the secure behaviour; each failed before its fix
(docs/hardening.md, "Issue 14, seventh round").

Anonymous clients come from distinct loopback addresses (127.0.0.2, 127.0.0.3): Linux routes
all of 127.0.0.0/8 to ``lo``, so the broker sees them as different clients."""

from __future__ import annotations

import base64
import datetime as dt
import http.client
import json
import threading
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from tests.oidc.conftest import OidcServer
from tests.redteam.test_oidc_round6 import _fields_array_pdf
from tests.signatures.test_ca_revocation import hierarchy  # noqa: F401 - fixture
from tests.signatures.test_pades import make_pdf

ATTACKER = "127.0.0.2"
VICTIM = "127.0.0.3"


def _request(issuer: str, method: str, path: str, source: str, body: bytes | None = None,
             timeout: float = 60) -> tuple[int, float]:
    """One request from ``source``: (status, seconds it took)."""
    url = urlsplit(issuer)
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=timeout,
                                      source_address=(source, 0))
    started = time.monotonic()
    try:
        conn.request(method, path, body=body,
                     headers={"Content-Type": "application/json"} if body else {})
        answer = conn.getresponse()
        answer.read()
        return answer.status, time.monotonic() - started
    finally:
        conn.close()


def _pdf_body(pdf: bytes) -> bytes:
    return json.dumps({"pdf": base64.b64encode(pdf).decode()}).encode()


def _in_background(calls: list[Callable[[], object]]) -> list[threading.Thread]:
    threads = [threading.Thread(target=call, daemon=True) for call in calls]
    for thread in threads:
        thread.start()
    return threads


# === POST /verify: the PDF children =========================================================
def test_one_address_cannot_take_every_pdf_child(oidc: OidcServer,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from cps_sign import pdf as cps_pdf

    # shorter than production (10 s of CPU, 10 s of wait) to keep the test fast; the shape
    # is the same: the bombs hold both children for their whole CPU limit
    monkeypatch.setattr(cps_pdf, "CHILD_CPU", 2)
    monkeypatch.setattr(cps_pdf, "CHILD_WAIT", 1.0)
    bomb = _pdf_body(_fields_array_pdf(1_000_000))          # 2.4 KB, ~11 s of pyHanko CPU
    assert len(bomb) < 4096
    attackers = _in_background([
        lambda: _request(oidc.issuer, "POST", "/verify", ATTACKER, bomb)
        for _ in range(cps_pdf.CHILDREN_AT_ONCE)])
    try:
        time.sleep(0.5)                                      # both children are parsing
        status, _ = _request(oidc.issuer, "POST", "/verify", VICTIM, _pdf_body(make_pdf()))
    finally:
        for thread in attackers:
            thread.join(30)
    # secure: another client's small PDF still gets its verdict (SIGNED_DATA_NOT_FOUND)
    assert status == 200, f"{VICTIM}'s PDF: {status} while {ATTACKER} holds the children"


def test_pdfs_waiting_for_a_child_do_not_stall_the_other_routes(
        oidc: OidcServer, monkeypatch: pytest.MonkeyPatch) -> None:
    from cps_sign import pdf as cps_pdf

    monkeypatch.setattr(cps_pdf, "CHILD_CPU", 2)            # production: 10 s
    bomb = _pdf_body(_fields_array_pdf(1_000_000))
    small = _pdf_body(make_pdf())
    threads = oidc.running.server.limits.wsgi_threads                 # 8
    calls: list[Callable[[], object]] = [
        lambda: _request(oidc.issuer, "POST", "/verify", ATTACKER, bomb)
        for _ in range(cps_pdf.CHILDREN_AT_ONCE)]
    calls += [lambda: _request(oidc.issuer, "POST", "/verify", ATTACKER, small)
              for _ in range(threads - cps_pdf.CHILDREN_AT_ONCE)]
    attackers = _in_background(calls)
    try:
        time.sleep(0.7)
        status, took = _request(oidc.issuer, "GET", "/api/whoami", VICTIM)
    finally:
        for thread in attackers:
            thread.join(30)
    assert status == 401
    # secure: a route that has nothing to do with PDFs answers at once
    assert took < 1.0, f"GET /api/whoami took {took:.1f} s while PDFs waited for a child"


# === cps-verify --root-crl ==================================================================
def _root_crl_at(h: dict[str, object], issued: dt.datetime,
                 revoked_at: dt.datetime | None) -> x509.CertificateRevocationList:
    """A root CRL (ARL) signed in a ceremony at ``issued``, current for a year (the root's
    ``crl.root_validity_days``), naming the CA as revoked since ``revoked_at`` if given."""
    from cryptography.hazmat.primitives.asymmetric import ec

    root, key, ca = h["root"], h["root_key"], h["ca"]
    assert isinstance(root, x509.Certificate) and isinstance(ca, x509.Certificate)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    builder = (x509.CertificateRevocationListBuilder().issuer_name(root.subject)
               .last_update(issued).next_update(issued + dt.timedelta(days=365)))
    if revoked_at is not None:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(ca.serial_number)
            .revocation_date(revoked_at).add_extension(
                x509.CRLReason(x509.ReasonFlags.key_compromise), critical=False).build())
    return builder.sign(key, hashes.SHA256())


def test_the_newest_root_crl_given_decides(hierarchy: dict[str, object]) -> None:  # noqa: F811
    from cps_sign import report as r
    from cps_sign.revocation import LiveRevocation, RootCrls
    from cps_sign.verify import Verifier
    from tests.signatures.test_ca_revocation import NOW, POLICY, Stub

    root, ca, signature = hierarchy["root"], hierarchy["ca"], hierarchy["signature"]
    assert isinstance(root, x509.Certificate) and isinstance(ca, x509.Certificate)
    assert isinstance(signature, bytes)
    before = _root_crl_at(hierarchy, NOW - dt.timedelta(days=60), None)
    today = _root_crl_at(hierarchy, NOW - dt.timedelta(hours=1), NOW - dt.timedelta(days=2))

    def judge(crls: list[x509.CertificateRevocationList]) -> tuple[str, str | None]:
        # as `cps-verify --root-crl A --root-crl B`: the status tier says the card is good
        # and serves no root CRL (the files decide)
        stub = Stub(None)
        live = LiveRevocation(checker=stub, fetcher=stub)  # type: ignore[arg-type]
        verifier = Verifier([root], [ca], [POLICY], live=live,
                            root_crls=RootCrls(crls, fallback=live))
        report = verifier.verify_cades(b"care claim\n", signature)
        return report.indication, report.sub_indication

    revoked = (r.INDETERMINATE, r.REVOKED_CA_NO_POE)
    assert judge([today]) == revoked and judge([today, before]) == revoked
    # the same two files in the other order (e.g. a shell glob of a folder of ARLs)
    assert judge([before, today]) == revoked
