"""Flows that do what real flows sometimes do to the worker that runs them. `flows.paths` holds
this folder, so the module is `hostile_flows`. Flows that start processes write those processes'
pids to `config.pids` (one per line), so a test can check they are gone."""

from __future__ import annotations

import os
import stat
import subprocess
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import dfjob


def _note_pid(config: dict[str, Any], pid: int) -> None:
    with open(config["pids"], "a", encoding="utf-8") as pids:
        pids.write(f"{pid}\n")


class UndecodableError(dfjob.Flow):
    """Fails with what `os.fsdecode` makes of a file name that is not UTF-8 (a lone surrogate),
    a NUL byte, and terminal escape sequences."""

    def run(self) -> None:
        name = os.fsdecode(b"report-\xff.csv")
        raise ValueError(f"cannot open {name}: \x00 \x1b[31mred\x1b[0m \x07")


class PartialFrames(dfjob.Flow):
    """Writes the start of a frame, and nothing more, to every pipe it can write to."""

    def run(self) -> dict[str, Any]:
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            try:
                if stat.S_ISFIFO(os.fstat(fd).st_mode):
                    os.write(fd, b'\xdf\x01\x00\x00\x10\x00{"type"')
            except OSError:
                pass
        return {"wrote": True}


class ExitLeavingABackgroundProcess(dfjob.Flow):
    """Starts a background process that would keep any inherited pipe open, then exits hard."""

    def run(self) -> None:
        os.system(f"sleep 30 & echo $! >> {self.config['pids']}")
        os._exit(3)


class ChildOutlivingTimeout(dfjob.Flow):
    """Starts a child that ignores nothing, then runs past its flow's timeout."""

    def run(self) -> None:
        child = subprocess.Popen(["sleep", "60"])
        _note_pid(self.config, child.pid)
        time.sleep(60)


class HugeResult(dfjob.Flow):
    """Returns a result of `config.megabytes` (default 100) MB."""

    def run(self) -> dict[str, Any]:
        return {"blob": "x" * (int(self.config.get("megabytes", 100)) * 1024 * 1024)}


class DatetimeResult(dfjob.Flow):
    """Its work is done, but its result is not JSON."""

    def run(self) -> dict[str, Any]:
        Path(self.config["done"]).write_text("done\n")
        return {"at": datetime.now()}  # type: ignore[dict-item]
