"""Deadline window maths: pure functions over a cron expression, a time zone and `now`.

A deadline cron is read in its time zone's wall clock, like cron itself. Two daylight-saving
rules make every deadline exactly one instant:
- a wall-clock time that happens twice (clocks go back) is its first occurrence;
- a wall-clock time that does not exist (clocks go forward) is read with the offset in force
  before the change, so 02:30 on a spring-forward night in Europe/Berlin is 03:30 CEST.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from croniter.croniter import CroniterError

# far enough back for a yearly cron whose day is missing in most years (Feb 29 needs 8 years)
_MAX_STEPS = 3000


class WindowError(ValueError):
    """A cron expression or time zone that cannot be used."""


def zone(name: str) -> tzinfo:
    if name.upper() == "UTC":
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise WindowError(f"unknown time zone {name!r} (use an IANA name such as Europe/Berlin)") from None


def check_cron(expr: str) -> str:
    if not isinstance(expr, str) or not croniter.is_valid(expr):
        raise WindowError(f"invalid cron expression {expr!r} (five fields, e.g. '0 6 * * *')")
    return expr


def _instant(wall: datetime, tz: tzinfo) -> datetime:
    """A naive wall-clock time in tz as an aware UTC instant (fold=0, see the module doc)."""
    return wall.replace(tzinfo=tz, fold=0).astimezone(UTC)


def _wall(now: datetime, tz: tzinfo) -> datetime:
    return now.astimezone(tz).replace(tzinfo=None)


def last_deadlines(expr: str, tz: tzinfo, now: datetime) -> tuple[datetime, datetime]:
    """(previous, latest): the two latest deadline instants at or before `now`, in UTC.

    The period a deadline judges is [previous, latest): the run due in it must have succeeded.
    """
    check_cron(expr)
    # start an hour ahead in wall-clock time: after clocks go back, wall time runs behind
    it = croniter(expr, _wall(now, tz) + timedelta(hours=2), ret_type=datetime)
    found: list[datetime] = []
    for _ in range(_MAX_STEPS):
        try:
            at = _instant(it.get_prev(), tz)
        except CroniterError:
            break
        if at > now or (found and at >= found[-1]):
            continue  # not yet due, or the second reading of a repeated wall-clock time
        found.append(at)
        if len(found) == 2:
            return found[1], found[0]
    raise WindowError(f"cron expression {expr!r} has no two deadlines before {now.isoformat()}")


def next_deadline(expr: str, tz: tzinfo, now: datetime) -> datetime:
    """The first deadline instant after `now`, in UTC."""
    check_cron(expr)
    it = croniter(expr, _wall(now, tz) - timedelta(hours=2), ret_type=datetime)
    for _ in range(_MAX_STEPS):
        try:
            at = _instant(it.get_next(), tz)
        except CroniterError:
            break
        if at > now:
            return at
    raise WindowError(f"cron expression {expr!r} has no deadline after {now.isoformat()}")
