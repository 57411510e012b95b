"""The provider's state contract on its three backends: memory, the store, Redis — put once,
expiry by the injected clock, compare-and-set with exactly one winner among racing threads."""

from __future__ import annotations

import datetime as dt
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from cps_login.errors import SharedStateUnavailable
from cps_login.oidc.state import MemoryState, RedisState, SharedState, StoreState
from pki.clock import FixedClock
from pki.store.db import Store

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture(params=["memory", "store", "redis"])
def state(request: pytest.FixtureRequest, tmp_path: Path
          ) -> Iterator[tuple[SharedState, FixedClock]]:
    clock = FixedClock(dt.datetime.now(dt.UTC))
    if request.param == "memory":
        yield MemoryState(clock), clock
    elif request.param == "store":
        store = Store(f"sqlite:///{tmp_path / 'state.db'}")
        store.migrate()
        yield StoreState(store, clock), clock
        store.dispose()
    else:
        redis = pytest.importorskip("redis")
        client = redis.Redis.from_url(REDIS_URL)
        try:
            client.ping()
        except redis.exceptions.RedisError:
            pytest.skip("no Redis on 127.0.0.1:6379")
        prefix = f"test-a1-oidc-{secrets.token_hex(4)}:"
        yield RedisState(client, prefix), clock
        for key in client.scan_iter(prefix + "*"):
            client.delete(key)


def test_put_get_cas(state: tuple[SharedState, FixedClock]) -> None:
    s, _ = state
    assert s.put("k", {"a": 1}, 60)
    assert not s.put("k", {"a": 2}, 60)              # a live value is never overwritten
    assert s.get("k") == {"a": 1}
    assert not s.cas("k", {"a": 9}, {"a": 3}, 60)     # not what it holds
    assert s.cas("k", {"a": 1}, {"a": 3}, 60)
    assert s.get("k") == {"a": 3}
    assert s.cas("k", {"a": 3}, None, 60)
    assert s.get("k") is None and s.get("never") is None


def test_one_winner_among_racers(state: tuple[SharedState, FixedClock]) -> None:
    s, _ = state
    s.put("code", {"used": False}, 60)
    wins: list[int] = []
    barrier = threading.Barrier(8)

    def racer(i: int) -> None:
        barrier.wait()
        if s.cas("code", {"used": False}, {"used": True, "by": i}, 60):
            wins.append(i)

    threads = [threading.Thread(target=racer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
    assert s.get("code") == {"used": True, "by": wins[0]}


def test_expiry_follows_the_injected_clock(tmp_path: Path) -> None:
    clock = FixedClock(dt.datetime.now(dt.UTC))
    store = Store(f"sqlite:///{tmp_path / 'state.db'}")
    store.migrate()
    for s in (MemoryState(clock), StoreState(store, clock)):
        s.put("t", {"v": 1}, 10)
        clock.advance(dt.timedelta(seconds=11))
        assert s.get("t") is None
        assert s.put("t", {"v": 2}, 10)               # an expired value may be replaced
        assert s.get("t") == {"v": 2}
    store.dispose()


def test_memory_state_is_bounded() -> None:
    s = MemoryState(FixedClock(dt.datetime.now(dt.UTC)), max_bytes=10_000)
    with pytest.raises(SharedStateUnavailable):
        for i in range(1000):
            s.put(f"tx:{i}", {"qs": "x" * 100}, 300)


def test_memory_state_keeps_what_was_stored() -> None:
    """Values are kept as objects: what a caller does with the dict it put, or with the copy
    ``get`` gave, does not reach the stored value; and equality, not identity, is what
    compare-and-set compares."""
    s = MemoryState(FixedClock(dt.datetime.now(dt.UTC)))
    value = {"status": "pending", "n": 1}
    assert s.put("tx", value, 60)
    value["status"] = "changed by the caller"
    got = s.get("tx")
    assert got == {"status": "pending", "n": 1}
    assert got is not None
    got["status"] = "proven"
    assert s.get("tx") == {"status": "pending", "n": 1}
    assert s.cas("tx", {"n": 1, "status": "pending"}, {**got, "n": 2}, 60)
    assert s.get("tx") == {"status": "proven", "n": 2}
    with pytest.raises(TypeError):          # not JSON: refused as Redis and the store would
        s.put("bad", {"x": object()}, 60)
    with pytest.raises(TypeError):
        s.put("bad", ["not", "an", "object"], 60)  # type: ignore[arg-type]
    assert s.get("bad") is None


def test_new_ciba_keys_leave_a_quarter_of_the_budget_to_browser_logins() -> None:
    """One CIBA client asking for requests of every professional cannot fill the state: a new
    ``ciba:``/``ciba-sub:`` key is refused past three quarters of the budget, while a login
    transaction (any other key) may still use the rest, and a CIBA request already stored may
    still be updated (approved)."""
    clock = FixedClock(dt.datetime(2026, 11, 29, tzinfo=dt.UTC))
    state = MemoryState(clock, max_bytes=100_000)
    value = {"status": "pending", "pad": "x" * 300}
    stored = 0
    while True:
        try:
            state.put(f"ciba:{stored}", value, 600)
        except SharedStateUnavailable:
            break
        stored += 1
    assert 0.70 * 100_000 < state._bytes <= 0.75 * 100_000
    with pytest.raises(SharedStateUnavailable):
        state.put("ciba-sub:810000000001", value, 600)
    for i in range(10):                                   # browser logins still get room
        assert state.put(f"tx:{i}", value, 600)
    approved = {**value, "status": "approved", "subject": {"sub": "810000000001"}}
    assert state.cas("ciba:0", value, approved, 600)
