"""What every bench module shares: names, the error type, timestamps as dfjob stores them, progress lines."""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent.parent
# On flows.paths of every bench config, so that worker processes can import `benchmarks.flows`.
SCRIPTS = ROOT / "scripts"
NOOP = "benchmarks.flows:Noop"
STAMP = "benchmarks.flows:Stamp"
QUEUE = "default"
BACKENDS = ("sqlite", "postgres")
CHANNEL = "dfjob_bench_jobs"


class BenchError(Exception):
    """A measurement that cannot be trusted; the runner records it and goes on with the next scenario."""


def utc_now() -> datetime:
    return datetime.now(UTC)


def db_stamp(value: datetime) -> str:
    """The same stored form as dfjob's `to_db_time`: naive UTC text with microseconds."""
    return value.astimezone(UTC).replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")


def as_utc(value: Any) -> datetime:
    """A timestamp read back from either database, as an aware UTC datetime."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    assert isinstance(value, datetime), value
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def progress(backend: str, message: str) -> None:
    """One progress line on stderr; stdout is kept for the results."""
    print(f"[{backend}] {message}", file=sys.stderr, flush=True)
