"""Durations, cron expressions and the next time a data flow is due."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from dfjob.errors import DfjobError
from dfjob.schedule import Schedule, format_duration, parse_cron, parse_duration


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# -- durations ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("1s", 1), ("5m", 300), ("2h", 7200), ("1d", 86400), ("30d", 30 * 86400), ("3600s", 3600)],
)
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text", ["0s", "0m", "5x", "", "-1m", "1.5h", "5", "m", "5 m", "5mm", "1h30m", "5M", "\u0663s", "+5m", "1e3s"]
)
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(DfjobError, match="invalid duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"), [(90, "90s"), (300, "5m"), (7200, "2h"), (86400, "1d"), (3660, "61m"), (86401, "86401s")]
)
def test_format_duration_is_the_shortest_exact_form(seconds: int, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize("seconds", [1, 59, 60, 61, 90, 3599, 3600, 5400, 86399, 86400, 90000, 172800, 366 * 86400])
def test_format_duration_round_trips(seconds: int) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


# -- cron -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "expression",
    [
        "",
        "* * * *",
        "* * * * * *",
        "@dayly",
        "abc",
        "\u0661 * * * *",
        "61 * * * *",
        "* 24 * * *",
        "* * 32 * *",
        "* * 0 * *",
        "* * * 13 *",
        "* * * * 8",
        "* * * * 5-1",
        "*/0 * * * *",
        "* * * * */0",
        "* * * * funday",
        "x * * * *",
    ],
)
def test_parse_cron_refuses(expression: str) -> None:
    with pytest.raises(DfjobError, match="invalid cron expression"):
        parse_cron(expression)


@pytest.mark.parametrize(
    ("alias", "expected"),
    [
        ("@hourly", "2026-03-04T11:00:00"),
        ("@daily", "2026-03-05T00:00:00"),
        ("@midnight", "2026-03-05T00:00:00"),
        ("@weekly", "2026-03-08T00:00:00"),
        ("@monthly", "2026-04-01T00:00:00"),
        ("@yearly", "2027-01-01T00:00:00"),
        ("@annually", "2027-01-01T00:00:00"),
    ],
)
def test_cron_aliases_fire_as_crontab_reads_them(alias: str, expected: str) -> None:
    assert Schedule(cron=alias).next_after(at("2026-03-04T10:30:00"), previous=None) == at(expected)


def test_a_cron_time_zone_moves_the_fire_times_with_it() -> None:
    berlin = Schedule(cron="0 3 * * *", tz="Europe/Berlin")
    assert berlin.next_after(at("2026-01-10T00:00:00"), previous=None) == at("2026-01-10T02:00:00")  # CET, UTC+1
    assert berlin.next_after(at("2026-07-10T00:00:00"), previous=None) == at("2026-07-10T01:00:00")  # CEST, UTC+2
    with pytest.raises(DfjobError, match="unknown time zone"):
        Schedule(cron="0 3 * * *", tz="Mars/Olympus")


@pytest.mark.parametrize(
    ("cron", "start", "expected"),
    [
        # A daily 02:30 in Berlin: the spring-forward day has no 02:30, it runs once when the clocks jump;
        # the fall-back day has two, it runs once, the first time.
        ("30 2 * * *", "2026-03-28T00:00:00", ["2026-03-28T01:30:00", "2026-03-29T01:00:00", "2026-03-30T00:30:00"]),
        ("30 2 * * *", "2026-10-24T00:00:00", ["2026-10-24T00:30:00", "2026-10-25T00:30:00", "2026-10-26T01:30:00"]),
        # Hourly follows real time: the skipped hour does not run, the repeated hour runs twice.
        ("0 * * * *", "2026-03-29T00:30:00", ["2026-03-29T01:00:00", "2026-03-29T02:00:00"]),
        ("0 * * * *", "2026-10-24T23:30:00", ["2026-10-25T00:00:00", "2026-10-25T01:00:00", "2026-10-25T02:00:00"]),
    ],
)
def test_daylight_saving_changes_as_cron_applies_them(cron: str, start: str, expected: list[str]) -> None:
    schedule, now, fires = Schedule(cron=cron, tz="Europe/Berlin"), at(start), []
    for _ in expected:
        fire = schedule.next_after(now, previous=None)
        assert fire is not None
        fires.append(fire)
        now = fire
    assert fires == [at(text) for text in expected]


def test_slots_and_the_latest_slot_after_downtime() -> None:
    hourly = Schedule(cron="0 * * * *")
    assert hourly.slots(at("2026-01-01T01:00:00"), at("2026-01-01T03:30:00"), 100) == [
        at("2026-01-01T01:00:00"), at("2026-01-01T02:00:00"), at("2026-01-01T03:00:00"),
    ]  # fmt: skip
    assert hourly.slots(at("2026-01-01T01:00:00"), at("2026-01-09T00:00:00"), 2) == [
        at("2026-01-01T01:00:00"), at("2026-01-01T02:00:00"),
    ]  # fmt: skip
    assert hourly.latest_slot(at("2026-01-01T01:00:00"), at("2026-02-01T07:45:00")) == at("2026-02-01T07:00:00")
    every = Schedule(every_seconds=600)
    assert every.latest_slot(at("2026-01-01T00:05:00"), at("2026-01-01T01:00:00")) == at("2026-01-01T00:55:00")
    assert every.slots(at("2026-01-01T00:05:00"), at("2026-01-01T00:30:00"), 100)[-1] == at("2026-01-01T00:25:00")


def test_schedule_refuses_a_bad_cron_and_both_kinds() -> None:
    with pytest.raises(DfjobError, match="invalid cron expression"):
        Schedule(cron="not cron")
    with pytest.raises(DfjobError):
        Schedule(every_seconds=60, cron="* * * * *")


def test_describe() -> None:
    assert Schedule(every_seconds=300).describe() == "every 5m"
    assert Schedule(cron="0 3 * * *").describe() == "cron 0 3 * * *"
    assert Schedule().describe() is None


# -- first run ------------------------------------------------------------------------------------


def test_every_is_first_due_at_once() -> None:
    now = at("2026-03-04T05:06:07.123456")
    assert Schedule(every_seconds=3600).first_run_at(now) == now


def test_cron_is_first_due_at_its_next_fire_time() -> None:
    now = at("2026-03-04T10:00:00")
    assert Schedule(cron="0 3 * * *").first_run_at(now) == at("2026-03-05T03:00:00")
    assert Schedule(cron="30 11 * * *").first_run_at(now) == at("2026-03-04T11:30:00")


def test_no_schedule_has_no_run_time() -> None:
    now = at("2026-03-04T10:00:00")
    assert Schedule().first_run_at(now) is None
    assert Schedule().next_after(now, previous=now) is None


# -- next run -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cron", "now", "expected"),
    [
        ("30 23 * * *", "2026-01-01T23:45:00", "2026-01-02T23:30:00"),  # day boundary
        ("0 0 * * *", "2026-01-31T23:59:59", "2026-02-01T00:00:00"),  # month boundary
        ("0 0 1 * *", "2026-01-31T12:00:00", "2026-02-01T00:00:00"),  # first of the month
        ("0 0 1 1 *", "2026-06-15T00:00:00", "2027-01-01T00:00:00"),  # year boundary
        ("59 23 31 12 *", "2026-12-31T23:59:30", "2027-12-31T23:59:00"),  # just missed the year's slot
        ("0 12 29 2 *", "2026-03-01T00:00:00", "2028-02-29T12:00:00"),  # leap day
        ("0 0 31 * *", "2026-04-01T00:00:00", "2026-05-31T00:00:00"),  # April has no 31st
        ("*/15 * * * *", "2026-01-01T10:07:00", "2026-01-01T10:15:00"),
    ],
)
def test_cron_next_after(cron: str, now: str, expected: str) -> None:
    assert Schedule(cron=cron).next_after(at(now), previous=None) == at(expected)


def test_cron_next_is_strictly_after_now() -> None:
    now = at("2026-01-01T10:00:00")
    assert Schedule(cron="0 * * * *").next_after(now, previous=now) == at("2026-01-01T11:00:00")


def test_cron_next_is_in_utc() -> None:
    fire = Schedule(cron="0 3 * * *").next_after(at("2026-07-01T00:00:00"), previous=None)
    assert fire is not None
    assert fire.utcoffset() == timedelta(0)
    assert fire == at("2026-07-01T03:00:00")


@pytest.mark.parametrize(
    ("weekday", "expected"),
    [
        ("0", "2026-01-04"),  # crontab: 0 is Sunday
        ("7", "2026-01-04"),  # ... and so is 7
        ("sun", "2026-01-04"),
        ("1", "2026-01-05"),  # Monday
        ("5", "2026-01-02"),  # Friday
        ("6", "2026-01-03"),  # Saturday
        ("mon-fri", "2026-01-02"),
    ],
)
def test_cron_weekdays_are_numbered_as_in_crontab(weekday: str, expected: str) -> None:
    thursday_noon = at("2026-01-01T12:00:00")
    assert Schedule(cron=f"0 0 * * {weekday}").next_after(thursday_noon, previous=None) == at(f"{expected}T00:00:00")


def test_cron_weekday_range_is_monday_to_friday() -> None:
    schedule, now, days = Schedule(cron="0 9 * * 1-5"), at("2026-01-01T12:00:00"), []
    for _ in range(6):
        fire = schedule.next_after(now, previous=None)
        assert fire is not None
        days.append(fire.strftime("%a"))
        now = fire
    assert days == ["Fri", "Mon", "Tue", "Wed", "Thu", "Fri"]


def test_cron_day_of_month_or_weekday_as_in_crontab() -> None:
    # Both restricted: the 13th of any month OR any Friday (crontab), not only Friday the 13th.
    schedule, now, fires = Schedule(cron="0 0 13 * 5"), at("2026-01-01T12:00:00"), []
    for _ in range(4):
        fire = schedule.next_after(now, previous=None)
        assert fire is not None
        fires.append(fire.date().isoformat())
        now = fire
    assert fires == ["2026-01-02", "2026-01-09", "2026-01-13", "2026-01-16"]


def test_interval_keeps_its_cadence_and_skips_missed_slots() -> None:
    every_5m = Schedule(every_seconds=300)
    previous = at("2026-01-01T10:00:00")
    # The heartbeat came late: 10:05, 10:10 and 10:15 are gone, not replayed.
    assert every_5m.next_after(at("2026-01-01T10:17:30"), previous=previous) == at("2026-01-01T10:20:00")
    assert every_5m.next_after(at("2026-01-01T10:01:00"), previous=previous) == at("2026-01-01T10:05:00")


def test_interval_next_is_strictly_after_now() -> None:
    every_5m = Schedule(every_seconds=300)
    previous = at("2026-01-01T10:00:00")
    assert every_5m.next_after(at("2026-01-01T10:20:00"), previous=previous) == at("2026-01-01T10:25:00")
    assert every_5m.next_after(previous, previous=previous) == at("2026-01-01T10:05:00")


def test_interval_without_previous_counts_from_now() -> None:
    now = at("2026-01-01T10:00:00.500000")
    assert Schedule(every_seconds=90).next_after(now, previous=None) == now + timedelta(seconds=90)


def test_interval_across_day_and_year_boundaries() -> None:
    daily = Schedule(every_seconds=86400)
    previous = at("2026-12-30T06:00:00")
    assert daily.next_after(at("2026-12-31T23:00:00"), previous=previous) == at("2027-01-01T06:00:00")
    assert daily.next_after(at("2027-03-03T07:00:00"), previous=previous) == at("2027-03-04T06:00:00")
