"""The Flow base class users subclass, Discard, and class-path resolution.

A class path is `package.module:ClassName`. The module allow-list (`flows.allowed_modules`) is
checked on the dotted name *before* anything is imported, so a refused path never runs any code.
"""

from __future__ import annotations

import importlib
import sys
from datetime import datetime
from typing import Any

import structlog

from dfjob.config import check_callable_path, module_allowed
from dfjob.errors import DfjobError


class Discard(Exception):
    """Raise inside `run()` to fail the run and its job at once, with no retry."""


class Flow:
    """A data flow's code: subclass it and implement `run()`.

    `config` is the data flow's configuration, `params` the trigger's parameters, and `log` a
    structlog logger bound with data_flow_id, data_flow_name, job_id and run_id. Inside `run()`
    the attempt is described by `job_id`, `run_id`, `attempt`, `max_attempts`, `scheduled_for`
    (an aware UTC datetime, or None for a plain trigger) and `triggered_by`.
    """

    job_id: int | None = None
    run_id: int | None = None
    attempt: int = 1
    max_attempts: int = 1
    scheduled_for: datetime | None = None
    triggered_by: str = "trigger"

    def __init__(self, config: dict[str, Any], params: dict[str, Any], log: Any) -> None:
        self.config = config
        self.params = params
        self.log = log

    def set_context(
        self,
        *,
        job_id: int,
        run_id: int,
        attempt: int,
        max_attempts: int,
        scheduled_for: datetime | None,
        triggered_by: str,
    ) -> None:
        """Set by the runner before `run()`: which job, attempt and slot this is."""
        self.job_id, self.run_id = job_id, run_id
        self.attempt, self.max_attempts = attempt, max_attempts
        self.scheduled_for, self.triggered_by = scheduled_for, triggered_by

    def run(self) -> dict[str, Any] | None:
        """Do the work; return an optional JSON-serialisable dict, stored as the run's `result`."""
        raise NotImplementedError(f"{type(self).__name__} must implement run()")


class ClassPathRefused(DfjobError):
    """A class path that must never be retried: refused by the allow-list or not a Flow."""


def add_import_paths(paths: tuple[str, ...]) -> None:
    """Add `flows.paths` (already absolute) to the import path, once each, after what is there:
    a flow folder never shadows the standard library or an installed package."""
    for path in paths:
        if path not in sys.path:
            sys.path.append(path)


def load_flow_class(class_path: str, allowed_modules: tuple[str, ...]) -> type[Flow]:
    """Import and return the Flow subclass a class path names, or raise DfjobError."""
    module_name, attr = check_callable_path(class_path)
    if not module_allowed(module_name, allowed_modules):
        raise ClassPathRefused(f"class path {class_path!r}: module {module_name!r} is not in flows.allowed_modules")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 (an import-time error in user code is a refusal)
        raise DfjobError(
            f"class path {class_path!r}: cannot import {module_name}: {type(exc).__name__}: {exc}"
        ) from None
    candidate = getattr(module, attr, None)
    if candidate is None:
        raise DfjobError(f"class path {class_path!r}: module {module_name} has no attribute {attr}")
    if candidate is Flow:
        raise ClassPathRefused(f"class path {class_path!r} names dfjob.Flow itself; name your subclass")
    if not (isinstance(candidate, type) and issubclass(candidate, Flow)):
        raise ClassPathRefused(f"class path {class_path!r}: {attr} is not a subclass of dfjob.Flow")
    if candidate.run is Flow.run:
        raise ClassPathRefused(f"class path {class_path!r}: {attr} does not implement run()")
    return candidate


def bound_logger(**context: Any) -> Any:
    """A structlog logger for user code, bound with the run's identifiers."""
    return structlog.get_logger("dfjob.flow").bind(**context)
