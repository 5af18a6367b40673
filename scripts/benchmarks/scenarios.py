"""Every scenario the bench knows, by the name `--scenarios` takes, in the order they run and are listed."""

from __future__ import annotations

from benchmarks import drain, heartbeat, history, idle, latency, lateness, operator, throughput, web
from benchmarks.harness import Scenario

SCENARIOS: dict[str, Scenario] = {
    "drain": drain.SCENARIO,
    "throughput": throughput.SCENARIO,
    "latency": latency.SCENARIO,
    "heartbeat": heartbeat.SCENARIO,
    "lateness": lateness.SCENARIO,
    "history": history.SCENARIO,
    "operator": operator.SCENARIO,
    "web": web.SCENARIO,
    "idle": idle.SCENARIO,
}
