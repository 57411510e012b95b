"""Issue 13: anonymous clients cannot fill the challenge store, nor starve each other.

Before: the memory store held up to 1,000,000 challenges (~580 MB) for anyone, then answered
``challenge_store_full`` to everyone. Now it is bounded in bytes (``challenge_store_max_bytes``)
and per client address (``challenge_max_per_client``: beyond it 429 for that address only),
with Redis too.
"""

from __future__ import annotations

import base64
import datetime as dt
import secrets
import tracemalloc
from types import SimpleNamespace
from typing import Any

import pytest

from cps_login.challenges import ENTRY_BYTES, MemoryChallengeStore, RedisChallengeStore
from cps_login.config import LoginConfig
from cps_login.errors import ChallengeRefused, RateLimited
from pki.clock import FixedClock

NOW = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC)


def test_default_store_is_bounded_in_bytes(tmp_path: Any) -> None:
    config = LoginConfig(home=tmp_path)
    assert config.challenge_store_max_bytes <= 64 * 1024 * 1024
    store = MemoryChallengeStore(FixedClock(NOW), max_bytes=config.challenge_store_max_bytes)
    assert store._max_entries * ENTRY_BYTES <= 64 * 1024 * 1024   # not 1,000,000 entries


def test_entry_cost_is_measured_not_guessed() -> None:
    """ENTRY_BYTES covers what one challenge really holds (live, then used)."""
    store = MemoryChallengeStore(FixedClock(NOW), max_bytes=10**9, per_client=10**9)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        issued = [store.issue(f"198.51.100.{i % 250}").value for i in range(20_000)]
        for value in issued[:10_000]:
            store.consume(value)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    held -= 20_000 * (33 + 56)          # the test's own list of values
    assert held / 20_000 <= ENTRY_BYTES, held / 20_000


def test_memory_store_full_in_bytes() -> None:
    store = MemoryChallengeStore(FixedClock(NOW), max_bytes=50 * ENTRY_BYTES, per_client=100)
    for i in range(50):
        store.issue(f"203.0.113.{i}")
    with pytest.raises(ChallengeRefused, match="challenge_store_full"):
        store.issue("203.0.113.200")
    assert store.held() == 50


def test_memory_store_per_client_bound() -> None:
    clock = FixedClock(NOW)
    store = MemoryChallengeStore(clock, ttl_seconds=60, per_client=5)
    mine = [store.issue("203.0.113.7") for _ in range(5)]
    with pytest.raises(RateLimited):
        store.issue("203.0.113.7")
    store.issue("203.0.113.8")                  # another address: unaffected
    store.consume(mine[0].value)                # a used one frees a slot
    store.issue("203.0.113.7")
    with pytest.raises(RateLimited):
        store.issue("203.0.113.7")
    clock.advance(dt.timedelta(seconds=61))     # expired ones stop counting
    store.issue("203.0.113.7")
    with pytest.raises(ChallengeRefused, match="challenge_expired"):
        store.consume(mine[1].value)            # and a late use is still named expired


def test_redis_store_per_client_bound() -> None:
    import redis

    client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
    prefix = f"test:challenge-bounds:{secrets.token_hex(6)}:"
    try:
        store = RedisChallengeStore(client, FixedClock(NOW), 60, prefix=prefix, per_client=3)
        mine = [store.issue("203.0.113.7") for _ in range(3)]
        with pytest.raises(RateLimited):
            store.issue("203.0.113.7")
        store.issue("203.0.113.8")
        store.consume(mine[0].value)
        store.issue("203.0.113.7")
        with pytest.raises(RateLimited):
            store.issue("203.0.113.7")
        with pytest.raises(ChallengeRefused, match="challenge_replayed"):
            store.consume(mine[0].value)
        assert int(client.ttl(prefix + "client:203.0.113.7")) <= 60
    finally:
        for key in client.scan_iter(prefix + "*"):
            client.delete(key)


def test_http_429_for_one_address_only(tmp_path: Any) -> None:
    """``POST /login/challenge``: the client's address reaches the store."""
    from cps_login.web import create_broker_app

    store = MemoryChallengeStore(FixedClock(NOW), per_client=2)

    class Login:
        issuer = "https://cps.test"

        def challenge(self, client: str = "") -> Any:
            return store.issue(client)

    app = create_broker_app(LoginConfig(home=tmp_path),
                            services=SimpleNamespace(login=Login()))  # type: ignore[arg-type]
    http = app.test_client()

    def ask(address: str) -> Any:
        return http.post("/login/challenge", environ_base={"REMOTE_ADDR": address})

    assert [ask("203.0.113.7").status_code for _ in range(3)] == [200, 200, 429]
    refused = ask("203.0.113.7")
    assert refused.get_json()["error"] == "rate_limited"
    assert refused.headers["Retry-After"] == "60"
    ok = ask("203.0.113.8")
    assert ok.status_code == 200
    assert len(base64.b64decode(ok.get_json()["challenge"])) == 32
