"""dfjob: run Python data flows on a schedule and on demand, with a full run history."""

from __future__ import annotations

from dfjob.flow import Discard, Flow

__version__ = "0.2.0.dev0"

__all__ = ["Discard", "Flow", "__version__"]
