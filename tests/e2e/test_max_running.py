"""`max_running` is enforced by the database at claim time, across worker processes: the flows'
own records of when each attempt started and ended never show more running at once."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.conftest import Dfjob
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


def most_at_once(ledger: Path) -> int:
    """The largest number of attempts whose [start, end] intervals overlap, from the flow's records."""
    moments: list[tuple[float, int]] = []
    for line in ledger.read_text().splitlines():
        _, start, end = line.split()
        moments += [(float(start), 1), (float(end), -1)]
    running = most = 0
    for _, change in sorted(moments, key=lambda moment: (moment[0], moment[1])):  # ends before starts on a tie
        running += change
        most = max(most, running)
    return most


@pytest.mark.timeout(180)
def test_max_running_holds_across_three_workers(make_dfjob: Callable[..., Dfjob], postgres_url: str) -> None:
    dfjob = make_dfjob(postgres_url, worker={"poll_interval": 0.05})
    ledgers = {limit: dfjob.directory / f"ledger-{limit}" for limit in (1, 3)}
    for limit, ledger in ledgers.items():
        config = {"ledger": str(ledger), "sleep": 0.3}
        dfjob.add_flow(f"limit-{limit}", "sample_flows:Context", "--max-running", str(limit), config=config)
        for index in range(12):
            dfjob.trigger(f"limit-{limit}", "--param", f"n={index}")
    workers = [dfjob.start("worker", "--concurrency", "4", name=f"w{index}") for index in range(3)]
    wait_for(
        lambda: dfjob.db.scalar("SELECT COUNT(*) AS n FROM jobs WHERE status = 'succeeded'") == 24,
        timeout=120,
        what="all 24 jobs to succeed",
    )
    for worker in workers:
        worker.signal(15)
        assert worker.wait(timeout=60) == 0, worker.stderr()
    assert most_at_once(ledgers[1]) == 1
    # At most three at once, and the twelve slots of the three workers did run several together.
    assert 2 <= most_at_once(ledgers[3]) <= 3
    assert len(ledgers[3].read_text().splitlines()) == 12
