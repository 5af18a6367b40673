"""A flow that keeps its own record of every attempt, for the tests that prove attempts never overlap.

`flows.paths` holds this folder, so the class path is `ledger_flows:AttemptLedger`. Each attempt
appends JSON lines to `config.ledger` (one `os.write` per line on an O_APPEND file: a line is never
torn by a concurrent writer; an attempt killed mid-write leaves at most an unterminated last line):

- `start`: the key (`config.key`: one per data flow), job id, run id, attempt, the
  process (pid and its /proc start time, so a reused pid is never mistaken for it), the network
  namespace it runs in (`net:[inode]`, which says which host), `time.time()` and `time.monotonic()`
  from the flow's own process, and `alive_before`: the run ids of earlier attempts of the same key
  that had not written their `end` and whose process was still alive at this attempt's start. A
  non-empty `alive_before` is an overlap seen from inside, at the very moment it happened.
- `tick`: every `config.tick` seconds (default 0.25; 0 for none) while it sleeps: signs of life.
- `end`: when it is done.

It sleeps `params.seconds`, else `config.seconds`; a list there gives one value per attempt (the last
one for later attempts), e.g. `[30, 0]` for a first attempt that hangs and quick retries. With
`config.release`, it ends as soon as that file exists (the test decides when it finishes).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import dfjob

LIVE_STATES = frozenset("RSDTtWPI")  # everything but zombies (Z) and dead tasks (X)


def process_start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (clock ticks since boot), None when the process is gone or a zombie."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    if fields[0] not in LIVE_STATES:
        return None
    return int(fields[19])


def still_running(pid: int, start_time: int) -> bool:
    """True while that very process (not a later one with the same pid) is alive."""
    return process_start_time(pid) == start_time


def append_line(path: str, record: dict[str, Any]) -> None:
    data = (json.dumps(record, separators=(",", ":")) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def read_records(path: str) -> list[dict[str, Any]]:
    """The complete lines of a ledger ([] when there is none yet)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.split("\n")[:-1] if line.strip()]


def alive_predecessors(path: str, key: str) -> list[int]:
    """Run ids of earlier attempts of `key` that never wrote `end` and whose process still runs."""
    started: dict[int, dict[str, Any]] = {}
    ended: set[int] = set()
    for record in read_records(path):
        if record.get("key") != key:
            continue
        if record["event"] == "start":
            started[record["run_id"]] = record
        elif record["event"] == "end":
            ended.add(record["run_id"])
    return sorted(
        run_id
        for run_id, record in started.items()
        if run_id not in ended and still_running(record["pid"], record["start_time"])
    )


def seconds_for(value: Any, attempt: int) -> float:
    if isinstance(value, list):
        return float(value[min(attempt, len(value)) - 1]) if value else 0.0
    return float(value or 0)


class AttemptLedger(dfjob.Flow):
    """Records start, ticks and end of each attempt in `config.ledger` (see the module docstring)."""

    def run(self) -> dict[str, Any]:
        ledger = str(self.config["ledger"])
        key = str(self.config["key"])
        seconds = seconds_for(self.params.get("seconds", self.config.get("seconds", 0)), self.attempt)
        tick = float(self.config.get("tick", 0.25))
        pid = os.getpid()
        own_start = process_start_time(pid)
        started = time.monotonic()
        record = {
            "key": key,
            "job_id": self.job_id,
            "run_id": self.run_id,
            "attempt": self.attempt,
            "pid": pid,
            "start_time": own_start,
            "netns": os.readlink("/proc/self/ns/net"),
            "time": time.time(),
            "mono": started,
        }
        record["alive_before"] = [run_id for run_id in alive_predecessors(ledger, key) if run_id != self.run_id]
        append_line(ledger, {"event": "start", **record})
        release = self.config.get("release")
        deadline, next_tick = started + seconds, started + tick
        while (now := time.monotonic()) < deadline and not (release and os.path.exists(release)):
            if tick > 0 and now >= next_tick:
                append_line(ledger, {"event": "tick", "key": key, "run_id": self.run_id, "mono": now})
                next_tick += tick
            pauses = [deadline - now] + ([next_tick - now] if tick > 0 else []) + ([0.01] if release else [])
            time.sleep(max(0.0, min(pauses)))
        append_line(
            ledger,
            {"event": "end", "key": key, "run_id": self.run_id, "time": time.time(), "mono": time.monotonic()},
        )
        return {"key": key, "attempt": self.attempt, "pid": pid}
