"""Charts as inline SVG, drawn on the server: no script, no library, readable without either.
Every piece of text that reaches the SVG (flow names, statuses, times) goes through `escape`."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from markupsafe import Markup, escape

# Stacking order, bottom first; the colours are the stylesheet's status colours.
STATUS_ORDER = ("success", "failed", "in_progress", "pending")
COLOURS = {
    "success": "#1a7f37",
    "succeeded": "#1a7f37",
    "failed": "#cf222e",
    "in_progress": "#0969da",
    "running": "#0969da",
    "pending": "#8c959f",
    "queued": "#8c959f",
    "cancelled": "#bf8700",
}


def colour(status: str) -> str:
    return COLOURS.get(status, "#8c959f")


def runs_per_hour(hours: Sequence[tuple[datetime, dict[str, int]]], width: int = 720, height: int = 160) -> Markup:
    """Stacked bars: runs per hour by status, oldest hour on the left, with the hour under every 6th."""
    top = max([sum(counts.values()) for _, counts in hours] + [1])
    plot = height - 20
    step = width / max(1, len(hours))
    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="Runs per hour, last 24 hours"'
        ' preserveAspectRatio="none" xmlns="http://www.w3.org/2000/svg">',
        f'<text x="2" y="10" class="axis">{top}</text>',
        f'<line x1="0" y1="{plot}" x2="{width}" y2="{plot}" class="base"/>',
    ]
    for index, (hour, counts) in enumerate(hours):
        x = index * step + 1
        y = float(plot)
        for status in sorted(counts, key=lambda s: STATUS_ORDER.index(s) if s in STATUS_ORDER else 99):
            bar = counts[status] / top * (plot - 14)
            y -= bar
            label = escape(f"{hour:%H}:00 UTC: {counts[status]} {status}")
            parts.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{step - 2:.1f}" height="{bar:.1f}" fill="{colour(status)}">'
                f"<title>{label}</title></rect>"
            )
        if index % 6 == 0:
            parts.append(f'<text x="{x:.1f}" y="{height - 4}" class="axis">{escape(f"{hour:%H}:00")}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def sparkline(durations: Sequence[tuple[int, str]], width: int = 100, height: int = 22) -> Markup:
    """A tiny bar per recent run: its height the duration, its colour the outcome."""
    if not durations:
        return Markup('<span class="muted">-</span>')
    top = max(max(duration for duration, _ in durations), 1)
    step = width / len(durations)
    parts = [f'<svg class="spark" width="{width}" height="{height}" viewBox="0 0 {width} {height}" aria-hidden="true">']
    for index, (duration, status) in enumerate(durations):
        bar = max(1.0, duration / top * height)
        parts.append(
            f'<rect x="{index * step:.1f}" y="{height - bar:.1f}" width="{max(step - 1, 1):.1f}" height="{bar:.1f}"'
            f' fill="{colour(status)}"><title>{escape(f"{duration / 1000:.2f}s {status}")}</title></rect>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def durations(runs: Sequence[dict[str, object]], width: int = 720, height: int = 140) -> Markup:
    """A flow's recent runs, oldest on the left: a bar per run, as long as it took."""
    finished = [run for run in reversed(runs) if isinstance(run.get("duration_ms"), int)]
    if not finished:
        return Markup('<p class="muted">No finished runs yet.</p>')
    top = max(max(int(run["duration_ms"]) for run in finished), 1)  # type: ignore[call-overload]
    plot = height - 14
    step = width / len(finished)
    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="Run durations"'
        ' preserveAspectRatio="none" xmlns="http://www.w3.org/2000/svg">',
        f'<text x="2" y="10" class="axis">{escape(f"{top / 1000:.2f}s")}</text>',
        f'<line x1="0" y1="{plot}" x2="{width}" y2="{plot}" class="base"/>',
    ]
    for index, run in enumerate(finished):
        took = int(run["duration_ms"])  # type: ignore[call-overload]
        bar = max(1.0, took / top * (plot - 14))
        label = escape(f"run {run['id']}: {took / 1000:.2f}s, {run['status']}")
        parts.append(
            f'<a href="/runs/{int(run["id"])}"><rect x="{index * step + 1:.1f}" y="{plot - bar:.1f}"'  # type: ignore[call-overload]
            f' width="{max(step - 2, 1):.1f}" height="{bar:.1f}" fill="{colour(str(run["status"]))}">'
            f"<title>{label}</title></rect></a>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))
