"""Login challenges: 32 random bytes, single use, short-lived.

Two stores with one contract: ``issue()`` hands out a fresh challenge; ``consume(value)``
succeeds exactly once per challenge, even when several threads or processes race on it, and
otherwise says why (``challenge_unknown``, ``challenge_replayed``, ``challenge_expired``).
The memory store serves one process; the Redis store (one atomic SET ... GET) serves several.
"""

from __future__ import annotations

import datetime as dt
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from cps_login.errors import ChallengeRefused, SharedStateUnavailable
from pki.clock import Clock

CHALLENGE_BYTES = 32
_USED = b"used"


@dataclass(frozen=True)
class Challenge:
    value: bytes
    expires_at: dt.datetime


class ChallengeStore(Protocol):
    def issue(self) -> Challenge: ...

    def consume(self, value: bytes) -> None: ...


def _check_value(value: bytes) -> None:
    if len(value) != CHALLENGE_BYTES:
        raise ChallengeRefused("challenge_unknown")


class MemoryChallengeStore:
    """One process: a dict under a lock; used challenges are remembered until they expire."""

    def __init__(self, clock: Clock, ttl_seconds: int = 60, max_live: int = 1_000_000) -> None:
        self._clock = clock
        self._ttl = dt.timedelta(seconds=ttl_seconds)
        self._live: dict[bytes, dt.datetime] = {}
        self._used: dict[bytes, dt.datetime] = {}
        self._lock = threading.Lock()
        self._max_live = max_live
        self._sweeps = 0

    def issue(self) -> Challenge:
        value = secrets.token_bytes(CHALLENGE_BYTES)
        expires = self._clock.now() + self._ttl
        with self._lock:
            self._sweeps += 1
            if self._sweeps >= 1024 or len(self._live) >= self._max_live:
                self._sweep()
            if len(self._live) >= self._max_live:
                raise ChallengeRefused("challenge_store_full")
            self._live[value] = expires
        return Challenge(value, expires)

    def consume(self, value: bytes) -> None:
        _check_value(value)
        now = self._clock.now()
        with self._lock:
            expires = self._live.pop(value, None)
            if expires is None:
                used = value in self._used
                raise ChallengeRefused("challenge_replayed" if used else "challenge_unknown")
            self._used[value] = expires
        if now >= expires:
            raise ChallengeRefused("challenge_expired")

    def _sweep(self) -> None:
        now = self._clock.now()
        self._sweeps = 0
        # Keep used entries one extra TTL so that a late replay is still named as one.
        self._live = {v: e for v, e in self._live.items() if e > now - self._ttl}
        self._used = {v: e for v, e in self._used.items() if e > now - self._ttl}


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
    """Several processes: one key per challenge, consumed atomically with SET XX GET."""

    def __init__(self, client: Any, clock: Clock, ttl_seconds: int = 60,
                 prefix: str = "cps:login:challenge:") -> None:
        self._redis = client
        self._clock = clock
        self._ttl = ttl_seconds
        self._prefix = prefix

    @classmethod
    def from_url(cls, url: str, clock: Clock, ttl_seconds: int = 60) -> RedisChallengeStore:
        import redis

        return cls(redis.Redis.from_url(url), clock, ttl_seconds)

    def issue(self) -> Challenge:
        value = secrets.token_bytes(CHALLENGE_BYTES)
        expires = self._clock.now() + dt.timedelta(seconds=self._ttl)
        # The key outlives the TTL by one TTL so that a late use is reported as expired, and the
        # expiry that counts is the one stored (the injected clock), not Redis's.
        with redis_guard("challenge"):
            self._redis.set(self._prefix + value.hex(), str(expires.timestamp()),
                            ex=2 * self._ttl, nx=True)
        return Challenge(value, expires)

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
        expires = dt.datetime.fromtimestamp(float(stored), dt.UTC)
        if self._clock.now() >= expires:
            raise ChallengeRefused("challenge_expired")
