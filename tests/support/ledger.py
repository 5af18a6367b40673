"""Reading what `ledger_flows.AttemptLedger` wrote, and watching its processes die, to decide from
the flows' own records whether two attempts of one data flow ever ran at once.

Every time compared here is `time.monotonic()`: one clock for every process on the machine, whatever
network namespace it runs in and however libfaketime shifts its wall clock.

An attempt is busy from its `start` until its `end`; one that never wrote its `end` (killed, or
fenced) is busy for as long as its process lives. Its process's death is known two ways:
- `PidWatcher`, a thread of the test process polling /proc for every attempt the ledgers name: it
  knows the last moment it saw the process alive (a sound lower bound of its death);
- the next attempt itself, which checks at its start whether any earlier attempt of the same key is
  still alive (`alive_before`).
Two attempts overlap when the later one started before the earlier one was done by any of these
signs: its `end` or last `tick` came later, the watcher saw its process alive later, or the later
attempt found it alive when it started.
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.ledger_flows import read_records, still_running

__all__ = ["Attempt", "PidWatcher", "attempts", "overlaps", "read_records"]


@dataclass
class Attempt:
    """One execution of a flow's run(), as its own records describe it."""

    key: str
    job_id: int
    run_id: int
    attempt: int
    pid: int
    start_time: int
    netns: str
    started: float  # monotonic
    wall_started: float  # the flow process's time.time()
    alive_before: list[int]
    last_sign: float  # the monotonic time of its latest record
    ended: float | None = None
    last_seen_alive: float | None = None  # by the watcher, for an attempt that never ended

    @property
    def busy_until(self) -> float:
        """The latest moment it is known to have been running its flow."""
        if self.ended is not None:
            return self.ended
        return max(self.last_sign, self.last_seen_alive or self.last_sign)


def attempts(records: Iterable[dict[str, Any]], watcher: PidWatcher | None = None) -> list[Attempt]:
    """The attempts in ledger records, in start order."""
    found: dict[int, Attempt] = {}
    for record in records:
        run_id = record["run_id"]
        if record["event"] == "start":
            found[run_id] = Attempt(
                key=record["key"],
                job_id=record["job_id"],
                run_id=run_id,
                attempt=record["attempt"],
                pid=record["pid"],
                start_time=record["start_time"],
                netns=record["netns"],
                started=record["mono"],
                wall_started=record["time"],
                alive_before=list(record["alive_before"]),
                last_sign=record["mono"],
            )
        elif run_id in found:
            found[run_id].last_sign = max(found[run_id].last_sign, record["mono"])
            if record["event"] == "end":
                found[run_id].ended = record["mono"]
    result = sorted(found.values(), key=lambda attempt: attempt.started)
    if watcher is not None:
        for attempt in result:
            attempt.last_seen_alive = watcher.last_seen_alive(attempt.pid, attempt.start_time)
    return result


@dataclass(frozen=True)
class Overlap:
    key: str
    earlier: Attempt
    later: Attempt
    how: str

    def __str__(self) -> str:
        return (
            f"{self.key}: run {self.later.run_id} (job {self.later.job_id} attempt {self.later.attempt}) started while"
            f" run {self.earlier.run_id} (job {self.earlier.job_id} attempt {self.earlier.attempt}) ran: {self.how}"
        )


def overlaps(found: Sequence[Attempt]) -> list[Overlap]:
    """Every pair of attempts of one key where the later one started before the earlier was done."""
    by_key: dict[str, list[Attempt]] = defaultdict(list)
    for attempt in found:
        by_key[attempt.key].append(attempt)
    result = []
    for key, group in by_key.items():
        group.sort(key=lambda attempt: attempt.started)
        for index, later in enumerate(group):
            for earlier in group[:index]:
                if earlier.run_id in later.alive_before:
                    result.append(Overlap(key, earlier, later, "it found the earlier process alive"))
                elif earlier.busy_until > later.started:
                    late = earlier.busy_until - later.started
                    result.append(Overlap(key, earlier, later, f"the earlier one was busy {late:.3f}s longer"))
    return result


@dataclass
class PidWatcher:
    """Polls /proc for the process of every attempt started in the ledgers it is given, recording
    the last moment it saw each one alive; a thread of the test process, stopped on exit."""

    ledgers: Sequence[Path] | None = None
    folder: Path | None = None  # or every *.jsonl in this folder
    interval: float = 0.005
    _seen: dict[tuple[int, int], float] = field(default_factory=dict)
    _watched: set[tuple[int, int]] = field(default_factory=set)
    _dead: set[tuple[int, int]] = field(default_factory=set)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __enter__(self) -> PidWatcher:
        self._thread = threading.Thread(target=self._run, name="pid-watcher", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _paths(self) -> Iterator[Path]:
        if self.ledgers is not None:
            yield from self.ledgers
        if self.folder is not None:
            yield from sorted(self.folder.glob("*.jsonl"))

    def _run(self) -> None:
        offsets: dict[Path, int] = {}
        while not self._stop.is_set():
            for path in list(self._paths()):
                offsets[path] = self._read_new(path, offsets.get(path, 0))
            for process in list(self._watched - self._dead):
                now = time.monotonic()  # taken before the look: the process was alive at least until then
                if still_running(*process):
                    with self._lock:
                        self._seen[process] = now
                else:
                    self._dead.add(process)
            self._stop.wait(self.interval)

    def _read_new(self, path: Path, offset: int) -> int:
        """Watch the processes of the `start` lines written since `offset`; the new offset."""
        try:
            with open(path, "rb") as ledger:
                ledger.seek(offset)
                data = ledger.read()
        except FileNotFoundError:
            return offset
        complete = data[: data.rfind(b"\n") + 1]
        for line in complete.splitlines():
            record = json.loads(line)
            if record["event"] == "start":
                self._watched.add((record["pid"], record["start_time"]))
        return offset + len(complete)

    def last_seen_alive(self, pid: int, start_time: int) -> float | None:
        with self._lock:
            return self._seen.get((pid, start_time))

    def is_dead(self, pid: int, start_time: int) -> bool:
        return (pid, start_time) in self._dead
