"""Deadline window maths: time zones, daylight-saving transitions, cron edge cases."""

from datetime import UTC, datetime

import pytest

from monitor.sla.windows import WindowError, last_deadlines, next_deadline, zone

BERLIN, NY, UTC_ = zone("Europe/Berlin"), zone("America/New_York"), zone("UTC")


def u(*a) -> datetime:
    return datetime(*a, tzinfo=UTC)


@pytest.mark.parametrize("cron,tz,now,prev,latest", [
    # plain daily deadline in UTC
    ("0 6 * * *", UTC_, u(2026, 5, 10, 7, 0), u(2026, 5, 9, 6), u(2026, 5, 10, 6)),
    # exactly at the deadline: that deadline counts as passed
    ("0 6 * * *", UTC_, u(2026, 5, 10, 6, 0), u(2026, 5, 9, 6), u(2026, 5, 10, 6)),
    # just before: the previous day's
    ("0 6 * * *", UTC_, u(2026, 5, 10, 5, 59), u(2026, 5, 8, 6), u(2026, 5, 9, 6)),
    # 06:00 Berlin in summer is 04:00 UTC, in winter 05:00 UTC
    ("0 6 * * *", BERLIN, u(2026, 7, 1, 12), u(2026, 6, 30, 4), u(2026, 7, 1, 4)),
    ("0 6 * * *", BERLIN, u(2026, 12, 1, 12), u(2026, 11, 30, 5), u(2026, 12, 1, 5)),
    # across spring-forward (2026-03-29 in Europe): the period is 23 hours long
    ("0 6 * * *", BERLIN, u(2026, 3, 29, 12), u(2026, 3, 28, 5), u(2026, 3, 29, 4)),
    # across fall-back (2026-10-25): 25 hours
    ("0 6 * * *", BERLIN, u(2026, 10, 25, 12), u(2026, 10, 24, 4), u(2026, 10, 25, 5)),
    # a wall time that happens twice (02:30 on fall-back night) is one deadline, the first one
    ("30 2 * * *", BERLIN, u(2026, 10, 25, 12), u(2026, 10, 24, 0, 30), u(2026, 10, 25, 0, 30)),
    # now between the two readings of 02:30: still the first one
    ("30 2 * * *", BERLIN, u(2026, 10, 25, 1, 0), u(2026, 10, 24, 0, 30), u(2026, 10, 25, 0, 30)),
    # a wall time that does not exist (02:30 on spring-forward night) is read with the old offset:
    # 02:30 CET = 01:30 UTC = 03:30 CEST
    ("30 2 * * *", BERLIN, u(2026, 3, 29, 12), u(2026, 3, 28, 1, 30), u(2026, 3, 29, 1, 30)),
    # US DST (2026-03-08) in New York: 09:00 EST = 14:00 UTC, 09:00 EDT = 13:00 UTC
    ("0 9 * * 1-5", NY, u(2026, 3, 9, 15), u(2026, 3, 6, 14), u(2026, 3, 9, 13)),
    # weekdays only: on Monday morning before 09:00 the latest deadline is Friday's
    ("0 9 * * 1-5", UTC_, u(2026, 5, 11, 8), u(2026, 5, 7, 9), u(2026, 5, 8, 9)),
    # hourly
    ("15 * * * *", UTC_, u(2026, 5, 10, 10, 20), u(2026, 5, 10, 9, 15), u(2026, 5, 10, 10, 15)),
    # monthly on the 31st skips short months
    ("0 0 31 * *", UTC_, u(2026, 5, 1), u(2026, 1, 31), u(2026, 3, 31)),
    # leap day only
    ("0 0 29 2 *", UTC_, u(2026, 5, 1), u(2020, 2, 29), u(2024, 2, 29)),
    # day-of-month and day-of-week both given: cron's OR
    ("0 12 1 * 0", UTC_, u(2026, 3, 9, 0), u(2026, 3, 1, 12), u(2026, 3, 8, 12)),
])
def test_last_deadlines(cron, tz, now, prev, latest):
    assert last_deadlines(cron, tz, now) == (prev, latest)


@pytest.mark.parametrize("cron,tz,now,nxt", [
    ("0 6 * * *", UTC_, u(2026, 5, 10, 6, 0), u(2026, 5, 11, 6)),
    ("0 6 * * *", BERLIN, u(2026, 10, 24, 12), u(2026, 10, 25, 5)),
    ("30 2 * * *", BERLIN, u(2026, 10, 24, 12), u(2026, 10, 25, 0, 30)),
    ("30 2 * * *", BERLIN, u(2026, 3, 28, 12), u(2026, 3, 29, 1, 30)),
])
def test_next_deadline(cron, tz, now, nxt):
    assert next_deadline(cron, tz, now) == nxt


@pytest.mark.parametrize("cron", ["", "0 6 * *", "61 * * * *", "0 25 * * *", "every day", "0 0 30 2 *"])
def test_bad_or_impossible_crons_are_errors(cron):
    with pytest.raises(WindowError):
        last_deadlines(cron, UTC_, u(2026, 5, 1))


def test_unknown_zone():
    with pytest.raises(WindowError, match="unknown time zone 'Mars/Olympus'"):
        zone("Mars/Olympus")
