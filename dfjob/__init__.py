"""dfjob: run Python data flows on a schedule and on demand, with a full run history.

Importing `dfjob` is cheap: `Flow`, `Discard`, `Client` and `DfjobError` are loaded on first use,
so the `dfjob` command can catch a stop signal before it imports anything else.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dfjob.client import Client
    from dfjob.errors import DfjobError
    from dfjob.flow import Discard, Flow

__version__ = "0.2.0.dev0"

_LAZY = {"Flow": "dfjob.flow", "Discard": "dfjob.flow", "DfjobError": "dfjob.errors", "Client": "dfjob.client"}

__all__ = ["Client", "DfjobError", "Discard", "Flow", "__version__"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'dfjob' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
