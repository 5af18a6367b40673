"""The write batch: what a worker's next turn writes, kept until a turn has written it.

Runs that started, attempts that ended and claimed jobs to hand back unstarted wait here; a turn
takes them all, and puts them back if the database could not be reached. A run that started and
ended between two turns is written once, with its start and its end together.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from dfjob.store import Start
from dfjob.store.rows import Claimed, LogWrite, Outcome


@dataclass
class WriteBatch:
    outcomes: list[Outcome] = field(default_factory=list)
    starts: dict[int, datetime] = field(default_factory=dict)
    logs: list[LogWrite] = field(default_factory=list)
    releases: list[Claimed] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.outcomes or self.starts or self.logs or self.releases)

    def release(self, jobs: list[Claimed]) -> None:
        self.releases += jobs

    def take_releases(self) -> list[Claimed]:
        releases, self.releases = self.releases, []
        return releases

    def put_back_releases(self, releases: list[Claimed]) -> None:
        self.releases = releases + self.releases

    def logged(self, write: LogWrite) -> None:
        self.logs.append(write)

    def take_logs(self) -> list[LogWrite]:
        logs, self.logs = self.logs, []
        return logs

    def put_back_logs(self, logs: list[LogWrite]) -> None:
        self.logs = logs + self.logs

    def started(self, run_id: int, at: datetime) -> None:
        self.starts[run_id] = at

    def ended(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)

    def take(self) -> tuple[list[Outcome], list[Start]]:
        """Everything to write now: the outcomes (each carries its start) and the starts of runs
        still going, as (run ids, started at) groups."""
        ended = {outcome.job.run_id for outcome in self.outcomes}
        groups: dict[datetime, list[int]] = {}
        for run_id, at in self.starts.items():
            if run_id not in ended:
                groups.setdefault(at, []).append(run_id)
        outcomes, self.outcomes, self.starts = self.outcomes, [], {}
        return outcomes, [(run_ids, at) for at, run_ids in groups.items()]

    def put_back(self, outcomes: list[Outcome], starts: list[Start]) -> None:
        """A turn that failed wrote nothing: keep it all for the next one."""
        self.outcomes = outcomes + self.outcomes
        for run_ids, at in starts:
            for run_id in run_ids:
                self.starts.setdefault(run_id, at)

    def holds(self) -> list[Claimed]:
        """Jobs whose outcome or hand-back is not yet written: their leases are still ours to renew."""
        return [outcome.job for outcome in self.outcomes] + list(self.releases)
