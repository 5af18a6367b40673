"""The deployment files in scripts/: systemd units and the cron file say what the docs promise."""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dfjob.config import WorkerSettings
from dfjob.schedule import parse_cron

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
SYSTEMD = SCRIPTS / "systemd"
WORKER = "dfjob-worker@.service"
SCHEDULER = "dfjob-scheduler.service"
HEARTBEAT = "dfjob-heartbeat.service"
SERVE = "dfjob-serve.service"
TIMER = "dfjob-heartbeat.timer"
UNITS = (WORKER, SCHEDULER, HEARTBEAT, SERVE, TIMER)
SERVICES = (WORKER, SCHEDULER, HEARTBEAT, SERVE)
DAEMONS = (WORKER, SCHEDULER, SERVE)
INSTALLED_DFJOB = "/usr/local/bin/dfjob"
CONFIG_ARGS = "--config /etc/dfjob/dfjob.toml"

HARDENING = {
    "UMask": "0077",
    "NoNewPrivileges": "yes",
    "CapabilityBoundingSet": "",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectSystem": "strict",
    "ReadWritePaths": "/var/lib/dfjob",
    "ProtectHome": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectControlGroups": "yes",
    "ProtectProc": "invisible",
    "RestrictNamespaces": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "RestrictRealtime": "yes",
    "SystemCallArchitectures": "native",
    "SystemCallFilter": "@system-service",
}


def read_unit(name: str) -> configparser.ConfigParser:
    """A unit file as sections of keys; names keep their case, `%` and `:` are plain text."""
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string((SYSTEMD / name).read_text(), source=name)
    return parser


def timespan_seconds(value: str) -> float:
    """A systemd time span such as `60`, `90s` or `2min` in seconds."""
    units = {"": 1, "s": 1, "sec": 1, "min": 60, "m": 60}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value):
        total += float(number) * units[unit]
    assert total > 0, f"cannot read time span {value!r}"
    return total


def test_worker_unit_serves_the_queue_named_by_its_instance() -> None:
    service = read_unit(WORKER)["Service"]
    assert service["ExecStart"] == f"{INSTALLED_DFJOB} {CONFIG_ARGS} worker --queue %i"
    assert "worker --queue %i" in service["ExecStart"]


def test_scheduler_and_heartbeat_units_run_their_commands() -> None:
    assert read_unit(SCHEDULER)["Service"]["ExecStart"] == f"{INSTALLED_DFJOB} {CONFIG_ARGS} scheduler"
    heartbeat = read_unit(HEARTBEAT)["Service"]
    assert heartbeat["ExecStart"] == f"{INSTALLED_DFJOB} {CONFIG_ARGS} heartbeat"
    assert heartbeat["Type"] == "oneshot"
    assert read_unit(SERVE)["Service"]["ExecStart"] == f"{INSTALLED_DFJOB} {CONFIG_ARGS} serve"


@pytest.mark.parametrize("name", SERVICES)
def test_services_run_as_dfjob_in_its_state_folder(name: str) -> None:
    service = read_unit(name)["Service"]
    assert (service["User"], service["Group"]) == ("dfjob", "dfjob")
    assert service["WorkingDirectory"] == "/var/lib/dfjob"
    assert service["Environment"] == "PYTHONUNBUFFERED=1"
    assert service["KillSignal"] == "SIGTERM"


@pytest.mark.parametrize("name", DAEMONS)
def test_daemons_restart_on_failure_and_stop_gracefully(name: str) -> None:
    unit = read_unit(name)
    service = unit["Service"]
    assert service["Restart"] == "on-failure"
    assert timespan_seconds(service["RestartSec"]) == 5
    assert service["KillSignal"] == "SIGTERM"
    # Only the supervisor gets SIGTERM; it applies the grace period to what its flows started.
    assert service["KillMode"] == "mixed"
    assert unit["Install"]["WantedBy"] == "multi-user.target"


@pytest.mark.parametrize("name", DAEMONS)
def test_stop_timeout_outlasts_the_workers_shutdown_grace(name: str) -> None:
    # systemd sends SIGKILL when TimeoutStopSec runs out: it must not cut the grace period short.
    stop_timeout = timespan_seconds(read_unit(name)["Service"]["TimeoutStopSec"])
    assert stop_timeout >= WorkerSettings().shutdown_grace + 15


@pytest.mark.parametrize("name", SERVICES)
def test_services_are_hardened(name: str) -> None:
    service = read_unit(name)["Service"]
    assert {key: service.get(key) for key in HARDENING} == HARDENING


def test_heartbeat_timer_fires_every_minute_without_replaying_missed_ones() -> None:
    unit = read_unit(TIMER)
    timer = unit["Timer"]
    assert timer["OnCalendar"] == "*-*-* *:*:00"
    assert timer["AccuracySec"] == "1s"
    assert timer["Persistent"] == "false"
    assert timer.get("Unit", HEARTBEAT) == HEARTBEAT
    assert unit["Install"]["WantedBy"] == "timers.target"


def test_cron_file_runs_the_heartbeat_every_minute_as_dfjob() -> None:
    lines = (SCRIPTS / "dfjob-heartbeat.cron").read_text().splitlines()
    entries = [line for line in lines if line.strip() and not line.lstrip().startswith("#")]
    jobs = [line for line in entries if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*\s*=", line)]
    assert len(jobs) == 1, jobs
    fields = jobs[0].split()
    # /etc/cron.d format: five schedule fields, then the user, then the command.
    schedule, user, command = fields[:5], fields[5], fields[6:]
    parse_cron(" ".join(schedule))
    assert schedule == ["*"] * 5
    assert user == "dfjob"
    assert command[:4] == [INSTALLED_DFJOB, "--config", "/etc/dfjob/dfjob.toml", "heartbeat"]


def verify(units: list[Path]) -> subprocess.CompletedProcess[str]:
    """`systemd-analyze verify` on unit files, reporting warnings too (unknown keys, bad values)."""
    # At SYSTEMD_LOG_LEVEL=err, systemd 252 hides "Unknown key" and unparsable values: keep warnings.
    env = {**os.environ, "SYSTEMD_LOG_LEVEL": "warning"}
    command = ["systemd-analyze", "verify", "--man=no", *map(str, units)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)


def copy_units_for_this_machine(folder: Path) -> list[Path]:
    """Copies of the units that run this venv's dfjob as root, so that verify finds what they name."""
    dfjob = Path(sys.executable).parent / "dfjob"
    if not dfjob.exists():
        pytest.skip(f"no dfjob console script next to {sys.executable}")
    copies = []
    for name in UNITS:
        text = (SYSTEMD / name).read_text()
        if "ExecStart=" in text:
            assert f"ExecStart={INSTALLED_DFJOB} " in text
            text = text.replace(f"ExecStart={INSTALLED_DFJOB} ", f"ExecStart={dfjob} ")
            text = re.sub(r"^(User|Group)=dfjob$", r"\1=root", text, flags=re.MULTILINE)
        copy = folder / name
        copy.write_text(text)
        copies.append(copy)
    return copies


def mentions(output: str, units: list[Path]) -> list[str]:
    stems = [unit.name.split(".")[0].rstrip("@") for unit in units]
    return [line for line in output.splitlines() if any(stem in line for stem in stems)]


needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed (Debian package systemd)"
)


@needs_systemd_analyze
def test_systemd_analyze_verify_accepts_the_units(tmp_path: Path) -> None:
    units = copy_units_for_this_machine(tmp_path)
    result = verify(units)
    assert mentions(result.stdout + result.stderr, units) == []
    assert result.returncode == 0, result.stdout + result.stderr


@needs_systemd_analyze
def test_systemd_analyze_verify_would_report_a_broken_unit(tmp_path: Path) -> None:
    # Guards the check above: a typo in a unit must show up at the log level it uses.
    [worker, *_] = copy_units_for_this_machine(tmp_path)
    worker.write_text(worker.read_text().replace("Restart=on-failure", "Restart=on-failure\nRestartSecs=5"))
    result = verify([worker])
    assert any("RestartSecs" in line for line in mentions(result.stdout + result.stderr, [worker]))


@needs_systemd_analyze
@pytest.mark.parametrize("name", SERVICES)
def test_systemd_analyze_security_rates_the_services_ok_or_better(name: str, tmp_path: Path) -> None:
    # A template is rated through an instance of it.
    unit = tmp_path / name.replace("@.", "@default.")
    shutil.copy(SYSTEMD / name, unit)
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+) (\w+)", result.stdout + result.stderr)
    assert match, result.stdout + result.stderr
    assert match.group(2) in ("OK", "SAFE", "PERFECT"), match.group(0)
