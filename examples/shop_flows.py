"""Example data flows, used by `scripts/demo` and the README.

Point `flows.paths` at this folder and register them as `shop_flows:SyncOrders` and so on.
"""

from __future__ import annotations

import csv
import io
import random
from pathlib import Path
from typing import Any

import dfjob

ORDERS_CSV = """order_id,customer,amount
1001,ada,19.90
1002,grace,5.00
1003,ada,42.10
"""


class SyncOrders(dfjob.Flow):
    """Reads orders (a CSV in the real world, a string here) and reports what it loaded."""

    def run(self) -> dict[str, Any]:
        rows = list(csv.DictReader(io.StringIO(ORDERS_CSV)))
        since = self.params.get("since", "the beginning")
        total = round(sum(float(row["amount"]) for row in rows), 2)
        self.log.info("orders.loaded", rows=len(rows), since=since, source=self.config.get("source"))
        return {"rows": len(rows), "total": total, "since": since}


class ExportReport(dfjob.Flow):
    """Fails on its first attempt (a flaky remote), succeeds on the retry."""

    def run(self) -> dict[str, Any]:
        marker = Path(self.config["state_dir"]) / "export-attempted"
        if not marker.exists():
            marker.write_text("1")
            raise ConnectionError("report server did not answer")
        return {"exported": True, "pages": random.randint(2, 5)}


class ValidateFeed(dfjob.Flow):
    """Rejects bad input for good: Discard fails the job without retrying."""

    def run(self) -> None:
        raise dfjob.Discard(f"feed {self.config.get('feed', '?')!r} has no header row")
