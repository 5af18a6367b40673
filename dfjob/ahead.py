"""Claiming ahead: jobs a worker claims beyond its free runners, queued in the runners behind
their current job, so that a runner that ends a short job starts the next at once, even while its
supervisor waits on the database, and one round trip claims for many jobs.

Only behind short jobs, and never many: each runner's queue aims at `AHEAD_WORK_SECONDS` of work
by the recent durations of this worker's runs (none until it has seen a few), at most
`MAX_PER_RUNNER`. A long run never holds a short job hostage: when a runner is free and another's
current run is older than `HOSTAGE_SECONDS`, the jobs queued behind it are withdrawn (those it has
not started) and given to the free one. Jobs no runner can take (the `AheadQueue`) are handed back
after `MAX_WAIT_SECONDS`, and at once when the worker stops.

A held job is `running` in the database with a lease like any other (renewed with the others,
counted by `max_running`), its attempt counted and its run `pending` from the claim. Handed back
unstarted, it goes back to `queued` with its attempt given back and its pending run deleted, as if
never claimed.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from dfjob.store.rows import Claimed

AHEAD_WORK_SECONDS = 0.05
MAX_PER_RUNNER = 32
# A job held unassigned this long (every runner busy with something long) is handed back.
MAX_WAIT_SECONDS = 1.0
# A job queued behind a run this old is taken back for a runner that is free.
HOSTAGE_SECONDS = 0.05
# Durations remembered, and how many are needed before claiming ahead at all.
WINDOW, MIN_SEEN = 32, 4


@dataclass
class Held:
    job: Claimed
    since: float


class AheadQueue:
    """The jobs a worker holds that no runner has yet, oldest first, and how deep to queue."""

    def __init__(self) -> None:
        self._held: deque[Held] = deque()
        self._durations: deque[float] = deque(maxlen=WINDOW)

    def __len__(self) -> int:
        return len(self._held)

    def __bool__(self) -> bool:
        return bool(self._held)

    def ran(self, seconds: float) -> None:
        """A run of this worker took `seconds` from its start to its end."""
        self._durations.append(max(0.0, seconds))

    def depth(self) -> int:
        """How many jobs may wait behind each runner's current one: about AHEAD_WORK_SECONDS of
        work by the recent durations, none until a few runs were seen."""
        if len(self._durations) < MIN_SEEN:
            return 0
        average = sum(self._durations) / len(self._durations)
        return min(MAX_PER_RUNNER, int(AHEAD_WORK_SECONDS / max(average, 1e-4)))

    def hold(self, jobs: Iterable[Claimed]) -> None:
        now = time.monotonic()
        self._held.extend(Held(job, now) for job in jobs)

    def next(self) -> Claimed | None:
        return self._held.popleft().job if self._held else None

    def jobs(self) -> list[Claimed]:
        return [held.job for held in self._held]

    def take(self, job_ids: set[int]) -> list[Claimed]:
        """Remove and return the held jobs among `job_ids`."""
        taken = [held.job for held in self._held if held.job.job_id in job_ids]
        self._held = deque(held for held in self._held if held.job.job_id not in job_ids)
        return taken

    def overdue(self, now: float) -> list[Claimed]:
        """Remove and return the jobs that waited longer than MAX_WAIT_SECONDS."""
        return self.take({held.job.job_id for held in self._held if now - held.since > MAX_WAIT_SECONDS})

    def take_all(self) -> list[Claimed]:
        jobs = self.jobs()
        self._held.clear()
        return jobs

    def next_overdue_at(self) -> float | None:
        return self._held[0].since + MAX_WAIT_SECONDS if self._held else None
