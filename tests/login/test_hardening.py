"""Issue 13 #1 and #2 against the real broker of a SoftHSM home.

#1: an unauthenticated ``POST /login`` flood must not grow the broker's memory nor the audit
chain with what the attacker sent: the challenge is consumed before any certificate is parsed,
only certificates that chain to our CAs are cached (in a cache bounded in bytes), and an
audit record names an untrusted certificate by its SHA-256 only.

#2: the token's assurance follows the certificate's product category: a card key gives
``amr ["hwk","pin"]``, ``acr eidas3``, ``APPPRIP3``; a software key (a CSR) ``amr ["swk"]``,
``acr eidas1``, ``APPPRIP1`` -- or a refusal with ``accept_software_keys`` false.
"""

from __future__ import annotations

import base64
import datetime as dt
import gc
import hashlib
import json
import os
import secrets
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import func, select

from cps_login.broker import LoginRequest, LoginService
from cps_login.config import LoginConfig
from cps_login.errors import ChallengeRefused, CredentialRefused
from cps_login.pathcheck import ByteLru
from cps_login.proof import login_message
from cps_login.services import build_broker_services
from cps_login.tokens import TokenValidator
from cps_login.web import create_broker_app, services_of
from pki.clock import FixedClock
from pki.issuance.cards import issue_card
from pki.store.models import AuditRecord
from tests.ca.pkihelpers import make_csr
from tests.ca.test_product_category import MemoryCard
from tests.conftest import add_professional
from tests.login.conftest import Env, card_signature, der, login_body

GENERIC = {"error": "invalid_credentials"}
FLOOD = 300
# What a flood may leave behind in the broker process, all requests together (tracemalloc):
# before the fix, 300 requests of 15 KB certificates kept 9+ MB (certificate + issuer text).
RETAINED_LIMIT = 1_500_000
AUDIT_RECORD_LIMIT = 1024       # bytes of one login.refused record's details


def hostile_certificate(key: ec.EllipticCurvePrivateKey, size: int) -> bytes:
    """A distinct certificate of about ``size`` bytes, nearly all of it issuer name text."""
    now = dt.datetime.now(dt.UTC)
    filler = os.urandom(max(1, (size - 600) // 2)).hex()
    issuer = x509.Name([x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, filler)])
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "810000000000")]))
            .issuer_name(issuer).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1)).sign(key, hashes.SHA256()))
    return der(cert)


@pytest.fixture(scope="module")
def attacker() -> tuple[ec.EllipticCurvePrivateKey, list[bytes]]:
    key = ec.generate_private_key(ec.SECP256R1())
    return key, [hostile_certificate(key, 15_000) for _ in range(FLOOD)]


def login_service(env: Env) -> LoginService:
    service = services_of(env.broker_app).login
    assert isinstance(service, LoginService)
    return service


def audit_seq(env: Env) -> int:
    with env.auth.store.read() as session:
        return int(session.execute(select(func.max(AuditRecord.seq))).scalar_one() or 0)


def refusals_since(env: Env, seq: int) -> list[tuple[str, dict[str, Any]]]:
    with env.auth.store.read() as session:
        rows = session.execute(select(AuditRecord.details).where(
            AuditRecord.seq > seq, AuditRecord.action == "login.refused")).scalars().all()
    return [(row, json.loads(row)) for row in rows]


def flood(service: LoginService, requests: list[LoginRequest]) -> tuple[int, set[str]]:
    """Bytes the requests left allocated (tracemalloc), and the refusal reasons."""
    reasons: set[str] = set()
    gc.collect()
    tracemalloc.start()
    try:
        for request in requests:
            with pytest.raises((ChallengeRefused, CredentialRefused)) as info:
                service.login(request)
            reasons.add(getattr(info.value, "reason", ""))
        del info
        gc.collect()
        retained, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return retained, reasons


# --- #1 memory and audit amplification -------------------------------------------------------

def test_unknown_challenges_cost_no_parsing_nor_memory(
        env: Env, attacker: tuple[ec.EllipticCurvePrivateKey, list[bytes]]) -> None:
    _, certs = attacker
    seq = audit_seq(env)
    requests = [LoginRequest(c, (), secrets.token_bytes(32), b"\x30" * 70) for c in certs]
    retained, reasons = flood(login_service(env), requests)
    assert reasons == {"challenge_unknown"}
    assert retained < RETAINED_LIMIT, f"{retained} bytes kept after {FLOOD} refusals"
    records = refusals_since(env, seq)
    assert len(records) == FLOOD
    assert max(len(raw) for raw, _ in records) < AUDIT_RECORD_LIMIT


def test_untrusted_certificates_are_not_kept_and_audited_by_digest(
        env: Env, attacker: tuple[ec.EllipticCurvePrivateKey, list[bytes]]) -> None:
    """The attacker holds real challenges and signs them: proof of possession passes, the
    path fails. Nothing of the certificate stays, and the record names it by its SHA-256."""
    key, certs = attacker
    service = login_service(env)
    seq = audit_seq(env)
    requests = []
    for cert in certs:
        challenge = service.challenge().value
        signature = card_signature(key, login_message(challenge, service.issuer))
        requests.append(LoginRequest(cert, (), challenge, signature))
    retained, reasons = flood(service, requests)
    assert reasons == {"other_ca"}
    assert retained < RETAINED_LIMIT, f"{retained} bytes kept after {FLOOD} refusals"
    records = refusals_since(env, seq)
    assert len(records) == FLOOD
    assert max(len(raw) for raw, _ in records) < AUDIT_RECORD_LIMIT
    first = records[0][1]
    assert first["certificate"] == hashlib.sha256(certs[0]).hexdigest()
    assert "issuer" not in first       # an untrusted issuer name is the attacker's text


def test_oversized_certificate_is_malformed_before_the_challenge(env: Env) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    service = login_service(env)
    seq = audit_seq(env)
    challenge = service.challenge().value
    big = hostile_certificate(key, 170_000)
    body = {"certificate": base64.b64encode(big).decode(),
            "challenge": base64.b64encode(challenge).decode(),
            "signature": base64.b64encode(b"\x30" * 70).decode()}
    with pytest.raises(CredentialRefused) as info:
        LoginRequest.from_json(body)
    assert info.value.reason == "malformed"
    status, answer = env.post("/login", body)
    assert (status, answer) == (401, GENERIC)
    (raw, record), = refusals_since(env, seq)
    assert record["reason"] == "malformed" and len(raw) < AUDIT_RECORD_LIMIT


def test_login_body_is_capped(env: Env) -> None:
    """The app refuses a body over MAX_CONTENT_LENGTH (256 KiB) before reading it as JSON."""
    status, _ = env.post("/login", {"certificate": "A" * (300 * 1024)})
    assert status == 413


def test_byte_bounded_cache() -> None:
    cache: ByteLru[str, str] = ByteLru(max_bytes=1000)
    cache.put("a", "A", 400)
    cache.put("b", "B", 400)
    assert cache.get("a") == "A"           # a is now the most recent
    cache.put("c", "C", 400)               # 1200 > 1000: the least recent (b) goes
    assert (cache.get("b"), cache.get("a"), cache.get("c")) == (None, "A", "C")
    assert cache.bytes == 800 and len(cache) == 2
    cache.put("huge", "H", 5000)           # larger than the whole budget: never stored
    assert cache.get("huge") is None and cache.bytes == 800
    assert ByteLru[str, str](max_bytes=10, max_entries=0).put("x", "X", 1) is None


def test_trusted_certificates_are_cached_within_the_byte_budget(env: Env) -> None:
    budget = 6 * 1024
    config = LoginConfig.from_home(env.home, cache_max_bytes=budget)
    services = build_broker_services(config, clock=FixedClock(dt.datetime.now(dt.UTC)))
    try:
        client = create_broker_app(config, services=services).test_client()
        for name in ("alice", "ecdsa", "crl-good", "alice"):
            card = env.cards[name]
            ch = client.post("/login/challenge").get_json()["challenge"]
            resp = client.post("/login", json=login_body(card.key, card.auth, ch, env.base))
            assert resp.status_code == 200, resp.get_json()
        sizes = services.login.cache_sizes()
        assert 0 < sizes["certificates"] <= budget and 0 < sizes["paths"] <= budget, sizes
    finally:
        services.close()


# --- #2 assurance follows the key ----------------------------------------------------------------

@pytest.fixture(scope="module")
def holders(env: Env) -> Iterator[dict[str, tuple[ec.EllipticCurvePrivateKey, x509.Certificate]]]:
    """A software key certified from a CSR, and a card personalised by ``card issue``."""
    software_rpps = add_professional(env.auth, body="1000555001", given="Sam")
    key = ec.generate_private_key(ec.SECP256R1())
    software = env.auth.issue_from_csr(make_csr(key), "auth", rpps=software_rpps).certificate
    card_rpps = add_professional(env.auth, body="1000555002", given="Cara")
    memory = MemoryCard()
    card = issue_card(env.auth, card_rpps, memory, "1234", backend="test",
                      location="memory").certificates["auth"]
    out = {"software": (key, software), "card": (memory.keys["auth"], card)}
    for _, cert in out.values():
        env.extra_certs.append(cert)
        env.wait_ocsp(f"{cert.serial_number:X}", "good")
    yield out


def _claims(env: Env, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate
            ) -> dict[str, Any]:
    _, ch = env.post("/login/challenge")
    status, body = env.post("/login", login_body(key, cert, ch["challenge"], env.base))
    assert status == 200, body
    _, jwks = env.get("/.well-known/jwks.json")
    validator = TokenValidator(jwks, issuer=env.base, audience=env.config.audience,
                               clock=FixedClock(dt.datetime.now(dt.UTC)))
    return validator.validate(body["access_token"])


def _last_login(env: Env) -> dict[str, Any]:
    with env.auth.store.read() as session:
        raw = session.execute(select(AuditRecord.details).where(
            AuditRecord.action.like("login.%")).order_by(AuditRecord.seq.desc()).limit(1)
        ).scalar_one()
    return dict(json.loads(raw))


def test_csr_key_logs_in_at_the_software_level(env: Env, holders: dict[str, Any]) -> None:
    key, cert = holders["software"]
    claims = _claims(env, key, cert)
    assert claims["amr"] == ["swk"] and claims["acr"] == "eidas1"
    assert claims["Palier_Authentification"] == "APPPRIP1"
    assert claims["sub"] == cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert _last_login(env)["key_storage"] == "software"


def test_card_key_logs_in_at_the_card_level(env: Env, holders: dict[str, Any]) -> None:
    key, cert = holders["card"]
    claims = _claims(env, key, cert)
    assert claims["amr"] == ["hwk", "pin"] and claims["acr"] == "eidas3"
    assert claims["Palier_Authentification"] == "APPPRIP3"
    assert _last_login(env)["key_storage"] == "card"


def test_software_keys_refused_when_the_broker_says_so(env: Env,
                                                       holders: dict[str, Any]) -> None:
    config = LoginConfig.from_home(env.home, accept_software_keys=False)
    services = build_broker_services(config, clock=FixedClock(dt.datetime.now(dt.UTC)))
    try:
        client = create_broker_app(config, services=services).test_client()
        for kind, want in (("software", 401), ("card", 200)):
            key, cert = holders[kind]
            ch = client.post("/login/challenge").get_json()["challenge"]
            resp = client.post("/login", json=login_body(key, cert, ch, env.base))
            assert resp.status_code == want, (kind, resp.get_json())
            if want == 401:
                assert resp.get_json() == GENERIC
                assert _last_login(env)["reason"] == "software_key_refused"
    finally:
        services.close()
