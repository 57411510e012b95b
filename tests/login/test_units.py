"""Units without a home: challenge stores under concurrency, TOTP vectors, the signed message."""

from __future__ import annotations

import datetime as dt
import secrets
import socket
import threading
from collections.abc import Callable

import pytest

from cps_login import totp
from cps_login.challenges import MemoryChallengeStore, RedisChallengeStore
from cps_login.errors import ChallengeRefused, RateLimited
from cps_login.proof import login_message
from cps_login.ratelimit import MemoryRateLimiter
from pki.clock import FixedClock

NOW = dt.datetime(2026, 5, 1, 12, 0, tzinfo=dt.UTC)


def _redis() -> object:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=1):
            pass
    except OSError:
        pytest.skip("Redis not reachable on 127.0.0.1:6379")
    import redis

    return redis.Redis.from_url("redis://127.0.0.1:6379/0")


def memory(clock: FixedClock) -> MemoryChallengeStore:
    return MemoryChallengeStore(clock, 60)


def redis_store(clock: FixedClock) -> RedisChallengeStore:
    return RedisChallengeStore(_redis(), clock, 60, prefix=f"test:{secrets.token_hex(4)}:")


STORES: list[Callable[[FixedClock], object]] = [memory, redis_store]


@pytest.mark.parametrize("make", STORES, ids=["memory", "redis"])
def test_challenge_is_single_use_under_concurrency(make: Callable[[FixedClock], object]) -> None:
    clock = FixedClock(NOW)
    store = make(clock)
    challenges = [store.issue() for _ in range(50)]  # type: ignore[attr-defined]
    wins: list[bytes] = []
    losses: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def racer() -> None:
        barrier.wait()
        for ch in challenges:
            try:
                store.consume(ch.value)  # type: ignore[attr-defined]
                with lock:
                    wins.append(ch.value)
            except ChallengeRefused as exc:
                with lock:
                    losses.append(exc.reason)

    threads = [threading.Thread(target=racer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(wins) == sorted(c.value for c in challenges)    # each exactly once
    assert len(losses) == 7 * 50 and set(losses) == {"challenge_replayed"}


@pytest.mark.parametrize("make", STORES, ids=["memory", "redis"])
def test_challenge_expiry_and_unknown(make: Callable[[FixedClock], object]) -> None:
    clock = FixedClock(NOW)
    store = make(clock)
    ch = store.issue()  # type: ignore[attr-defined]
    assert len(ch.value) == 32 and ch.expires_at == NOW + dt.timedelta(seconds=60)
    clock.advance(dt.timedelta(seconds=60))
    with pytest.raises(ChallengeRefused) as info:
        store.consume(ch.value)  # type: ignore[attr-defined]
    assert info.value.reason == "challenge_expired"
    with pytest.raises(ChallengeRefused) as info:
        store.consume(secrets.token_bytes(32))  # type: ignore[attr-defined]
    assert info.value.reason == "challenge_unknown"
    with pytest.raises(ChallengeRefused):
        store.consume(b"short")  # type: ignore[attr-defined]


def test_totp_rfc6238_vectors() -> None:
    # RFC 6238 appendix B, SHA-1 seed "12345678901234567890", 8 digits truncated to 6 here
    import base64

    secret = base64.b32encode(b"12345678901234567890").decode()
    for t, eight in ((59, "94287082"), (1111111109, "07081804"), (1234567890, "89005924"),
                     (2000000000, "69279037")):
        assert totp.hotp(secret, totp.step_at(t), digits=8) == eight
        assert totp.totp(secret, t) == eight[2:]
    assert totp.matching_step(secret, totp.totp(secret, 59), 59 + 30) == 1
    assert totp.matching_step(secret, totp.totp(secret, 59), 59 + 90) is None
    assert totp.matching_step(secret, "12345a", 59) is None


def test_login_message_is_domain_separated() -> None:
    ch = bytes(range(32))
    msg = login_message(ch, "http://b")
    assert msg == b"CPS-LOGIN-V1\x00" + b"\x00\x08" + b"http://b" + ch
    assert login_message(ch, "http://c") != msg


def test_rate_limiter_window() -> None:
    clock = FixedClock(NOW)
    limiter = MemoryRateLimiter(clock, 3, 300)
    for _ in range(3):
        limiter.check("k")
        limiter.fail("k")
    with pytest.raises(RateLimited):
        limiter.check("k")
    limiter.check("other")
    clock.advance(dt.timedelta(seconds=300))
    limiter.check("k")


def test_openapi_documents_every_route() -> None:
    """The OpenAPI file must name every JSON route of the broker app as built (every blueprint
    ``create_broker_app`` registers, POST /verify included) and of the patient API (``portal``;
    the /espace pages are HTML), and nothing that is not one."""
    import json
    import re
    from importlib import resources
    from types import SimpleNamespace

    from flask import Flask

    from cps_login.oidc.front import routes as front_routes
    from cps_login.web import create_broker_app, portal

    spec = json.loads(resources.files("cps_login").joinpath("openapi.json").read_text())
    # The OIDC provider and the verifier are built lazily: a stub services object suffices.
    broker_app = create_broker_app(SimpleNamespace(trusted_proxies=()),  # type: ignore[arg-type]
                                   services=SimpleNamespace())  # type: ignore[arg-type]
    patient_api = Flask("probe")
    patient_api.register_blueprint(portal.bp)
    routes = {(re.sub(r"<(?:int:)?(\w+)>", r"{\1}", r.rule), m.lower())
              for app in (broker_app, patient_api)
              for r in app.url_map.iter_rules()
              if r.endpoint not in ("static", "health")
              for m in (r.methods or set()) - {"HEAD", "OPTIONS"}}
    # the provider's browser login and token endpoint: answered before Flask (its WSGI front)
    routes |= {(re.sub(r"<(\w+)>", r"{\1}", rule), m.lower()) for rule, m in front_routes()}
    assert ("/verify", "post") in routes
    documented = {(p, m) for p, ops in spec["paths"].items() for m in ops}
    assert routes == documented


@pytest.mark.parametrize("serial", [1, 127, 128, 255, 256, 2**63, 2**127 - 1, 2**128 + 5])
def test_hand_built_ocsp_request_equals_cryptography(serial: int) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509 import ocsp
    from cryptography.x509.oid import NameOID

    from cps_login.revocation import _issuer_facts, ocsp_request_der

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "CA")])
    start = NOW - dt.timedelta(days=1)
    ca = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
          .public_key(key.public_key()).serial_number(1).not_valid_before(start)
          .not_valid_after(start + dt.timedelta(days=9)).sign(key, hashes.SHA256()))
    leaf = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(serial).not_valid_before(start)
            .not_valid_after(start + dt.timedelta(days=9)).sign(key, hashes.SHA256()))
    expected = (ocsp.OCSPRequestBuilder().add_certificate(leaf, ca, hashes.SHA1())
                .build().public_bytes(serialization.Encoding.DER))
    assert ocsp_request_der(_issuer_facts(ca), serial) == expected
