"""Flow classes for the bench's dfjob workers: `scripts/` is on flows.paths, so they are `benchmarks.flows:…`."""

from __future__ import annotations

import time
from typing import Any

import dfjob


class Noop(dfjob.Flow):
    """Does nothing: the drain measures dfjob's own cost per job."""

    def run(self) -> None:
        return None


class Stamp(dfjob.Flow):
    """Reports when run() was entered (epoch seconds), so the latency scenario can show the pipe hop too."""

    def run(self) -> dict[str, Any]:
        return {"entered": time.time()}
