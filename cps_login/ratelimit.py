"""Fixed-window attempt counters for patient sign-in (memory for one process, or Redis)."""

from __future__ import annotations

import threading
from typing import Any, Protocol

from cps_login.challenges import redis_guard
from cps_login.errors import RateLimited
from pki.clock import Clock


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
