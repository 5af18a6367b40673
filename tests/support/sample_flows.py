"""Flow classes the tests run. `flows.paths` points at this folder, so the module is `sample_flows`."""

from __future__ import annotations

import ctypes
import os
import time
from pathlib import Path
from typing import Any

import dfjob


class Succeed(dfjob.Flow):
    """Returns its config and params, so tests can see what reached it."""

    def run(self) -> dict[str, Any]:
        self.log.info("succeed.ran", params=self.params)
        return {"config": self.config, "params": self.params}


class ReturnsNothing(dfjob.Flow):
    def run(self) -> None:
        return None


class Fail(dfjob.Flow):
    def run(self) -> None:
        raise ValueError(self.config.get("message", "boom"))


class DiscardIt(dfjob.Flow):
    def run(self) -> None:
        raise dfjob.Discard("bad input, do not retry")


class BadResult(dfjob.Flow):
    def run(self) -> Any:
        return ["not", "a", "dict"]


class NaNResult(dfjob.Flow):
    """A result that json.dumps would write as invalid JSON (NaN)."""

    def run(self) -> dict[str, Any]:
        return {"ratio": float("nan")}


class Exits(dfjob.Flow):
    """Calls sys.exit inside run(): must fail the run, not the runner."""

    def run(self) -> None:
        raise SystemExit(3)


class Crash(dfjob.Flow):
    """Kills its own process without any cleanup."""

    def run(self) -> None:
        os._exit(7)


class Segfault(dfjob.Flow):
    def run(self) -> None:
        ctypes.string_at(0)


class Sleep(dfjob.Flow):
    """Sleeps `params.seconds` (default 30), writing `started` first to `config.marker` if given."""

    def run(self) -> dict[str, Any]:
        marker = self.config.get("marker")
        if marker:
            Path(marker).write_text(f"{os.getpid()}\n")
        time.sleep(float(self.params.get("seconds", 30)))
        return {"slept": True}


class WaitForRelease(dfjob.Flow):
    """Writes its pid to `config.marker`, then returns once the file `config.release` exists
    (a test decides when the run ends); fails after `config.limit` seconds (default 60)."""

    def run(self) -> dict[str, Any]:
        Path(self.config["marker"]).write_text(f"{os.getpid()}\n")
        release = Path(self.config["release"])
        deadline = time.monotonic() + float(self.config.get("limit", 60))
        while not release.exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{release} never appeared")
            time.sleep(0.01)
        return {"released": True}


class Ledger(dfjob.Flow):
    """Appends one line per execution to `config.ledger`: proves each job ran exactly once."""

    def run(self) -> dict[str, Any]:
        line = f"{self.config.get('key', '')} {os.getpid()}\n"
        with open(self.config["ledger"], "a", encoding="utf-8") as ledger:
            ledger.write(line)
        return {"ok": True}


class FailTimes(dfjob.Flow):
    """Fails until it has been called `config.failures` times (counted in `config.counter`)."""

    def run(self) -> dict[str, Any]:
        counter = Path(self.config["counter"])
        count = int(counter.read_text()) if counter.exists() else 0
        counter.write_text(str(count + 1))
        if count < int(self.config["failures"]):
            raise RuntimeError(f"failure {count + 1}")
        return {"calls": count + 1}


class Context(dfjob.Flow):
    """Returns what it knows of its attempt; fails for good for the slots in `config.fail_slots`
    (ISO 8601), and appends `slot start end` (its own clock) to `config.ledger` if given."""

    def run(self) -> dict[str, Any]:
        slot = self.scheduled_for.isoformat() if self.scheduled_for else None
        started = time.time()
        if self.config.get("sleep"):
            time.sleep(float(self.config["sleep"]))
        if self.config.get("ledger"):
            with open(self.config["ledger"], "a", encoding="utf-8") as ledger:
                ledger.write(f"{self.job_id} {started} {time.time()}\n")
        if slot in self.config.get("fail_slots", []):
            raise dfjob.Discard(f"no data for {slot}")
        return {
            "job_id": self.job_id,
            "run_id": self.run_id,
            "attempt": self.attempt,
            "max_attempts": self.max_attempts,
            "scheduled_for": slot,
            "triggered_by": self.triggered_by,
        }


class NotAFlow:
    def run(self) -> None:
        pass
