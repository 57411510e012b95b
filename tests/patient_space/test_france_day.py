"""The record's calendar days are France's: late in the evening UTC it is already tomorrow in
Paris, and a patient there may date an entry today (the form's default) without it being
"in the future"."""

from __future__ import annotations

import datetime as dt

import pytest

from cps_login.patient_checks import HealthInput, Refused, check_health, today_in_france

UTC = dt.UTC


@pytest.mark.parametrize(("now", "day"), [
    (dt.datetime(2026, 11, 27, 22, 59, tzinfo=UTC), dt.date(2026, 11, 27)),   # 23:59 in Paris
    (dt.datetime(2026, 11, 27, 23, 30, tzinfo=UTC), dt.date(2026, 11, 28)),   # winter, UTC+1
    (dt.datetime(2026, 7, 14, 22, 15, tzinfo=UTC), dt.date(2026, 7, 15)),     # summer, UTC+2
    (dt.datetime(2026, 7, 14, 21, 59, tzinfo=UTC), dt.date(2026, 7, 14)),
])
def test_today_in_france(now: dt.datetime, day: dt.date) -> None:
    assert today_in_france(now) == day


def test_an_entry_dated_today_in_paris_at_midnight_utc_minus_half_an_hour() -> None:
    now = dt.datetime(2026, 11, 27, 23, 30, tzinfo=UTC)
    entry = HealthInput("vaccination", "ROR", dt.date(2026, 11, 28))
    check_health(entry, today_in_france(now))                  # today in Paris: accepted
    with pytest.raises(Refused):
        check_health(HealthInput("vaccination", "ROR", dt.date(2026, 11, 29)),
                     today_in_france(now))
