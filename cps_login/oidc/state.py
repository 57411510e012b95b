"""The provider's state: login transactions, codes, refresh tokens, CIBA requests.

One small contract, three backends, chosen like the login challenges' store: Redis (the
broker's ``redis_url``) shared by every replica and worker; without Redis the broker runs one
worker, and the state lives in its memory (``MemoryState``, bounded in bytes) — or, with
``"extra": {"oidc_state": "store"}`` in login.json, in the store's ``oidc_state`` table
(replicas sharing a PostgreSQL store; their challenges then need Redis all the same). A value
is a JSON object under a key, with an expiry in seconds of the injected clock; it changes only
by compare-and-set, so of two concurrent uses of one code or one ``auth_req_id`` exactly one
wins.

* ``put(key, value, ttl)`` — create (True) unless the key holds a live value (False);
* ``get(key)`` — the value, or None when absent or expired;
* ``cas(key, old, new, ttl)`` — replace ``old`` (as ``get`` returned it) by ``new`` (None:
  delete); False when someone changed it first.

In Redis and the store, values are serialised canonically (sorted keys), so "unchanged" is
"the same text"; in memory it is "an equal value".
"""

from __future__ import annotations

import json
import threading
from typing import Any, Protocol

from sqlalchemy import delete, insert, select, update

from cps_login.challenges import redis_guard
from cps_login.errors import SharedStateUnavailable
from cps_login.oidc.models import OidcState
from pki.clock import Clock
from pki.errors import Duplicate
from pki.store.db import Store

Value = dict[str, Any]


def _text(value: Value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


class SharedState(Protocol):
    def put(self, key: str, value: Value, ttl: int) -> bool: ...

    def get(self, key: str) -> Value | None: ...

    def cas(self, key: str, old: Value, new: Value | None, ttl: int) -> bool: ...


def _copy(value: Any) -> Any:
    """A copy of a JSON value all the way down: new dicts and lists, the same immutable
    leaves (str, int, float, bool, None). The state's values are small and shallow (a few
    dozen keys, a list or dict or two), so this costs a few microseconds — far less than
    a JSON round trip."""
    if isinstance(value, dict):
        return {k: (_copy(v) if isinstance(v, (dict, list)) else v) for k, v in value.items()}
    if isinstance(value, list):
        return [(_copy(v) if isinstance(v, (dict, list)) else v) for v in value]
    return value


class MemoryState:
    """One process: a dict under a lock, expired values swept when the byte budget is reached
    (then ``SharedStateUnavailable``, 503, rather than unbounded memory: authorization requests
    come from anonymous browsers).

    The values themselves are kept, not their text: a value goes through the JSON encoder once
    when it is stored (so that what Redis or the store would refuse is refused here too, and to
    count its bytes), compare-and-set compares values (``==``), and what goes in or comes out
    is a copy all the way down (``_copy``): a caller that changes a nested object of a value it
    stored or was given changes nothing stored (tests/oidc/test_state.py,
    tests/redteam/test_front_attacks.py)."""

    # Ending a login session writes a new key (``sid-revoked:<sid>``), where a rotation only
    # replaces a value of the same size: with the budget reached, a replayed refresh token
    # would be 503 while the session went on refreshing (fail open). Those keys may use a
    # reserve of a sixteenth of the budget beyond it; there is one per session at most, and a
    # session takes a card login.
    RESERVED_PREFIXES = ("sid-revoked:",)
    # A back-channel (CIBA) request is started by a relying service for any professional of the
    # public directory: one hostile or compromised CIBA client could otherwise fill the budget
    # and make every browser login 503. New CIBA keys must leave a quarter of the budget free
    # (its updates, an approval, are not held back).
    LOW_PRIORITY_PREFIXES = ("ciba:", "ciba-sub:")

    def __init__(self, clock: Clock, max_bytes: int = 64 * 1024 * 1024) -> None:
        self._clock = clock
        self._values: dict[str, tuple[Value, int, float]] = {}
        self._lock = threading.Lock()
        self._bytes = 0
        self._max = max_bytes
        self._reserve = max_bytes // 16
        self._swept_at = float("-inf")

    def _now(self) -> float:
        return self._clock.now().timestamp()

    @staticmethod
    def _cost(key: str, value: Value) -> int:
        if not isinstance(value, dict):
            raise TypeError("a state value is a JSON object")
        # json.dumps with no options: the encoder CPython keeps ready (non-ASCII counted as
        # its escape, never less than its UTF-8 bytes). What the objects take in memory,
        # measured with tracemalloc on the provider's values (a nonce's {"u": 1}, a refresh
        # session with and without its certificate): 500 bytes of dict, tuple and key, and
        # 1.3 times the text — within 15 % of each, where the text alone was half of it.
        return 500 + len(key) + len(json.dumps(value)) * 13 // 10

    def _set(self, key: str, value: Value | None, cost: int, ttl: int) -> None:
        old = self._values.pop(key, None)
        if old is not None:
            self._bytes -= old[1]
        if value is not None:
            self._values[key] = (value, cost, self._now() + ttl)
            self._bytes += cost

    def _sweep(self) -> None:
        now = self._now()
        for key in [k for k, (_, _, exp) in self._values.items() if exp <= now]:
            self._set(key, None, 0, 0)

    def _room(self, cost: int, key: str = "", new_key: bool = False) -> None:
        limit = self._max
        if key.startswith(self.RESERVED_PREFIXES):
            limit += self._reserve
        elif new_key and key.startswith(self.LOW_PRIORITY_PREFIXES):
            limit -= self._max // 4
        if self._bytes + cost > limit:
            # A sweep walks every value under the lock: at most one a second of the state's
            # clock, however many writes a full budget refuses meanwhile (they would each have
            # held the lock, some on the event loop, for milliseconds).
            now = self._now()
            if now >= self._swept_at + 1.0:
                self._swept_at = now
                self._sweep()
            if self._bytes + cost > limit:
                raise SharedStateUnavailable("oidc state: memory budget reached")

    def put(self, key: str, value: Value, ttl: int) -> bool:
        cost = self._cost(key, value)
        value = _copy(value)
        with self._lock:
            current = self._values.get(key)
            if current is not None and current[2] > self._now():
                return False
            self._room(cost - (current[1] if current is not None else 0), key, new_key=True)
            self._set(key, value, cost, ttl)
        return True

    def get(self, key: str) -> Value | None:
        with self._lock:
            current = self._values.get(key)
        if current is None or current[2] <= self._now():
            return None
        copied: Value = _copy(current[0])
        return copied

    def cas(self, key: str, old: Value, new: Value | None, ttl: int) -> bool:
        cost = 0 if new is None else self._cost(key, new)
        new = None if new is None else _copy(new)
        with self._lock:
            current = self._values.get(key)
            if current is None or current[2] <= self._now() or current[0] != old:
                return False
            if new is not None:
                self._room(cost - current[1])
            self._set(key, new, cost, ttl)
        return True



class StoreState:
    """``oidc_state`` rows; expired rows are ignored on read and swept now and then."""

    def __init__(self, store: Store, clock: Clock, sweep_every: int = 2000) -> None:
        self._store = store
        self._clock = clock
        self._sweep_every = sweep_every
        self._puts = 0

    def _now(self) -> int:
        return int(self._clock.now().timestamp())

    def put(self, key: str, value: Value, ttl: int) -> bool:
        now = self._now()
        self._puts += 1
        try:
            with self._store.session() as session:
                if self._puts % self._sweep_every == 0:
                    session.execute(delete(OidcState).where(OidcState.expires_at <= now))
                session.execute(delete(OidcState).where(OidcState.key == key,
                                                        OidcState.expires_at <= now))
                session.execute(insert(OidcState).values(key=key, value=_text(value),
                                                         expires_at=now + ttl))
        except Duplicate:              # the store's name for an IntegrityError: a live value
            return False
        return True

    def get(self, key: str) -> Value | None:
        with self._store.read() as session:
            row = session.execute(select(OidcState.value, OidcState.expires_at)
                                  .where(OidcState.key == key)).first()
        if row is None or row.expires_at <= self._now():
            return None
        value = json.loads(row.value)
        return value if isinstance(value, dict) else None

    def cas(self, key: str, old: Value, new: Value | None, ttl: int) -> bool:
        with self._store.session() as session:
            match = (OidcState.key == key) & (OidcState.value == _text(old))
            if new is None:
                done = session.execute(delete(OidcState).where(match))
            else:
                done = session.execute(update(OidcState).where(match).values(
                    value=_text(new), expires_at=self._now() + ttl))
        return bool(getattr(done, "rowcount", 0) == 1)


# Compare-and-set in one Redis call: KEYS[1], ARGV = old text, new text ("" deletes), ttl.
_CAS = """
local cur = redis.call('GET', KEYS[1])
if cur ~= ARGV[1] then return 0 end
if ARGV[2] == '' then redis.call('DEL', KEYS[1]) else
  redis.call('SET', KEYS[1], ARGV[2], 'EX', tonumber(ARGV[3])) end
return 1
"""


class RedisState:
    """One Redis key per value (``{prefix}oidc:{key}``), expiring with it."""

    def __init__(self, client: Any, prefix: str = "cps:login:") -> None:
        self._redis = client
        self._prefix = prefix + "oidc:"
        self._cas = client.register_script(_CAS)

    def put(self, key: str, value: Value, ttl: int) -> bool:
        with redis_guard("oidc state"):
            return bool(self._redis.set(self._prefix + key, _text(value), ex=max(1, ttl),
                                        nx=True))

    def get(self, key: str) -> Value | None:
        with redis_guard("oidc state"):
            raw = self._redis.get(self._prefix + key)
        if raw is None:
            return None
        value = json.loads(raw)
        return value if isinstance(value, dict) else None

    def cas(self, key: str, old: Value, new: Value | None, ttl: int) -> bool:
        with redis_guard("oidc state"):
            return bool(self._cas(keys=[self._prefix + key],
                                  args=[_text(old), "" if new is None else _text(new),
                                        max(1, ttl)]))
