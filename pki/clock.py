"""Injected time: everything that computes validity, nextUpdate or a TTL takes a Clock."""

from __future__ import annotations

import datetime as dt
from typing import Protocol


class Clock(Protocol):
    def now(self) -> dt.datetime:
        """The current instant, timezone-aware UTC."""
        ...


class SystemClock:
    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)


class FixedClock:
    """A clock for tests: stands still until moved."""

    def __init__(self, at: dt.datetime) -> None:
        if at.tzinfo is None:
            raise ValueError("FixedClock needs a timezone-aware datetime")
        self._at = at

    def now(self) -> dt.datetime:
        return self._at

    def advance(self, delta: dt.timedelta) -> None:
        self._at = self._at + delta


SYSTEM_CLOCK = SystemClock()


def utc_seconds(at: dt.datetime) -> dt.datetime:
    """Truncate to whole seconds (X.509 times carry no fractions)."""
    return at.astimezone(dt.UTC).replace(microsecond=0)
