"""Figures, the goals they are judged against, and how they are shown: the table, and the JSON document.

A `Figure` is one row of the table: dfjob's value next to the baseline's, measured in the same run.
Its JSON form (`as_dict`) is what `--json` writes under figures.<backend>.<key>.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from benchmarks.common import BACKENDS


@dataclass
class Figure:
    key: str
    label: str
    unit: str
    dfjob: float | None
    baseline: float | None
    baseline_name: str
    goal: str = ""
    met: bool | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.dfjob is None or not self.baseline:
            return None
        return self.dfjob / self.baseline

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ratio"] = None if self.ratio is None else round(self.ratio, 4)
        for name in ("dfjob", "baseline"):
            if data[name] is not None:
                data[name] = round(data[name], 4)
        return data


def always(args: argparse.Namespace) -> bool:
    return True


def at_full_size(args: argparse.Namespace) -> bool:
    """Goals stated for the default sizes say nothing about a `--quick` run."""
    return not args.quick


@dataclass(frozen=True)
class Goal:
    """What a figure should reach: `text` for the table, `check` to judge it (None: cannot tell).

    `backend` is "sqlite", "postgres" or "*" (a goal for one backend wins over "*"); `judged` says
    whether this run's sizes are the ones the goal is stated for (if not, the verdict is "-").
    """

    key: str
    text: str
    check: Callable[[Figure], bool | None]
    backend: str = "*"
    judged: Callable[[argparse.Namespace], bool] = always


def ratio_at_least(threshold: float) -> Callable[[Figure], bool | None]:
    return lambda figure: None if figure.ratio is None else figure.ratio >= threshold


def dfjob_at_most(limit: float, strict: bool = False) -> Callable[[Figure], bool | None]:
    def check(figure: Figure) -> bool | None:
        if figure.dfjob is None:
            return None
        return figure.dfjob < limit if strict else figure.dfjob <= limit

    return check


def format_value(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "jobs/s":
        return f"{value:,.0f} jobs/s"
    if unit == "ms":
        return f"{value:.2f} ms"
    if unit == "s":
        return f"{value:.3f} s"
    if unit == "% CPU":
        return f"{value:.2f} % CPU"
    return f"{value:.1f} {unit}"


def render_table(figures: dict[str, dict[str, Figure]], skipped: dict[str, str]) -> str:
    """One line per figure, backend after backend; a skipped backend gets one line saying why."""
    header = ("scenario", "backend", "dfjob", "baseline", "ratio", "goal", "verdict")
    rows: list[tuple[str, ...]] = []
    for backend in BACKENDS:
        if backend in skipped:
            rows.append(("(all scenarios)", backend, "skipped", skipped[backend], "", "", ""))
            continue
        for figure in figures.get(backend, {}).values():
            verdict = {True: "met", False: "MISSED", None: "-"}[figure.met] if figure.goal else ""
            rows.append(
                (
                    figure.label,
                    backend,
                    format_value(figure.dfjob, figure.unit),
                    format_value(figure.baseline, figure.unit),
                    "-" if figure.ratio is None else f"{figure.ratio:.2f}x",
                    figure.goal,
                    verdict,
                )
            )
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [" | ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    rule = "-+-".join("-" * width for width in widths)
    head = " | ".join(cell.ljust(width) for cell, width in zip(header, widths, strict=True)).rstrip()
    return "\n".join([head, rule, *lines])


def render_baselines(baselines: dict[tuple[str, str], list[str]]) -> str:
    """What each scenario's baseline is, once per distinct baseline, with the backends it was measured on."""
    lines = ["Baselines:"]
    for (scenario, name), backends in baselines.items():
        lines.append(f"  {scenario} ({', '.join(backends)}): {name}")
    return "\n".join(lines)
