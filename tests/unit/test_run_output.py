"""What an attempt's output becomes: the head/tail window (`capture`), and how people read it
(`runlogs.render`, `cli.output`)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from dfjob import protocol
from dfjob.capture import Capture
from dfjob.cli import output
from dfjob.runlogs import render


def _add(capture: Capture, count: int, width: int = 9) -> None:
    for number in range(count):
        capture.add("stdout", f"{number:0{width}d}")  # width + 1 bytes with its newline


def _sent(message: protocol.Log | None) -> list[str]:
    assert message is not None
    return [line[3] for line in message.lines]


def test_output_within_the_limit_is_kept_whole() -> None:
    capture = Capture(max_bytes=1000)
    capture.begin(run_id=7)
    _add(capture, 50)  # 500 bytes

    message = capture.take()

    assert message is not None
    assert (message.run_id, message.log_bytes, message.dropped_bytes) == (7, 500, 0)
    assert _sent(message) == [f"{number:09d}" for number in range(50)]
    assert {line[4] for line in message.lines} == {"head"}


def test_a_flood_keeps_the_first_half_and_the_last_half_of_the_limit() -> None:
    capture = Capture(max_bytes=1000)
    capture.begin(run_id=1)
    _add(capture, 10_000)  # 100 kB

    message = capture.end()

    lines = _sent(message)
    assert message is not None
    assert lines[:50] == [f"{number:09d}" for number in range(50)]  # the head: 500 bytes
    assert lines[50:] == [f"{number:09d}" for number in range(9950, 10_000)]  # the tail: 500 bytes
    assert (message.log_bytes, message.dropped_bytes) == (1000, 99_000)
    assert message.drop_tail_before is None  # nothing sent yet had to be taken back


def test_tail_lines_already_sent_are_taken_back_by_sequence_number() -> None:
    capture = Capture(max_bytes=1000)
    capture.begin(run_id=1)
    _add(capture, 80)  # head full (50 lines), 30 lines of tail
    first = capture.take()
    assert first is not None
    assert [line[4] for line in first.lines].count("tail") == 30

    _add(capture, 40)  # the tail holds 50 lines: 20 of those sent fall out
    second = capture.take()

    assert second is not None
    assert second.drop_tail_before == 51 + 20  # seq is 1-based: lines 51..70 leave
    assert second.dropped_bytes == 200
    assert [line[0] for line in second.lines] == list(range(81, 121))


def test_nothing_is_kept_between_attempts() -> None:
    capture = Capture(max_bytes=1000)
    capture.add("stdout", "before any attempt")
    assert capture.take() is None
    capture.begin(run_id=3)
    capture.add("stdout", "during")
    capture.end()
    capture.add("stdout", "after")
    assert capture.take() is None


def _line(seq: int, part: str) -> dict[str, object]:
    return {"seq": seq, "at": "2026-01-01T10:00:00.250000+00:00", "stream": "stdout", "text": f"l{seq}", "part": part}


def test_render_marks_where_the_middle_was_cut_and_escapes_control_characters() -> None:
    lines = [_line(1, "head"), _line(2, "head"), _line(90, "tail")]
    lines[0]["text"] = "\x1b[2Jcleared"
    log = {"lines": lines, "truncated": True, "dropped_bytes": 12_345, "status": "success"}

    text = render(log)

    assert text[0] == "10:00:00.250 stdout \\x1b[2Jcleared"
    assert text[2] == "[... 12,345 bytes of output cut here: runs.log_max_bytes keeps the start and the end ...]"
    assert text[3].endswith("l90")


def test_render_of_a_run_without_output() -> None:
    assert render({"lines": [], "truncated": False, "dropped_bytes": 0, "status": "in_progress"}) == ["(no output yet)"]
    assert render({"lines": [], "truncated": False, "dropped_bytes": 0, "status": "success"}) == ["(no output)"]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.35, "0.35s"), (1.24, "1.2s"), (184, "3m 04s"), (7500, "2h 05m"), (3 * 86400 + 4 * 3600, "3d 4h")],
)
def test_durations_read_like_people_say_them(seconds: float, text: str) -> None:
    assert output.span(seconds) == text


def test_times_are_relative() -> None:
    now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    assert output.when((now - timedelta(minutes=3, seconds=10)).isoformat(), now) == "3m ago"
    assert output.when((now + timedelta(hours=2, minutes=1)).isoformat(), now) == "in 2h"
    assert output.when(now.isoformat(), now) == "just now"
    assert output.when(None, now) == "-"


def test_tables_say_how_many_rows_were_left_out() -> None:
    rows = [{"id": number, "ok": number % 2 == 0, "error": None} for number in range(3)]
    columns = [("ID", "id", output.plain), ("OK", "ok", output.yes_no), ("ERROR", "error", output.plain)]

    text = output.table(rows, columns, total=1234)

    assert text.splitlines() == ["ID  OK   ERROR", "0   yes  -", "1   no   -", "2   yes  -", "showing 3 of 1,234"]
    assert output.table(rows, columns, total=3).splitlines()[-1] == "2   yes  -"
    assert output.table(rows, columns, total=200_001, cap=200_000).endswith("showing 3 of more than 200,000")


def test_sizes() -> None:
    assert [output.size(value) for value in (512, 1536, 50 * 1024 * 1024)] == ["512 B", "1.5 KB", "50.0 MB"]
