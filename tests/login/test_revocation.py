"""Revocation as the broker role sees it: only over HTTP, from the status tier, verified.

* The status tier down, hanging or stale: the login is refused with exactly
  ``503 {"error": "revocation_unavailable"}``, and the same broker logs in again as soon as the
  tier answers (nothing to reset).
* Every fetched answer is verified in full: forged or replayed answers are refused.
* The group-commit audit sink (Core, kept connection) writes a valid chain under concurrency,
  and still before anyone is answered.
"""

from __future__ import annotations

import datetime as dt
import socket
import threading
import time
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509 import ocsp
from sqlalchemy import select

from cps_login.auditsink import GroupCommitAuditSink
from cps_login.config import LoginConfig
from cps_login.revocation import FetchError, HttpFetcher
from cps_login.services import build_broker_services
from cps_login.web import create_broker_app
from pki import audit
from pki.ca import lifecycle
from pki.clock import SYSTEM_CLOCK, FixedClock
from pki.store.models import AuditRecord
from tests.login.conftest import Env, SoftCard, last_login_audit, login_body

GENERIC = {"error": "invalid_credentials"}


def broker(env: Env, fetcher: Any, clock: Any = None, **overrides: Any) -> Any:
    config = LoginConfig.from_home(env.home, **overrides)
    services = build_broker_services(config, clock=clock or SYSTEM_CLOCK, fetcher=fetcher)
    return create_broker_app(config, services=services).test_client()


def login_via(client: Any, card: SoftCard, broker_url: str) -> tuple[int, dict[str, Any]]:
    ch = client.post("/login/challenge").get_json()["challenge"]
    resp = client.post("/login", json=login_body(card.key, card.auth, ch, broker_url))
    return resp.status_code, resp.get_json()


def issuer_of(env: Env, card: SoftCard) -> Any:
    return next(c.certificate for c in env.auth.issuing_cas()
                if c.certificate.subject == card.auth.issuer)


# --- the status tier down, hanging or stale: 503, then back alone -----------------------------

UNAVAILABLE = (503, {"error": "revocation_unavailable"})


def test_status_tier_down_refuses_with_503_then_recovers_alone(env: Env) -> None:
    client = broker(env, HttpFetcher())
    card = env.cards["alice"]
    assert login_via(client, card, env.base)[0] == 200     # a kept-alive connection exists
    env.stop_status()
    try:
        assert login_via(client, card, env.base) == UNAVAILABLE
        rec = last_login_audit(env)
        assert rec["action"] == "login.refused" and rec["reason"] == "revocation_unavailable"
    finally:
        env.start_status()
    status, body = login_via(client, card, env.base)       # same broker, nothing reset
    assert status == 200, body
    assert last_login_audit(env)["revocation_source"] == "ocsp"


def test_status_tier_hanging_times_out_with_503(env: Env) -> None:
    """A status tier that accepts connections and never answers: the timeout, then 503."""
    client = broker(env, HttpFetcher(), revocation_timeout_seconds=0.5)
    port = int(env.base.rsplit(":", 1)[1])
    env.stop_status()
    hole = socket.socket()
    try:
        hole.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        hole.bind(("127.0.0.1", port))
        hole.listen(64)                        # the kernel accepts; nobody ever answers
        started = time.monotonic()
        assert login_via(client, env.cards["alice"], env.base) == UNAVAILABLE
        assert time.monotonic() - started < 5
        assert "Timeout" in last_login_audit(env)["detail"]
    finally:
        hole.close()
        env.start_status()
    assert login_via(client, env.cards["alice"], env.base)[0] == 200


def test_stale_answer_fails_closed(env: Env) -> None:
    """With the broker's clock 20 days on, nothing the status tier holds is current (the
    responder certificate has expired, the CRL is past its nextUpdate): refused, 503."""
    later = FixedClock(dt.datetime.now(dt.UTC) + dt.timedelta(days=20))
    client = broker(env, HttpFetcher(), clock=later)
    assert login_via(client, env.cards["alice"], env.base) == UNAVAILABLE
    assert "CRL past its nextUpdate" in last_login_audit(env)["detail"]


def test_revoke_refuses_the_next_login_once_the_status_tier_says_so(env: Env) -> None:
    card = env.new_card("next-revoked")
    client = broker(env, HttpFetcher())
    env.wait_ocsp(card.serial, "good")
    assert login_via(client, card, env.base)[0] == 200
    lifecycle.revoke(env.auth, card.serial, "keyCompromise")
    env.wait_ocsp(card.serial, "revoked")
    assert login_via(client, card, env.base) == (401, {**GENERIC, "reason": "revoked"})


# --- fetched answers stay fully verified --------------------------------------------------------

class Replayer:
    """Answers every OCSP request with fixed bytes (and has no CRL)."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer

    def post(self, url: str, body: bytes, content_type: str, timeout: float) -> bytes:
        return self.answer

    def get(self, url: str, timeout: float) -> bytes:
        raise FetchError("no CRL")


def _forged_good(env: Env, card: SoftCard) -> bytes:
    rogue = rsa.generate_private_key(65537, 2048)
    issuer = issuer_of(env, card)
    now = dt.datetime.now(dt.UTC)
    from cryptography import x509

    rogue_cert = (x509.CertificateBuilder().subject_name(issuer.subject)
                  .issuer_name(issuer.subject).public_key(rogue.public_key()).serial_number(9)
                  .not_valid_before(now - dt.timedelta(hours=1))
                  .not_valid_after(now + dt.timedelta(days=1)).sign(rogue, hashes.SHA256()))
    resp = (ocsp.OCSPResponseBuilder()
            .add_response(card.auth, issuer, hashes.SHA1(), ocsp.OCSPCertStatus.GOOD, now,
                          now + dt.timedelta(hours=1), None, None)
            .responder_id(ocsp.OCSPResponderEncoding.NAME, rogue_cert)
            .certificates([rogue_cert]).sign(rogue, hashes.SHA256()))
    return resp.public_bytes(serialization.Encoding.DER)


def test_forged_answer_is_verified_not_trusted(env: Env) -> None:
    """Whatever answers at the OCSP URL is verified: a forged "good" fails verification."""
    card = env.cards["alice"]
    client = broker(env, Replayer(_forged_good(env, card)),
                    ocsp_url="http://ocsp.elsewhere.invalid/ocsp")
    assert login_via(client, card, env.base) == (503, {"error": "revocation_unavailable"})
    assert "not signed by the issuer" in last_login_audit(env)["detail"]


def test_genuine_answer_for_another_certificate_is_refused_over_http(env: Env) -> None:
    """A real, correctly signed answer of the home's responder — about another card — replayed
    for a revoked card: the CertID does not match, so it says nothing about this card."""
    good, revoked = env.cards["alice"], env.cards["revoked"]
    issuer = issuer_of(env, good)
    request = (ocsp.OCSPRequestBuilder().add_certificate(good.auth, issuer, hashes.SHA1())
               .build().public_bytes(serialization.Encoding.DER))
    answer = HttpFetcher().post(env.base + "/ocsp", request, "application/ocsp-request", 5)
    lifecycle.revoke(env.auth, revoked.serial, "keyCompromise")
    client = broker(env, Replayer(answer))
    assert login_via(client, revoked, env.base) == (503, {"error": "revocation_unavailable"})
    assert "does not name the certificate" in last_login_audit(env)["detail"]


# --- audit group commit ------------------------------------------------------------------------

def test_group_commit_chain_stays_valid_under_concurrency(env: Env) -> None:
    sink = GroupCommitAuditSink(env.auth.store, SYSTEM_CLOCK)
    with env.auth.store.read() as session:
        before = session.execute(select(AuditRecord.seq).order_by(AuditRecord.seq.desc())
                                 .limit(1)).scalar_one()
    committed: list[int] = []
    lock = threading.Lock()

    def writer(n: int) -> None:
        for i in range(25):
            sink.record("login.success", f"t{n}", {"n": n, "i": i}, actor=f"a{n}")
            # Returned: the record is committed and visible to another connection.
            with env.auth.store.read() as session:
                found = session.execute(select(AuditRecord.seq).where(
                    AuditRecord.target == f"t{n}", AuditRecord.details.like(
                        f'%"i":{i},%'))).scalar_one()
            with lock:
                committed.append(found)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sink.close()
    assert sorted(committed) == list(range(before + 1, before + 201))
    report = audit.verify(env.auth.store)
    assert report.ok, report.problems


def test_group_commit_extra_callback_still_joins_the_transaction(env: Env) -> None:
    seen: list[object] = []
    sink = GroupCommitAuditSink(env.auth.store, SYSTEM_CLOCK)
    sink.record("login.success", "x", {"k": 1}, actor="a", extra=seen.append)
    sink.close()
    assert len(seen) == 1 and hasattr(seen[0], "execute")
    assert audit.verify(env.auth.store).ok


def test_remembered_signature_covers_exactly_the_verified_bytes(env: Env) -> None:
    """The broker skips re-verifying a signature only over bytes it verified before: the
    same answer with one bit of its signature changed is refused."""
    card = env.cards["alice"]
    issuer = issuer_of(env, card)
    request = (ocsp.OCSPRequestBuilder().add_certificate(card.auth, issuer, hashes.SHA1())
               .build().public_bytes(serialization.Encoding.DER))
    genuine = HttpFetcher().post(env.base + "/ocsp", request, "application/ocsp-request", 5)
    signature = ocsp.load_der_ocsp_response(genuine).signature
    assert genuine.count(signature) == 1
    tampered = genuine.replace(signature, signature[:-1] + bytes([signature[-1] ^ 1]))
    replay = Replayer(genuine)
    client = broker(env, replay)
    assert login_via(client, card, env.base)[0] == 200
    assert login_via(client, card, env.base)[0] == 200        # remembered: same bytes
    replay.answer = tampered
    assert login_via(client, card, env.base) == UNAVAILABLE
    assert "not signed by the issuer" in last_login_audit(env)["detail"]
