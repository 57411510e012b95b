"""Login challenges: 32 random bytes, single use, short-lived.

Two stores with one contract: ``issue()`` hands out a fresh challenge; ``consume(value)``
succeeds exactly once per challenge, even when several threads or processes race on it, and
otherwise says why (``challenge_unknown``, ``challenge_replayed``, ``challenge_expired``).
The memory store serves one process; the Redis store (one atomic SET ... GET) serves several.

Challenges are handed to anonymous clients, so both stores are bounded (issue 13): the memory
store in bytes (``max_bytes``, ``ENTRY_BYTES`` a measured upper cost per challenge; when full,
``challenge_store_full`` for everyone, so the per-client bound keeps one client from filling it)
and per client address (``per_client`` live challenges; beyond it 429 for that client only).
``client=None`` (an in-process caller, not an HTTP client) has no per-client bound.
"""

from __future__ import annotations

import datetime as dt
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from cps_login.errors import ChallengeRefused, RateLimited, SharedStateUnavailable
from pki.clock import Clock

CHALLENGE_BYTES = 32
# Memory held per challenge (its live entry, its client's index entry, then its "used" entry):
# ~310 B measured with tracemalloc on CPython 3.12, counted with margin.
ENTRY_BYTES = 400
MAX_BYTES = 32 * 1024 * 1024          # ~84,000 challenges
PER_CLIENT = 100                      # live challenges one client address may hold
_USED = b"used"


@dataclass(frozen=True)
class Challenge:
    value: bytes
    expires_at: dt.datetime


class ChallengeStore(Protocol):
    def issue(self, client: str | None = None) -> Challenge: ...

    def consume(self, value: bytes) -> None: ...


def _check_value(value: bytes) -> None:
    if len(value) != CHALLENGE_BYTES:
        raise ChallengeRefused("challenge_unknown")


class MemoryChallengeStore:
    """One process: a dict under a lock; used challenges are remembered until they expire."""

    def __init__(self, clock: Clock, ttl_seconds: int = 60, max_bytes: int = MAX_BYTES,
                 per_client: int = PER_CLIENT) -> None:
        self._clock = clock
        self._ttl = dt.timedelta(seconds=ttl_seconds)
        self._live: dict[bytes, tuple[dt.datetime, str | None]] = {}
        self._used: dict[bytes, dt.datetime] = {}
        # Each client's live challenges, so that its bound is checked without a full scan.
        self._by_client: dict[str, dict[bytes, dt.datetime]] = {}
        self._lock = threading.Lock()
        self._max_entries = max(1, max_bytes // ENTRY_BYTES)
        self._per_client = per_client
        self._sweeps = 0

    def issue(self, client: str | None = None) -> Challenge:
        value = secrets.token_bytes(CHALLENGE_BYTES)
        now = self._clock.now()
        expires = now + self._ttl
        with self._lock:
            self._sweeps += 1
            if self._sweeps >= 1024 or self._entries() >= self._max_entries:
                self._sweep()
            held = None if client is None else self._by_client.get(client)
            if held is not None and len(held) >= self._per_client:
                for old in [v for v, e in held.items() if e <= now]:
                    del held[old]          # still in _live: a late use reads "expired"
                if len(held) >= self._per_client:
                    raise RateLimited(int(self._ttl.total_seconds()))
            if self._entries() >= self._max_entries:
                raise ChallengeRefused("challenge_store_full")
            self._live[value] = (expires, client)
            if client is not None:
                self._by_client.setdefault(client, {})[value] = expires
        return Challenge(value, expires)

    def consume(self, value: bytes) -> None:
        _check_value(value)
        now = self._clock.now()
        with self._lock:
            entry = self._live.pop(value, None)
            if entry is None:
                used = value in self._used
                raise ChallengeRefused("challenge_replayed" if used else "challenge_unknown")
            expires, client = entry
            self._drop_from_client(client, value)
            self._used[value] = expires
        if now >= expires:
            raise ChallengeRefused("challenge_expired")

    def held(self) -> int:
        """Challenges held (live and remembered as used)."""
        with self._lock:
            return self._entries()

    def _entries(self) -> int:
        return len(self._live) + len(self._used)

    def _drop_from_client(self, client: str | None, value: bytes) -> None:
        held = None if client is None else self._by_client.get(client)
        if held is not None:
            held.pop(value, None)
            if not held and client is not None:
                del self._by_client[client]

    def _sweep(self) -> None:
        now = self._clock.now()
        self._sweeps = 0
        # Keep entries one extra TTL so that a late use or replay is still named as one.
        self._live = {v: e for v, e in self._live.items() if e[0] > now - self._ttl}
        self._used = {v: e for v, e in self._used.items() if e > now - self._ttl}
        by_client: dict[str, dict[bytes, dt.datetime]] = {}
        for value, (expires, client) in self._live.items():
            if expires > now and client is not None:   # an expired one no longer counts
                by_client.setdefault(client, {})[value] = expires
        self._by_client = by_client


@contextmanager
def redis_guard(what: str) -> Iterator[None]:
    """Redis down or timing out is a 503 (``shared_state_unavailable``), not a 500."""
    import redis.exceptions

    try:
        yield
    except (redis.exceptions.RedisError, OSError) as exc:
        raise SharedStateUnavailable(f"{what}: Redis unavailable "
                                     f"({type(exc).__name__})") from None


class RedisChallengeStore:
    """Several processes: one key per challenge, consumed atomically with SET XX GET.

    Per client address, a counter of the challenges issued in the current TTL window (created
    with the first one, expiring after one TTL) minus those used: beyond ``per_client``, 429."""

    def __init__(self, client: Any, clock: Clock, ttl_seconds: int = 60,
                 prefix: str = "cps:login:challenge:", per_client: int = PER_CLIENT) -> None:
        self._redis = client
        self._clock = clock
        self._ttl = ttl_seconds
        self._prefix = prefix
        self._per_client = per_client

    @classmethod
    def from_url(cls, url: str, clock: Clock, ttl_seconds: int = 60) -> RedisChallengeStore:
        import redis

        return cls(redis.Redis.from_url(url), clock, ttl_seconds)

    def _counter(self, client: str) -> str:
        return self._prefix + "client:" + client

    def issue(self, client: str | None = None) -> Challenge:
        value = secrets.token_bytes(CHALLENGE_BYTES)
        expires = self._clock.now() + dt.timedelta(seconds=self._ttl)
        # The key outlives the TTL by one TTL so that a late use is reported as expired, and the
        # expiry that counts is the one stored (the injected clock), not Redis's. The client
        # follows it, so that using the challenge gives its slot back.
        stored = str(expires.timestamp()) if client is None else f"{expires.timestamp()}|{client}"
        with redis_guard("challenge"):
            if client is not None:
                self._count(client)
            self._redis.set(self._prefix + value.hex(), stored.encode(), ex=2 * self._ttl,
                            nx=True)
        return Challenge(value, expires)

    def _count(self, client: str) -> None:
        """One more challenge for ``client`` in this window; RateLimited beyond the bound."""
        counter = self._counter(client)
        pipe = self._redis.pipeline(transaction=True)
        pipe.incr(counter)
        pipe.expire(counter, self._ttl, nx=True)
        if pipe.execute()[0] > self._per_client:
            self._redis.decr(counter)
            raise RateLimited(self._ttl)

    def consume(self, value: bytes) -> None:
        _check_value(value)
        # One atomic command marks the challenge used and returns what it held: of any number
        # of concurrent consumers exactly one sees the expiry, the others see "used".
        with redis_guard("challenge"):
            stored = self._redis.set(self._prefix + value.hex(), _USED, xx=True, get=True,
                                     keepttl=True)
        if stored is None:
            raise ChallengeRefused("challenge_unknown")
        if stored == _USED:
            raise ChallengeRefused("challenge_replayed")
        stamp, sep, client = bytes(stored).partition(b"|")
        if sep:
            self._release(client.decode("utf-8", "replace"))
        expires = dt.datetime.fromtimestamp(float(stamp), dt.UTC)
        if self._clock.now() >= expires:
            raise ChallengeRefused("challenge_expired")

    def _release(self, client: str) -> None:
        """One slot back to ``client`` (never below zero; a lapsed window stays lapsed)."""
        with redis_guard("challenge"):
            self._redis.eval(_RELEASE, 1, self._counter(client))


# DECR only a counter that exists and is positive: a window that lapsed is not recreated.
_RELEASE = """
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
if n > 0 then return redis.call('DECR', KEYS[1]) end
return 0
"""
