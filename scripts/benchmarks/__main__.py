"""`python scripts/benchmarks [ARGS]` (what scripts/bench runs), or `python -m benchmarks` with scripts/ on the path.

`--baseline-worker SPEC` as the first argument runs one baseline worker process instead (see
`benchmarks.baseline.run_worker`); it imports only the baseline queue, nothing of dfjob.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

if not __package__:
    # Run as a folder: Python put the package folder itself first on the path, where its modules
    # would be top-level names (and could shadow others); the folder above makes them `benchmarks.*`.
    sys.path[0] = str(Path(__file__).resolve().parent.parent)


def main(argv: list[str]) -> int:
    if argv[:1] == ["--baseline-worker"]:
        from benchmarks.baseline import run_worker

        return run_worker(json.loads(argv[1]))
    from benchmarks.harness import main as run_bench
    from benchmarks.scenarios import SCENARIOS

    return run_bench(argv, SCENARIOS)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
