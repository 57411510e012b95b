"""Sign-in throttling that an attacker cannot turn into a lockout, in memory or in Redis.

``SigninThrottle`` counts failures three ways and refuses (429, ``Retry-After``) *before* any
password is checked:

* per (account, client) pair: ``free_failures`` tries, then a backoff doubling from
  ``backoff_base`` up to ``backoff_max`` seconds after each further failure; a success clears it.
  An attacker at one address slows only themselves: the patient at their own address is not
  counted with them.
* per client, across accounts: ``client_max_failures`` per ``client_window`` — one address
  trying many accounts is refused for the rest of the window.
* per account, across clients: above ``account_max_failures`` per ``account_window`` every
  pair gets one free try only, then the backoff. Distributed guessing is slowed to one try per
  address and backoff step, yet no one is locked out: a new address (the patient's) always gets
  its first try evaluated.

The client is the address ``cps_login.web.proxy`` settled on (``X-Forwarded-For`` only from
trusted proxies). Checks and counts are separate calls, so concurrent requests may each pass
a check a moment before the count: a few extra tries at most, never fewer.

``MemoryRateLimiter``/``RedisRateLimiter`` are the plain fixed-window counters used before.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any, Protocol

from cps_login.challenges import redis_guard
from cps_login.errors import RateLimited
from pki.clock import Clock
from pki.errors import ConfigError


@dataclass(frozen=True)
class ThrottlePolicy:
    free_failures: int = 5
    backoff_base: int = 2
    backoff_max: int = 900
    client_max_failures: int = 30
    client_window: int = 300
    account_max_failures: int = 50
    account_window: int = 3600

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"sign-in throttling: {name} must be a positive integer, "
                                  f"not {value!r}")


class FailureCounts(Protocol):
    def get(self, key: str) -> tuple[int, float]:
        """(failures, unix time of the last one) of ``key``; (0, 0.0) when none."""

    def add(self, key: str, now: float, ttl: int) -> None:
        """One more failure at ``now``; the entry is forgotten ``ttl`` seconds later."""

    def clear(self, key: str) -> None: ...


class SigninThrottle:
    def __init__(self, counts: FailureCounts, clock: Clock, policy: ThrottlePolicy) -> None:
        self._counts = counts
        self._clock = clock
        self._policy = policy

    def _keys(self, account: str, client: str, now: float) -> tuple[str, str, str]:
        p = self._policy
        return (f"pair:{account}|{client}",
                f"client:{int(now) // p.client_window}:{client}",
                f"account:{int(now) // p.account_window}:{account}")

    def check(self, account: str, client: str) -> None:
        """Raise ``RateLimited`` when this client may not try this account now."""
        p, now = self._policy, self._clock.now().timestamp()
        pair, per_client, per_account = self._keys(account, client, now)
        if self._counts.get(per_client)[0] >= p.client_max_failures:
            window_end = (int(now) // p.client_window + 1) * p.client_window
            raise RateLimited(max(1, math.ceil(window_end - now)))
        failures, last = self._counts.get(pair)
        free = p.free_failures
        if self._counts.get(per_account)[0] >= p.account_max_failures:
            free = min(free, 1)
        if failures >= free:
            wait = min(p.backoff_base * 2 ** min(failures - free, 30), p.backoff_max)
            retry = last + wait - now
            if retry > 0:
                raise RateLimited(max(1, math.ceil(retry)))

    def failed(self, account: str, client: str) -> None:
        p, now = self._policy, self._clock.now().timestamp()
        pair, per_client, per_account = self._keys(account, client, now)
        self._counts.add(pair, now, p.backoff_max + p.account_window)
        self._counts.add(per_client, now, p.client_window)
        self._counts.add(per_account, now, p.account_window)

    def succeeded(self, account: str, client: str) -> None:
        """The pair starts afresh; the account's and the client's counts stay (an attacker
        who also owns an account cannot wash their failures with it)."""
        self._counts.clear(self._keys(account, client, 0)[0])


class MemoryFailureCounts:
    """One process's counts (``cps-admin serve`` refuses several workers without Redis)."""

    MAX_ENTRIES = 200_000

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._entries: dict[str, tuple[int, float, float]] = {}   # key -> (n, last, expires)
        self._lock = threading.Lock()

    def get(self, key: str) -> tuple[int, float]:
        with self._lock:
            entry = self._entries.get(key)
        if entry is None or entry[2] <= self._clock.now().timestamp():
            return 0, 0.0
        return entry[0], entry[1]

    def add(self, key: str, now: float, ttl: int) -> None:
        with self._lock:
            if len(self._entries) >= self.MAX_ENTRIES:
                self._entries = {k: v for k, v in self._entries.items() if v[2] > now}
            n, _, expires = self._entries.get(key, (0, 0.0, 0.0))
            self._entries[key] = (n + 1 if expires > now else 1, now, now + ttl)

    def clear(self, key: str) -> None:
        with self._lock:
            self._entries.pop(key, None)


class RedisFailureCounts:
    """Counts shared by every worker and replica: one hash per key, expiring on its own."""

    def __init__(self, client: Any, prefix: str = "cps:login:signin:") -> None:
        self._redis = client
        self._prefix = prefix

    def get(self, key: str) -> tuple[int, float]:
        with redis_guard("rate limit"):
            n, last = self._redis.hmget(self._prefix + key, "n", "last")
        return (int(n), float(last)) if n is not None and last is not None else (0, 0.0)

    def add(self, key: str, now: float, ttl: int) -> None:
        k = self._prefix + key
        with redis_guard("rate limit"):
            pipe = self._redis.pipeline(transaction=True)
            pipe.hincrby(k, "n", 1)
            pipe.hset(k, "last", repr(now))
            pipe.expire(k, ttl)
            pipe.execute()

    def clear(self, key: str) -> None:
        with redis_guard("rate limit"):
            self._redis.delete(self._prefix + key)


class RateLimiter(Protocol):
    def check(self, key: str) -> None:
        """Raise RateLimited when ``key`` used up its attempts in the current window."""

    def fail(self, key: str) -> None:
        """Count one failed attempt for ``key``."""

    def reset(self, key: str) -> None: ...


class MemoryRateLimiter:
    def __init__(self, clock: Clock, max_attempts: int, window_seconds: int) -> None:
        self._clock = clock
        self._max = max_attempts
        self._window = window_seconds
        self._counts: dict[str, tuple[int, int]] = {}   # key -> (window index, failures)
        self._lock = threading.Lock()

    def _window_of(self) -> int:
        return int(self._clock.now().timestamp()) // self._window

    def check(self, key: str) -> None:
        window = self._window_of()
        with self._lock:
            entry = self._counts.get(key)
        if entry is not None and entry[0] == window and entry[1] >= self._max:
            retry = (window + 1) * self._window - int(self._clock.now().timestamp())
            raise RateLimited(max(retry, 1))

    def fail(self, key: str) -> None:
        window = self._window_of()
        with self._lock:
            if len(self._counts) > 100_000:
                self._counts = {k: v for k, v in self._counts.items() if v[0] == window}
            w, n = self._counts.get(key, (window, 0))
            self._counts[key] = (window, n + 1 if w == window else 1)

    def reset(self, key: str) -> None:
        with self._lock:
            self._counts.pop(key, None)


class RedisRateLimiter:
    def __init__(self, client: Any, clock: Clock, max_attempts: int, window_seconds: int,
                 prefix: str = "cps:login:signin:") -> None:
        self._redis = client
        self._clock = clock
        self._max = max_attempts
        self._window = window_seconds
        self._prefix = prefix

    def _key(self, key: str) -> str:
        window = int(self._clock.now().timestamp()) // self._window
        return f"{self._prefix}{window}:{key}"

    def check(self, key: str) -> None:
        with redis_guard("rate limit"):
            count = self._redis.get(self._key(key))
        if count is not None and int(count) >= self._max:
            raise RateLimited(self._window)

    def fail(self, key: str) -> None:
        k = self._key(key)
        with redis_guard("rate limit"):
            pipe = self._redis.pipeline()
            pipe.incr(k)
            pipe.expire(k, 2 * self._window)
            pipe.execute()

    def reset(self, key: str) -> None:
        with redis_guard("rate limit"):
            self._redis.delete(self._key(key))
