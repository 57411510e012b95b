"""The broker's fast paths keep the security properties of the slow ones.

* In process (``OcspServiceFetcher``), the status comes from the responder's pre-signed state:
  it must equal what the signed answer over HTTP says, a revoke or hold must refuse the very
  next login (no waiting, no cache), and its freshness is judged like an answer's.
* Over HTTP (or any URL other than the home's own), answers are verified in full every time:
  forged, foreign or replayed answers are still refused.
* The group-commit audit sink (Core, kept connection) writes a valid chain under concurrency,
  and still before anyone is answered.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509 import ocsp
from sqlalchemy import select

from cps_login.auditsink import GroupCommitAuditSink
from cps_login.config import LoginConfig
from cps_login.revocation import (
    FetchError,
    HttpFetcher,
    OcspServiceFetcher,
    RevocationChecker,
)
from cps_login.services import build_services
from cps_login.web import create_app
from pki import audit
from pki.ca import lifecycle
from pki.clock import SYSTEM_CLOCK, FixedClock
from pki.store.models import AuditRecord
from tests.login.conftest import Env, SoftCard, login_body

GENERIC = {"error": "invalid_credentials"}


def last_login_audit(env: Env) -> dict[str, Any]:
    with env.auth.store.read() as session:
        rec = session.execute(select(AuditRecord).where(AuditRecord.action.like("login.%"))
                              .order_by(AuditRecord.seq.desc()).limit(1)).scalar_one()
        return {"action": rec.action, "target": rec.target, **json.loads(rec.details)}


def in_process(env: Env, fallback: Any = None) -> OcspServiceFetcher:
    return OcspServiceFetcher(env.ocsp, env.base + "/ocsp", fallback or HttpFetcher())


def broker(env: Env, fetcher: Any, clock: Any = None, **overrides: Any) -> Any:
    config = LoginConfig.from_home(env.home, **overrides)
    services = build_services(config, clock=clock or SYSTEM_CLOCK, authority=env.auth,
                              fetcher=fetcher)
    return create_app(config, services=services).test_client()


def login_via(client: Any, card: SoftCard, broker_url: str) -> tuple[int, dict[str, Any]]:
    ch = client.post("/login/challenge").get_json()["challenge"]
    resp = client.post("/login", json=login_body(card.key, card.auth, ch, broker_url))
    return resp.status_code, resp.get_json()


def issuer_of(env: Env, card: SoftCard) -> Any:
    return next(c.certificate for c in env.auth.issuing_cas()
                if c.certificate.subject == card.auth.issuer)


# --- in process ------------------------------------------------------------------------------

def test_in_process_login_is_marked_and_the_http_one_is_not(env: Env) -> None:
    status, body = login_via(broker(env, in_process(env)), env.cards["alice"], env.base)
    assert status == 200, body
    rec = last_login_audit(env)
    assert rec["revocation_source"] == "ocsp" and rec["revocation_via"] == "in-process"
    status, body = login_via(broker(env, HttpFetcher()), env.cards["alice"], env.base)
    assert status == 200, body
    rec = last_login_audit(env)
    assert rec["revocation_source"] == "ocsp" and "revocation_via" not in rec


def test_revoke_refuses_the_very_next_in_process_login(env: Env) -> None:
    card = env.new_card("next-revoked")
    client = broker(env, in_process(env))
    env.ocsp.on_status_change([card.serial])   # what the watcher would do for a new card
    assert login_via(client, card, env.base)[0] == 200
    lifecycle.revoke(env.auth, card.serial, "keyCompromise")   # no wait_ocsp: the next login
    assert login_via(client, card, env.base) == (401, {**GENERIC, "reason": "revoked"})
    rec = last_login_audit(env)
    assert rec["reason"] == "revoked" and rec["revocation_via"] == "in-process"


def test_hold_and_release_take_effect_on_the_next_in_process_login(env: Env) -> None:
    card = env.new_card("next-held")
    client = broker(env, in_process(env))
    env.ocsp.on_status_change([card.serial])
    assert login_via(client, card, env.base)[0] == 200
    lifecycle.hold(env.auth, card.serial)
    assert login_via(client, card, env.base) == (401, {**GENERIC, "reason": "hold"})
    lifecycle.release(env.auth, card.serial)
    assert login_via(client, card, env.base)[0] == 200


@pytest.mark.parametrize("change", ["good", "unspecified", "keyCompromise", "superseded", "hold"])
def test_in_process_status_equals_the_verified_answer(env: Env, change: str) -> None:
    card = env.new_card(f"same-{change}")
    env.ocsp.on_status_change([card.serial])
    if change == "hold":
        lifecycle.hold(env.auth, card.serial)
    elif change != "good":
        lifecycle.revoke(env.auth, card.serial, change)
    issuer = issuer_of(env, card)
    local = RevocationChecker(SYSTEM_CLOCK, fetcher=in_process(env)).status(card.auth, issuer)
    env.wait_ocsp(card.serial, "hold" if change == "hold" else
                  "good" if change == "good" else "revoked")
    fetched = RevocationChecker(SYSTEM_CLOCK, fetcher=HttpFetcher()).status(card.auth, issuer)
    assert local.via == "in-process" and fetched.via is None
    assert (local.status, local.source, local.reason, local.revoked_at) == \
        (fetched.status, fetched.source, fetched.reason, fetched.revoked_at)


def test_stale_in_process_record_is_not_used(env: Env) -> None:
    """Freshness applies to the in-process record as to an answer: with the broker's clock far
    past thisUpdate + ocsp_max_age, OCSP is unusable; the CRL is stale too: fail closed."""
    later = FixedClock(dt.datetime.now(dt.UTC) + dt.timedelta(days=20))
    client = broker(env, in_process(env), clock=later)
    assert login_via(client, env.cards["alice"], env.base) == \
        (503, {"error": "revocation_unavailable"})
    assert "older than the maximum age" in last_login_audit(env)["detail"]


def test_broken_in_process_responder_takes_the_verified_path(env: Env) -> None:
    class Broken:
        def presigned_status(self, *_: Any) -> Any:
            raise RuntimeError("state torn")

        def lookup(self, body: bytes) -> Any:
            return env.ocsp.lookup(body)

        def sign_live(self, job: Any) -> Any:
            return env.ocsp.sign_live(job)

    fetcher = OcspServiceFetcher(Broken(), env.base + "/ocsp", HttpFetcher())
    status, _ = login_via(broker(env, fetcher), env.cards["alice"], env.base)
    assert status == 200
    assert "revocation_via" not in last_login_audit(env)   # the DER answer, verified


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


def test_forged_answer_for_another_url_is_verified_not_trusted(env: Env) -> None:
    """The in-process shortcut is for the home's own URL only: a broker configured with
    another OCSP URL gets the (forged) fetched answer, which fails verification."""
    card = env.cards["alice"]
    fetcher = in_process(env, fallback=Replayer(_forged_good(env, card)))
    client = broker(env, fetcher, ocsp_url="http://ocsp.elsewhere.invalid/ocsp")
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
