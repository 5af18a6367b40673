"""Durations (`90s`, `5m`, `2h`, `1d`), cron expressions, and the next time a data flow is due.

Date arithmetic comes from APScheduler's triggers, not from hand-written calendar math.
The heartbeat pass that uses these lives in `heartbeat.py`, so that this module stays free of the
database and `config` can use it to check durations.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dfjob.errors import DfjobError

if TYPE_CHECKING:
    # Imported where used: runner processes check durations through `config` but never need cron.
    from apscheduler.triggers.base import BaseTrigger

_DURATION = re.compile(r"([0-9]+)([smhdw])")  # not \d: that also matches non-ASCII digits
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
MAX_DURATION = 366 * 86400


def parse_duration(text: str) -> int:
    """Seconds in a duration such as `90s`, `5m`, `2h`, `1d` or `1w`; refuses anything else."""
    match = _DURATION.fullmatch(text.strip())
    if not match:
        raise DfjobError(f"invalid duration {text!r} (a whole number with s, m, h, d or w, e.g. 90s, 5m, 2h, 1d, 1w)")
    seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if not 1 <= seconds <= MAX_DURATION:
        raise DfjobError(f"invalid duration {text!r} (must be between 1s and 366d)")
    return seconds


def format_duration(seconds: int) -> str:
    """The shortest exact DUR for a number of seconds: 300 -> `5m`, 90 -> `90s`."""
    for unit in ("w", "d", "h", "m"):
        size = _UNIT_SECONDS[unit]
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


_CRON_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


def _cron_day(text: str) -> int:
    if text in _CRON_WEEKDAYS:
        return _CRON_WEEKDAYS.index(text)
    if text.isascii() and text.isdigit() and int(text) <= 7:
        return int(text)
    raise ValueError(f"invalid weekday {text!r}")


def _weekday_names(field: str) -> str:
    """crontab numbers weekdays from 0 = Sunday (7 too), APScheduler 3 from 0 = Monday: spell them out."""
    if field == "*":
        return field
    days: set[int] = set()
    for part in field.lower().split(","):
        span, slash, step = part.partition("/")
        if slash and not (step.isascii() and step.isdigit() and int(step) > 0):
            raise ValueError(f"invalid step in {part!r}")
        first_text, dash, last_text = ("0", "-", "6") if span == "*" else span.partition("-")
        first = _cron_day(first_text)
        last = _cron_day(last_text) if dash else (6 if slash else first)
        if first > last:
            raise ValueError(f"invalid weekday range {span!r}")
        days.update(day % 7 for day in range(first, last + 1, int(step) if slash else 1))
    return ",".join(_CRON_WEEKDAYS[day] for day in sorted(days))


ALIASES = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}


def cron_fields(expression: str) -> list[str]:
    """The five fields of a cron expression or alias, or DfjobError."""
    if not expression.isascii():
        raise DfjobError(f"invalid cron expression {expression!r} (ASCII digits, names and * , - / only)")
    fields = ALIASES.get(expression.strip().lower(), expression).split()
    if len(fields) != 5:
        raise DfjobError(
            f"invalid cron expression {expression!r} (five fields: minute hour day month weekday, or @hourly,"
            " @daily, @weekly, @monthly, @yearly)"
        )
    return fields


def parse_cron(expression: str) -> BaseTrigger:
    """A cron expression (five fields or an alias) as an APScheduler trigger over wall-clock
    times (read as UTC); refuses anything else.

    Read as crontab reads it: weekday 0 and 7 are Sunday, and when both the day-of-month and the
    weekday field are restricted, a time matching either one fires (APScheduler 3 alone differs on both).
    """
    from apscheduler.triggers.combining import OrTrigger
    from apscheduler.triggers.cron import CronTrigger

    minute, hour, day, month, weekday = cron_fields(expression)
    try:
        weekdays = _weekday_names(weekday)

        def cron(day_field: str, weekday_field: str) -> CronTrigger:
            return CronTrigger(
                minute=minute, hour=hour, day=day_field, month=month, day_of_week=weekday_field, timezone=UTC
            )

        if day.startswith("*") or weekday.startswith("*"):
            return cron(day, weekdays)
        return OrTrigger([cron(day, "*"), cron("*", weekdays)])
    except ValueError as exc:
        raise DfjobError(f"invalid cron expression {expression!r}: {exc}") from None


def check_tz(name: str) -> str:
    """An IANA time zone name (`Europe/Berlin`), or DfjobError."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise DfjobError(f"unknown time zone {name!r} (an IANA name such as Europe/Berlin or UTC)") from None
    return name


def _first_valid_instant(wall: datetime, zone: ZoneInfo) -> datetime:
    """For a wall-clock time that does not exist (skipped by a daylight-saving change): the instant
    the clocks jumped, the first valid time after it (cron runs such a job then)."""
    low = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)  # read with the offset after the change
    high = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)  # read with the offset before it
    low, high = min(low, high), max(low, high)
    while high - low > timedelta(seconds=1):
        middle = low + (high - low) / 2
        if middle.astimezone(zone).replace(tzinfo=None) < wall:
            low = middle
        else:
            high = middle
    return high.replace(microsecond=0)


def _instants(wall: datetime, zone: ZoneInfo, fixed_time: bool) -> list[datetime]:
    """The instants a cron wall-clock time stands for in `zone`, as cron runs them.

    A job at a fixed time (its minute and hour fields are not wildcards) runs once on a
    daylight-saving day: a time skipped in spring runs when the clocks jump, a time repeated in
    autumn runs the first time. A job that runs more often than hourly follows real time: skipped
    times do not run, repeated ones run twice.
    """
    first = wall.replace(tzinfo=zone, fold=0)
    if first.astimezone(UTC).astimezone(zone).replace(tzinfo=None) != wall:  # skipped
        return [_first_valid_instant(wall, zone)] if fixed_time else []
    earlier, later = first.astimezone(UTC), wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    if earlier != later and not fixed_time:  # repeated
        return [earlier, later]
    return [earlier]


@dataclass(frozen=True)
class Schedule:
    """When a data flow is due: every N seconds, or on a cron expression in a time zone (UTC by default)."""

    every_seconds: int | None = None
    cron: str | None = None
    tz: str | None = None

    def __post_init__(self) -> None:
        if self.every_seconds is not None and self.cron is not None:
            raise DfjobError("a schedule is either --every or --cron, not both")
        if self.cron is not None:
            parse_cron(self.cron)
        if self.tz is not None:
            check_tz(self.tz)

    @property
    def is_set(self) -> bool:
        return self.every_seconds is not None or self.cron is not None

    def describe(self) -> str | None:
        """`every 5m`, `cron 0 3 * * *`, or None."""
        if self.every_seconds is not None:
            return f"every {format_duration(self.every_seconds)}"
        if self.cron is not None:
            return f"cron {self.cron}"
        return None

    def first_run_at(self, now: datetime) -> datetime | None:
        """An `--every` flow is due at once; a `--cron` flow at its next fire time."""
        if self.every_seconds is not None:
            return now
        return self.next_after(now, previous=None)

    def next_after(self, now: datetime, previous: datetime | None) -> datetime | None:
        """The first fire time strictly after `now`.

        An interval keeps its cadence from `previous` (a slot on its grid), so a 5m flow stays on
        the grid it started on.
        """
        if self.every_seconds is not None:
            anchor = previous or now
            steps = max(0, int((now - anchor) / timedelta(seconds=self.every_seconds))) + 1
            fire = anchor + steps * timedelta(seconds=self.every_seconds)
            while fire <= now:
                fire += timedelta(seconds=self.every_seconds)
            return fire
        if self.cron is None:
            return None
        for fire in self._cron_instants(now - timedelta(hours=3)):
            if fire > now:
                return fire
        return None

    def slots(self, first: datetime, end: datetime, limit: int) -> list[datetime]:
        """Fire times from `first` (itself a fire time) to `end`, oldest first, at most `limit`."""
        found: list[datetime] = []
        fire: datetime | None = first
        while fire is not None and fire <= end and len(found) < limit:
            found.append(fire)
            fire = self.next_after(fire, previous=first)
        return found

    def latest_slot(self, first: datetime, end: datetime) -> datetime | None:
        """The last fire time from `first` (a fire time) to `end`: the one slot a flow that does
        not catch up runs after downtime."""
        if first > end:
            return None
        if self.every_seconds is not None:
            step = timedelta(seconds=self.every_seconds)
            return first + int((end - first) / step) * step
        latest = first
        # Look back over growing windows, so that a long downtime costs a few steps, not one per slot.
        for window in (timedelta(hours=2), timedelta(days=2), timedelta(days=63), timedelta(days=800)):
            start = max(first, end - window)
            found = self.slots_between(start, end)
            if found:
                return max(latest, found[-1])
        return latest

    def slots_between(self, start: datetime, end: datetime) -> list[datetime]:
        """Every cron fire time in [start, end] (for cron schedules; a few thousand at most)."""
        found: list[datetime] = []
        for fire in self._cron_instants(start - timedelta(hours=3)):
            if fire > end or len(found) > 10_000:
                break
            if fire >= start:
                found.append(fire)
        return found

    def _cron_instants(self, after: datetime) -> Iterator[datetime]:
        """Cron fire instants from about `after` on, in order (see `_instants`)."""
        if self.cron is None:
            return
        trigger = parse_cron(self.cron)
        minute, hour = cron_fields(self.cron)[:2]
        fixed_time = not (minute.startswith("*") or hour.startswith("*"))
        zone = ZoneInfo(self.tz or "UTC")
        wall = after.astimezone(zone).replace(tzinfo=None)
        last: datetime | None = None
        while True:
            fire = trigger.get_next_fire_time(None, wall.replace(tzinfo=UTC) + timedelta(microseconds=1))
            if fire is None:
                return
            wall = fire.replace(tzinfo=None)
            for instant in _instants(wall, zone, fixed_time):
                if last is None or instant > last:
                    last = instant
                    yield instant
