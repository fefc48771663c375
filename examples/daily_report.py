"""The reference pipeline: fetch orders over HTTP, turn them into a CSV report, upload it.

Run it:  python examples/daily_report.py [--run-id ID] [--force] [--step NAME]
         python examples/daily_report.py status
Where:   DAILY_REPORT_API (orders API) and DAILY_REPORT_SINK (report receiver) base URLs;
         state under $STALWART_ROOT (default ./stalwart-data).
`make demo` runs it against a local flaky server (see `stalwart demo --help`).
"""

from __future__ import annotations

import csv
import os
from typing import Any

import stalwart

API = os.environ.get("DAILY_REPORT_API", "http://127.0.0.1:8000")
SINK = os.environ.get("DAILY_REPORT_SINK", "http://127.0.0.1:8001")

pipeline = stalwart.Pipeline("daily-report")


@pipeline.step()
def fetch(ctx: stalwart.Context) -> None:
    """Today's orders from the API (retried with backoff when the API is flaky)."""
    orders = ctx.http.get(f"{API}/orders", params={"date": ctx.run_id}).json()
    ctx.write_json("orders.json", orders)  # atomic, recorded as this step's output


@pipeline.step()
def transform(ctx: stalwart.Context) -> None:
    """orders.json -> report.csv, streamed through an atomic temp file."""
    orders: Any = ctx.read_json("orders.json")
    if not isinstance(orders, list):
        raise ValueError("orders.json is not a list")  # noqa: TRY004 - permanent: no retry, alert, exit 1
    with ctx.atomic_write("report.csv") as out:
        writer = csv.writer(out)
        writer.writerow(["id", "customer", "amount"])
        for order in orders:
            writer.writerow([order["id"], order["customer"], f"{float(order['amount']):.2f}"])
    ctx.log.info("report has %d orders", len(orders), extra={"orders": len(orders)})


@pipeline.step()
def upload(ctx: stalwart.Context) -> None:
    """POST the report; a permanent failure keeps it as a dead letter for replay."""
    ctx.http.post(
        f"{SINK}/reports",
        content=ctx.read_bytes("report.csv"),
        headers={"Content-Type": "text/csv"},
        dead_letter=True,
    )


if __name__ == "__main__":
    pipeline.main()
