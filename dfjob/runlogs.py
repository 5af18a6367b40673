"""Reading what an attempt printed and logged (`dfjob runs logs`), whole or as it comes.

The runner keeps a run's output within `runs.log_max_bytes`: its head and its tail, lines numbered
in order (see `capture`). Reading them back is one indexed range scan (`run_logs (run_id, seq)`);
following a run reads the lines after the last one seen, about every quarter second, until the
run has ended and its last lines are in.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from dfjob import clock
from dfjob.errors import DfjobError
from dfjob.models import DataFlowRun, RunLog
from dfjob.store.rows import RunStatus
from dfjob.text import printable

FOLLOW_POLL_SECONDS = 0.25
ENDED = (RunStatus.SUCCESS, RunStatus.FAILED)


def _run(run_id: int) -> DataFlowRun:
    run: DataFlowRun | None = (
        DataFlowRun.select(DataFlowRun.id, DataFlowRun.status, DataFlowRun.log_bytes, DataFlowRun.log_dropped_bytes)
        .where(DataFlowRun.id == run_id)
        .first()
    )
    if run is None:
        raise DfjobError(f"no run with id {run_id}")
    return run


def lines_after(run_id: int, after_seq: int = 0) -> list[dict[str, Any]]:
    """The run's kept lines after `after_seq`, in order: {seq, at, stream, text, part}."""
    query = RunLog.select(RunLog.seq, RunLog.at, RunLog.stream, RunLog.text, RunLog.part)
    query = query.where(RunLog.run == run_id, RunLog.seq > after_seq).order_by(RunLog.seq)
    return [
        {"seq": line.seq, "at": clock.iso(line.at), "stream": line.stream, "text": line.text, "part": line.part}
        for line in query
    ]


def read(run_id: int, after_seq: int = 0) -> dict[str, Any]:
    """The run's log as `runs logs --json` prints it; `after_seq`: only the lines after that one
    (a follower asking for what is new)."""
    run = _run(run_id)
    return {
        "run_id": run_id,
        "status": run.status,
        "lines": lines_after(run_id, after_seq),
        "truncated": run.log_dropped_bytes > 0,
        "log_bytes": run.log_bytes,
        "dropped_bytes": run.log_dropped_bytes,
    }


def format_line(line: dict[str, Any]) -> str:
    stamp = clock.parse_iso(line["at"]).strftime("%H:%M:%S.%f")[:-3]
    return f"{stamp} {line['stream']:<6} {printable(line['text'])}"


def cut_marker(dropped_bytes: int | None = None) -> str:
    what = f"{dropped_bytes:,} bytes" if dropped_bytes else "lines"
    return f"[... {what} of output cut here: runs.log_max_bytes keeps the start and the end ...]"


def render(log: dict[str, Any]) -> list[str]:
    """The log as text lines, with a marker where the middle was cut."""
    rendered: list[str] = []
    previous = "head"
    for line in log["lines"]:
        if line["part"] == "tail" and previous == "head" and log["truncated"]:
            rendered.append(cut_marker(log["dropped_bytes"]))
        previous = line["part"]
        rendered.append(format_line(line))
    if log["truncated"] and previous == "head":
        rendered.append(cut_marker(log["dropped_bytes"]))
    if not rendered:
        rendered.append("(no output)" if log["status"] in ENDED else "(no output yet)")
    return rendered


def follow(run_id: int, poll: float = FOLLOW_POLL_SECONDS) -> Iterator[str]:
    """The run's lines as text while it runs; ends once it has ended and its last lines are read."""
    last_seq = 0
    while True:
        # The status first: lines written before the run ended are in by the time it reads ended.
        ended = _run(run_id).status in ENDED
        for line in lines_after(run_id, last_seq):
            if line["seq"] > last_seq + 1:
                yield cut_marker()
            last_seq = line["seq"]
            yield format_line(line)
        if ended:
            return
        time.sleep(poll)
