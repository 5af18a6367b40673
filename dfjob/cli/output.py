"""Text output for people: tables with relative times ("3m ago", "in 2h"), durations (`1.2s`,
`3m 04s`), `yes`/`no`, a "showing 50 of 1,234" line when rows were cut, and every value from user
data escaped so that no control character reaches the terminal. `--json` output is left alone."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from dfjob import clock
from dfjob.text import printable

Cell = Callable[[Any], str]


def when(value: str | None, now: datetime | None = None) -> str:
    """An ISO 8601 time as people say it: `3m ago`, `in 2h`, `just now`."""
    if not value:
        return "-"
    moment = clock.parse_iso(value)
    seconds = ((now or clock.now()) - moment).total_seconds()
    if abs(seconds) < 1:
        return "just now"
    text = span(abs(seconds), coarse=True)
    return f"{text} ago" if seconds > 0 else f"in {text}"


def span(seconds: float, coarse: bool = False) -> str:
    """A length of time: `0.35s`, `1.2s`, `3m 04s`, `2h 05m`, `3d 4h`; `coarse`: one unit (`3m`)."""
    if seconds < 60:
        if coarse:
            return f"{int(seconds)}s"
        return f"{seconds:.2f}s" if seconds < 1 else f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if coarse:
        return f"{days}d" if days else f"{hours}h" if hours else f"{minutes}m"
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s"


def duration_ms(value: int | None) -> str:
    return "-" if value is None else span(value / 1000)


def yes_no(value: Any) -> str:
    return "yes" if value else "no"


def plain(value: Any) -> str:
    """Any value as one safe line."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return yes_no(value)
    if isinstance(value, (list, tuple)):
        return ", ".join(plain(item) for item in value) or "-"
    return printable(str(value))


def short(limit: int) -> Cell:
    """A value cut to `limit` characters (errors in a table)."""

    def cell(value: Any) -> str:
        text = plain(value)
        return text if len(text) <= limit else text[: limit - 1] + "…"

    return cell


def size(count: float) -> str:
    """A number of bytes: `512 B`, `1.5 KB`, `12.0 MB`."""
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1024 or unit == "GB":
            return f"{int(count)} B" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def table(
    rows: Sequence[dict[str, Any]],
    columns: Sequence[tuple[str, str, Cell]],
    total: int | None = None,
    cap: int | None = None,
) -> str:
    """Rows as an aligned table: (header, key, cell) per column; `total`: how many rows there were
    in all, when only some are shown (counted up to `cap`: more is "more than `cap`")."""
    if not rows:
        return "(none)"
    cells = [[cell(row.get(key)) for _, key, cell in columns] for row in rows]
    headers = [header for header, _, _ in columns]
    widths = [max(len(header), *(len(line[index]) for line in cells)) for index, header in enumerate(headers)]
    lines = ["  ".join(header.ljust(width) for header, width in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip() for line in cells]
    if total is not None and total > len(rows):
        of = f"more than {cap:,}" if cap is not None and total > cap else f"{total:,}"
        lines.append(f"showing {len(rows):,} of {of}")
    return "\n".join(lines)


def fields(data: dict[str, Any], keys: Sequence[tuple[str, Cell]]) -> str:
    """One object as `key: value` lines (`show` commands)."""
    width = max(len(key) for key, _ in keys)
    return "\n".join(f"{key.ljust(width)}  {cell(data.get(key))}" for key, cell in keys)
