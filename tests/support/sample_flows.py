"""Flow classes the tests run. `flows.paths` points at this folder, so the module is `sample_flows`."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
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


class Chatty(dfjob.Flow):
    """Writes to stdout, stderr and its log, and starts a program that prints too."""

    def run(self) -> dict[str, Any]:
        print("one to stdout")
        print("two to stderr", file=sys.stderr)
        self.log.info("rows.loaded", rows=3, table="orders")
        subprocess.run(["echo", "four from a child"], check=True)
        print("five \x1b[31mred\x1b[0m")
        return {"rows": 3}


class Ticker(dfjob.Flow):
    """Prints `tick N` every `params.interval` seconds (default 1), `params.count` times (default 5),
    after writing its pid to `config.marker` if given."""

    def run(self) -> dict[str, Any]:
        marker = self.config.get("marker")
        if marker:
            Path(marker).write_text(f"{os.getpid()}\n")
        count, interval = int(self.params.get("count", 5)), float(self.params.get("interval", 1))
        for tick in range(1, count + 1):
            print(f"tick {tick}")
            if tick < count:
                time.sleep(interval)
        return {"ticks": count}


class Flood(dfjob.Flow):
    """Prints `params.megabytes` MB (default 50) of numbered 100-byte lines: `line 0000001 xxx…`."""

    def run(self) -> dict[str, Any]:
        lines = int(float(self.params.get("megabytes", 50)) * 1_000_000) // 100
        filler = "x" * 86
        out = sys.stdout
        for number in range(lines):
            out.write(f"line {number:07d} {filler}\n")
        out.flush()
        return {"lines": lines}


class Stamp(dfjob.Flow):
    """Returns when its run() was entered (time.time()): the flow's own record of its start."""

    def run(self) -> dict[str, Any]:
        return {"entered": time.time()}


class NotAFlow:
    def run(self) -> None:
        pass
