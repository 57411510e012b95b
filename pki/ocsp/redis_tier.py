"""Optional shared tier: pre-signed records in Redis, so several responder processes (and
restarts) sign each record once. One hash per (CA, responder certificate): a record signed by a
previous responder key can never be served with the new responder certificate.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

import redis


class RedisTier:
    def __init__(self, url: str, prefix: str = "cps:") -> None:
        self.client: Any = redis.Redis.from_url(url, socket_timeout=5)
        self.prefix = prefix

    def key(self, slug: str, responder_serial: str) -> str:
        return f"{self.prefix}ocsp:{slug}:{responder_serial}"

    def load(self, slug: str, responder_serial: str) -> dict[bytes, bytes]:
        out: dict[bytes, bytes] = {}
        for field, value in self.client.hscan_iter(self.key(slug, responder_serial), count=5000):
            out[bytes(field)] = bytes(value)
        return out

    def store(self, slug: str, responder_serial: str, records: Mapping[bytes, bytes],
              expires: dt.datetime) -> None:
        key = self.key(slug, responder_serial)
        pipe = self.client.pipeline(transaction=False)
        items = list(records.items())
        for i in range(0, len(items), 1000):
            pipe.hset(key, mapping=dict(items[i:i + 1000]))
        pipe.expireat(key, int(expires.timestamp()))
        pipe.execute()

    def delete_prefix(self) -> None:
        """Remove every key under this tier's prefix (tests, decommissioning)."""
        for key in self.client.scan_iter(match=f"{self.prefix}ocsp:*", count=1000):
            self.client.delete(key)
