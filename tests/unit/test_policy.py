"""The retry rules: one pure decision for finished and lost attempts alike."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from dfjob import policy
from dfjob.config import RetrySettings
from dfjob.store.rows import JobStatus, Retry

ENDED = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SETTINGS = RetrySettings(max_attempts=3, backoff_initial=10, backoff_max=3600)


def _decide(succeeded: bool, attempt: int, retry: Retry = Retry.NORMAL, max_attempts: int = 3) -> policy.Decision:
    return policy.decide(
        succeeded=succeeded, attempt=attempt, max_attempts=max_attempts, retry=retry, ended_at=ENDED, settings=SETTINGS
    )


@pytest.mark.parametrize("retry", list(Retry))
def test_a_success_finishes_the_job_whatever_is_asked(retry: Retry) -> None:
    assert _decide(True, 1, retry) == policy.Decision(JobStatus.SUCCEEDED, False, None)


def test_a_failure_with_attempts_left_retries_after_the_backoff() -> None:
    decision = _decide(False, 2)
    assert (decision.job_status, decision.will_retry) == (JobStatus.QUEUED, True)
    assert decision.retry_at is not None
    assert ENDED + timedelta(seconds=20) <= decision.retry_at <= ENDED + timedelta(seconds=22)


def test_the_last_attempt_fails_the_job() -> None:
    assert _decide(False, 3) == policy.Decision(JobStatus.FAILED, False, None)


def test_never_fails_at_once_with_attempts_left() -> None:
    assert _decide(False, 1, Retry.NEVER) == policy.Decision(JobStatus.FAILED, False, None)


def test_an_interrupted_attempt_goes_back_at_once_even_when_attempts_are_used_up() -> None:
    assert _decide(False, 3, Retry.NOW) == policy.Decision(JobStatus.QUEUED, True, ENDED)


def test_retry_delay_doubles_within_jitter_bounds_and_is_capped() -> None:
    for attempts in range(1, 8):
        base = 10 * 2 ** (attempts - 1)
        samples = [policy.retry_delay(attempts, SETTINGS) for _ in range(200)]
        assert all(base <= value <= 1.1 * base for value in samples), (attempts, min(samples), max(samples))
        assert len(set(samples)) > 1  # jittered, so workers retrying together spread out
    assert {policy.retry_delay(attempts, SETTINGS) for attempts in (10, 50, 1000)} == {3600.0}
    assert policy.retry_delay(1, RetrySettings(backoff_initial=100, backoff_max=50)) == 50.0
    assert policy.retry_delay(5, RetrySettings(backoff_initial=0, backoff_max=3600)) == 0.0
