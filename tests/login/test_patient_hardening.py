"""Issue 13, items 8–11: the patient role's sign-in and sessions on a public network.

* TOTP seeds are sealed at rest (AES-GCM, ``secrets/totp.key``, bound to the patient's INS);
  clear seeds from before are sealed when the role starts; an unreadable seed refuses the
  sign-in (401 and one log line), never a 500.
* Sign-out ends the session server-side, on every instance (store or Redis revocations).
* Throttling per (account, client) with exponential backoff, per client across accounts, and a
  per-account cap that shortens every client's free tries instead of locking the account.
* ``X-Forwarded-For``/``-Proto`` are believed only from ``trusted_proxies``: Secure cookie and
  HSTS behind a TLS proxy, the headers ignored from anyone else.

A light home (p256, SQLite, no status server): patients are written to the store with an
activation code and activated through the app, as a professional's enrolment would.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import text

from cps_login import totp
from cps_login.config import LoginConfig
from cps_login.web import create_patient_app, services_of
from pki import ids
from pki.ca.hierarchy import init_home
from pki.clock import FixedClock
from pki.store.db import Store
from pki.store.patient_models import Patient

PASSWORD = "correct horse battery staple"
REDIS = "redis://127.0.0.1:6379/0"
START = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("hardening") / "cps"
    init_home(path, key_type="p256")
    return path


def _new_ins() -> str:
    nir = f"2800575{secrets.randbelow(10**6):06d}"
    return nir + ids.ins_key(nir)


class World:
    """Patient apps over one home, one clock; ``make`` builds another instance (replica)."""

    def __init__(self, home: Path, **overrides: Any) -> None:
        self.home = home
        self.clock = FixedClock(START)
        self.overrides = overrides
        self.apps: list[Flask] = []
        self.steps: dict[str, int] = {}
        self.app = self.make()

    def make(self, **extra: Any) -> Flask:
        config = LoginConfig.from_home(self.home, **{**self.overrides, **extra})
        app = create_patient_app(config, clock=self.clock)
        self.apps.append(app)
        return app

    def close(self) -> None:
        for app in self.apps:
            services_of(app).close()

    @property
    def store(self) -> Store:
        return services_of(self.app).store  # type: ignore[no-any-return]

    def patient(self) -> tuple[str, str]:
        """A new activated patient: (INS, TOTP secret)."""
        ins, code = _new_ins(), secrets.token_urlsafe(12)
        with self.store.session() as session:
            session.add(Patient(ins=ins, given_name="Zoé", surname="Test",
                                birth_date=dt.date(1980, 5, 1),
                                activation_hash=hashlib.sha256(code.encode()).hexdigest(),
                                activation_expires=START + dt.timedelta(days=30),
                                emergency_opposed=False, totp_last_step=0, created_at=START))
        resp = self.app.test_client().post("/patient/activate", json={
            "ins": ins, "activation_code": code, "password": PASSWORD})
        assert resp.status_code == 200, resp.get_json()
        return ins, str(resp.get_json()["totp_secret"])

    def code(self, secret: str) -> str:
        """A code of a step not used before, within the ±1 step the server accepts (the clock
        moves on only when the next step is used up, so backoffs are not skipped)."""
        now = totp.step_at(self.clock.now().timestamp())
        step = max(now - 1, self.steps.get(secret, 0) + 1)
        if step > now + 1:
            self.clock.advance(dt.timedelta(seconds=totp.STEP_SECONDS))
            return self.code(secret)
        self.steps[secret] = step
        return totp.hotp(secret, step)

    def signin(self, ins: str, password: str, code: str, addr: str = "192.0.2.1",
               app: Flask | None = None, headers: dict[str, str] | None = None) -> Any:
        return (app or self.app).test_client().post(
            "/patient/signin", json={"ins": ins, "password": password, "totp": code},
            environ_base={"REMOTE_ADDR": addr}, headers=headers or {})


@pytest.fixture
def world(home: Path) -> Iterator[World]:
    w = World(home)
    try:
        yield w
    finally:
        w.close()


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    import redis

    prefix = f"test:{secrets.token_hex(6)}:"
    client = redis.Redis.from_url(REDIS)
    try:
        client.ping()
    except redis.RedisError:
        pytest.fail("Redis on 127.0.0.1:6379 is required")
    try:
        yield prefix
    finally:
        keys = list(client.scan_iter(prefix + "*"))
        if keys:
            client.delete(*keys)
        client.close()


@pytest.fixture(params=["memory", "redis"])
def limited(request: pytest.FixtureRequest, home: Path) -> Iterator[World]:
    """Small limits, on the memory limiter or on Redis."""
    overrides: dict[str, Any] = {"signin_max_attempts": 5, "signin_client_max_failures": 8,
                                 "signin_account_max_failures": 10,
                                 "signin_backoff_base_seconds": 2}
    if request.param == "redis":
        overrides |= {"redis_url": REDIS,
                      "redis_prefix": request.getfixturevalue("redis_prefix")}
    w = World(home, **overrides)
    try:
        yield w
    finally:
        w.close()


# --- 8. TOTP seeds at rest -----------------------------------------------------------------
def _raw_row(store: Store, ins: str) -> dict[str, Any]:
    with store.engine.connect() as conn:
        row = conn.execute(text("SELECT * FROM patient WHERE ins = :ins"), {"ins": ins}).one()
    return dict(row._mapping)


def _holds_seed(row: dict[str, Any], secret: str) -> bool:
    raw = totp.seed_bytes(secret)
    for value in row.values():
        data = value.encode() if isinstance(value, str) else value
        if isinstance(data, bytes) and (secret.encode() in data.upper() or raw in data):
            return True
    return False


def test_totp_seed_is_not_stored_in_clear_and_signin_works(world: World) -> None:
    ins, secret = world.patient()
    row = _raw_row(world.store, ins)
    assert not _holds_seed(row, secret)
    assert row["totp_seed"] and len(row["totp_seed"]) >= 12 + 20 + 16   # nonce, seed, tag
    key = world.home / "secrets" / "totp.key"
    assert key.stat().st_mode & 0o777 == 0o600
    assert world.signin(ins, PASSWORD, world.code(secret)).status_code == 200


def test_clear_seeds_from_before_are_sealed_when_the_role_starts(world: World) -> None:
    ins, _ = world.patient()
    legacy = totp.new_secret()
    with world.store.engine.begin() as conn:      # a row as migration 0006 left it
        conn.execute(text("UPDATE patient SET totp_secret = :s, totp_seed = NULL "
                          "WHERE ins = :ins"), {"s": legacy, "ins": ins})
    replica = world.make()
    assert not _holds_seed(_raw_row(world.store, ins), legacy)
    assert world.signin(ins, PASSWORD, world.code(legacy), app=replica).status_code == 200


def test_a_seed_that_does_not_decrypt_refuses_the_signin(world: World,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    ins, secret = world.patient()
    other, _ = world.patient()
    with world.store.engine.begin() as conn:      # another patient's sealed seed: AD mismatch
        conn.execute(text("UPDATE patient SET totp_seed = "
                          "(SELECT totp_seed FROM patient WHERE ins = :other) WHERE ins = :ins"),
                     {"other": other, "ins": ins})
    with caplog.at_level(logging.ERROR):
        resp = world.signin(ins, PASSWORD, world.code(secret))
    assert resp.status_code == 401 and resp.get_json() == {"error": "invalid_credentials"}
    assert any("TOTP seed" in r.getMessage() and ins in r.getMessage() for r in caplog.records)


# --- 9. sign-out ---------------------------------------------------------------------------
def _history(app: Flask, ins: str, session: str) -> int:
    return app.test_client().get(f"/patient/records/{ins}/history",
                                 headers={"Authorization": f"Bearer {session}"}).status_code


@pytest.mark.parametrize("shared", ["store", "redis"])
def test_signout_ends_the_session_on_every_instance(home: Path, shared: str,
                                                    request: pytest.FixtureRequest) -> None:
    overrides = ({"redis_url": REDIS, "redis_prefix": request.getfixturevalue("redis_prefix")}
                 if shared == "redis" else {})
    w = World(home, **overrides)
    try:
        other = w.make()
        ins, secret = w.patient()
        session = w.signin(ins, PASSWORD, w.code(secret)).get_json()["session"]
        assert _history(other, ins, session) == 200
        resp = w.app.test_client().post("/patient/signout",
                                        headers={"Authorization": f"Bearer {session}"})
        assert resp.status_code == 200
        assert _history(w.app, ins, session) == 401
        assert _history(other, ins, session) == 401
        fresh = w.signin(ins, PASSWORD, w.code(secret)).get_json()["session"]
        assert _history(other, ins, fresh) == 200     # only that session ended
    finally:
        w.close()


def test_page_signout_ends_the_cookie_session_on_another_instance(world: World) -> None:
    from tests.pages.conftest import csrf_of

    ins, secret = world.patient()
    browser = world.app.test_client()
    csrf = csrf_of(browser.get("/espace/signin").get_data(as_text=True))
    resp = browser.post("/espace/signin", data={"csrf": csrf, "ins": ins, "password": PASSWORD,
                                                "totp": world.code(secret)})
    assert resp.status_code == 303
    cookie = browser.get_cookie("cps-espace")
    assert cookie is not None
    old = cookie.value
    page = browser.get(f"/espace/records/{ins}/history")
    assert page.status_code == 200
    browser.post("/espace/signout", data={"csrf": csrf_of(page.get_data(as_text=True))})
    thief = world.make().test_client()               # the old cookie, replayed elsewhere
    thief.set_cookie("cps-espace", old)
    resp = thief.get(f"/espace/records/{ins}/history")
    assert resp.status_code == 303 and "/espace/signin" in resp.headers["Location"]


def test_expired_revocations_are_pruned(world: World) -> None:
    ins, secret = world.patient()
    auth = services_of(world.app).patient_auth
    first = world.signin(ins, PASSWORD, world.code(secret)).get_json()["session"]
    auth.sign_out(first)
    world.clock.advance(dt.timedelta(seconds=world.app.extensions["cps_login"]
                                     .config.patient_session_ttl_seconds + 1))
    second = world.signin(ins, PASSWORD, world.code(secret)).get_json()["session"]
    auth.sign_out(second)
    with world.store.engine.connect() as conn:
        count = conn.execute(text("SELECT count(*) FROM patient_session_revoked")).scalar_one()
    assert count == 1


# --- 10. throttling ------------------------------------------------------------------------
def _fail(w: World, ins: str, addr: str, times: int = 1) -> list[int]:
    return [w.signin(ins, "wrong password!", "000000", addr).status_code for _ in range(times)]


def test_attackers_elsewhere_cannot_lock_the_patient_out(limited: World) -> None:
    w = limited
    ins, secret = w.patient()
    _fail(w, ins, "203.0.113.9", 12)                         # one address, hammering
    for i in range(12):                                      # and many addresses, once each
        _fail(w, ins, f"198.51.100.{i}")
    assert w.signin(ins, PASSWORD, w.code(secret), "192.0.2.77").status_code == 200


def test_pair_backs_off_exponentially_then_lets_the_right_password_in(limited: World) -> None:
    w = limited
    ins, secret = w.patient()
    assert _fail(w, ins, "203.0.113.10", 5) == [401] * 5
    resp = w.signin(ins, PASSWORD, w.code(secret), "203.0.113.10")
    assert resp.status_code == 429 and resp.headers["Retry-After"] == "2"
    w.clock.advance(dt.timedelta(seconds=2))
    assert _fail(w, ins, "203.0.113.10") == [401]
    resp = w.signin(ins, "wrong password!", "000000", "203.0.113.10")
    assert resp.status_code == 429 and resp.headers["Retry-After"] == "4"
    w.clock.advance(dt.timedelta(seconds=4))
    assert w.signin(ins, PASSWORD, w.code(secret), "203.0.113.10").status_code == 200


def test_one_client_is_limited_across_accounts(limited: World) -> None:
    w = limited
    statuses = [w.signin(_new_ins(), "wrong password!", "000000", "203.0.113.11").status_code
                for _ in range(9)]
    assert statuses == [401] * 8 + [429]
    ins, secret = w.patient()
    assert w.signin(ins, PASSWORD, w.code(secret), "203.0.113.11").status_code == 429
    assert w.signin(ins, PASSWORD, w.code(secret), "203.0.113.12").status_code == 200


def test_account_cap_delays_every_client_without_locking(limited: World) -> None:
    w = limited
    ins, secret = w.patient()
    for i in range(10):                                      # distributed guessing: the cap
        assert _fail(w, ins, f"198.51.101.{i}") == [401]
    assert _fail(w, ins, "198.51.102.1") == [401]           # a new client: one try, evaluated
    resp = w.signin(ins, "wrong password!", "000000", "198.51.102.1")
    assert resp.status_code == 429 and int(resp.headers["Retry-After"]) >= 2
    w.clock.advance(dt.timedelta(seconds=int(resp.headers["Retry-After"])))
    assert _fail(w, ins, "198.51.102.1") == [401]           # delayed, not locked
    assert w.signin(ins, PASSWORD, w.code(secret), "192.0.2.200").status_code == 200


def test_forwarded_for_counts_only_from_trusted_proxies(home: Path) -> None:
    w = World(home, trusted_proxies=("10.0.0.0/8",), signin_max_attempts=5)
    try:
        ins, secret = w.patient()
        for i in range(6):     # an untrusted peer rotating X-Forwarded-For: still one client
            w.signin(ins, "wrong password!", "000000", "192.0.2.50",
                     headers={"X-Forwarded-For": f"198.51.100.{i}"})
        resp = w.signin(ins, PASSWORD, w.code(secret), "192.0.2.50",
                        headers={"X-Forwarded-For": "198.51.100.99"})
        assert resp.status_code == 429
        for _ in range(6):     # an attacker behind the trusted proxy
            w.signin(ins, "wrong password!", "000000", "10.0.0.2",
                     headers={"X-Forwarded-For": "203.0.113.66"})
        resp = w.signin(ins, PASSWORD, w.code(secret), "10.0.0.2",   # the patient, same proxy
                        headers={"X-Forwarded-For": "203.0.113.67"})
        assert resp.status_code == 200
    finally:
        w.close()


# --- 11. TLS proxy --------------------------------------------------------------------------
def _page(app: Flask, addr: str, headers: dict[str, str]) -> Any:
    return app.test_client().get("/espace/signin", environ_base={"REMOTE_ADDR": addr},
                                 headers=headers)


FORWARDED_TLS = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.5"}


def test_trusted_tls_proxy_gets_secure_cookie_and_hsts(home: Path) -> None:
    w = World(home, trusted_proxies=("10.0.0.0/8", "::1/128"))
    try:
        resp = _page(w.app, "10.1.2.3", FORWARDED_TLS)
        cookie = resp.headers["Set-Cookie"]
        assert cookie.startswith("__Host-cps-espace=") and "Secure" in cookie
        assert resp.headers["Strict-Transport-Security"].startswith("max-age=")
        ins, secret = w.patient()
        resp = w.signin(ins, PASSWORD, w.code(secret), "10.1.2.3", headers=FORWARDED_TLS)
        assert resp.status_code == 200 and "Strict-Transport-Security" in resp.headers
    finally:
        w.close()


@pytest.mark.parametrize("trusted", [(), ("10.0.0.0/8",)])
def test_forwarded_headers_from_an_untrusted_peer_are_ignored(home: Path,
                                                             trusted: tuple[str, ...]) -> None:
    w = World(home, trusted_proxies=trusted)
    try:
        resp = _page(w.app, "192.0.2.7", FORWARDED_TLS)
        cookie = resp.headers["Set-Cookie"]
        assert cookie.startswith("cps-espace=") and "Secure" not in cookie
        assert "Strict-Transport-Security" not in resp.headers
    finally:
        w.close()


def test_trusted_proxies_must_be_networks(home: Path) -> None:
    from pki.errors import ConfigError

    with pytest.raises(ConfigError, match="trusted_proxies"):
        World(home, trusted_proxies=("not-a-network",))




def _through_gunicorn(home: Path, trusted: list[str]) -> tuple[str, str | None]:
    """(Set-Cookie, HSTS) of /espace/signin from the patient role under gunicorn, asked from
    127.0.0.1 with ``X-Forwarded-Proto: https``."""
    import json
    import urllib.request

    from tests.login.conftest import free_port
    from tests.login.roleproc import start_role

    (home / "login.json").write_text(json.dumps({"trusted_proxies": trusted}))
    role = start_role("patient", home, free_port())
    try:
        request = urllib.request.Request(role.url + "/espace/signin", headers=FORWARDED_TLS)
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.headers["Set-Cookie"], resp.headers["Strict-Transport-Security"]
    finally:
        role.stop()
        (home / "login.json").unlink()


def test_gunicorn_believes_forwarded_proto_from_the_same_peers_only(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """gunicorn trusts X-Forwarded-Proto from loopback by default; the role narrows it to
    ``trusted_proxies``, so a local process cannot make a plain-http answer claim https."""
    home = tmp_path_factory.mktemp("gunicorn") / "cps"
    init_home(home, key_type="p256")
    cookie, hsts = _through_gunicorn(home, ["10.0.0.0/8"])
    assert cookie.startswith("cps-espace=") and "Secure" not in cookie and hsts is None
    cookie, hsts = _through_gunicorn(home, ["127.0.0.1/32"])
    assert cookie.startswith("__Host-cps-espace=") and "Secure" in cookie and hsts


def test_throttle_settings_must_be_positive(home: Path) -> None:
    from pki.errors import ConfigError

    with pytest.raises(ConfigError, match="backoff_base must be a positive integer"):
        World(home, signin_backoff_base_seconds=0)
