"""Durations (`90s`, `5m`, `2h`, `1d`), cron expressions, and the next time a data flow is due.

Date arithmetic comes from APScheduler's triggers, not from hand-written calendar math.
The heartbeat pass that uses these lives in `heartbeat.py`, so that this module stays free of the
database and `config` can use it to check durations.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from dfjob.errors import DfjobError

if TYPE_CHECKING:
    # Imported where used: runner processes check durations through `config` but never need cron.
    from apscheduler.triggers.base import BaseTrigger
    from apscheduler.triggers.cron import CronTrigger

_DURATION = re.compile(r"([0-9]+)([smhd])")  # not \d: that also matches non-ASCII digits
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_DURATION = 366 * 86400


def parse_duration(text: str) -> int:
    """Seconds in a duration such as `90s`, `5m`, `2h` or `1d`; refuses anything else."""
    match = _DURATION.fullmatch(text.strip())
    if not match:
        raise DfjobError(f"invalid duration {text!r} (use a whole number with s, m, h or d, e.g. 90s, 5m, 2h, 1d)")
    seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if not 1 <= seconds <= MAX_DURATION:
        raise DfjobError(f"invalid duration {text!r} (must be between 1s and 366d)")
    return seconds


def format_duration(seconds: int) -> str:
    """The shortest exact DUR for a number of seconds: 300 -> `5m`, 90 -> `90s`."""
    for unit in ("d", "h", "m"):
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


def parse_cron(expression: str) -> BaseTrigger:
    """A five-field cron expression in UTC as an APScheduler trigger; refuses anything else.

    Read as crontab reads it: weekday 0 and 7 are Sunday, and when both the day-of-month and the
    weekday field are restricted, a time matching either one fires (APScheduler 3 alone differs on both).
    """
    from apscheduler.triggers.combining import OrTrigger
    from apscheduler.triggers.cron import CronTrigger

    fields = expression.split()
    if not expression.isascii():
        raise DfjobError(f"invalid cron expression {expression!r} (ASCII digits, names and * , - / only)")
    if len(fields) != 5:
        raise DfjobError(f"invalid cron expression {expression!r} (five fields: minute hour day month weekday)")
    minute, hour, day, month, weekday = fields
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


@dataclass(frozen=True)
class Schedule:
    """When a data flow is due: every N seconds, or on a cron expression (UTC)."""

    every_seconds: int | None = None
    cron: str | None = None

    def __post_init__(self) -> None:
        if self.every_seconds is not None and self.cron is not None:
            raise DfjobError("a schedule is either --every or --cron, not both")
        if self.cron is not None:
            parse_cron(self.cron)

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
        """The first fire time strictly after `now`; missed slots are not replayed.

        An interval keeps its cadence from `previous` (the slot just served), so a 5m flow stays
        on the grid it started on.
        """
        if self.every_seconds is not None:
            start = previous or now
            from apscheduler.triggers.interval import IntervalTrigger

            trigger = IntervalTrigger(seconds=self.every_seconds, start_date=start, timezone=UTC)
        elif self.cron is not None:
            trigger = parse_cron(self.cron)
        else:
            return None
        fire: datetime | None = trigger.get_next_fire_time(None, now + timedelta(microseconds=1))
        return fire.astimezone(UTC) if fire is not None else None
