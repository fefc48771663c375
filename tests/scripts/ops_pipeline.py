"""A two-step pipeline (extract -> load) that the tests of `runs`, `report`, `gc`, `backfill`
and alert hygiene drive as a subprocess: ``python ops_pipeline.py [CLI arguments]``.

The environment steers it:

``OPS_FAIL``
    ``STEP`` or ``STEP@RUN_ID,RUN_ID``: STEP raises ``ValueError(OPS_ERROR)`` (in those runs only)
``OPS_ERROR``
    the failing step's message (default ``boom``)
``OPS_DEAD_LETTER``
    the step that keeps a dead letter before it fails
``OPS_BLOCK_STEP``
    the step that prints ``READY <pid>`` on stdout and waits for a line on stdin
``OPS_SLOW_HTTP``
    a URL ``extract`` GETs through ``ctx.http`` (a FlakyServer: its retries are recorded)
"""

from __future__ import annotations

import os
import sys

import stalwart

pipeline = stalwart.Pipeline("nightly")


def _maybe_fail(ctx: stalwart.Context) -> None:
    if os.environ.get("OPS_BLOCK_STEP") == ctx.step:
        print(f"READY {os.getpid()}", flush=True)
        sys.stdin.readline()
    step, _, days = os.environ.get("OPS_FAIL", "").partition("@")
    if step == ctx.step and (not days or ctx.run_id in days.split(",")):
        if os.environ.get("OPS_DEAD_LETTER") == ctx.step:
            ctx.dead_letter({"run": ctx.run_id, "rows": [1, 2, 3]}, reason="warehouse said no")
        raise ValueError(os.environ.get("OPS_ERROR", "boom"))


@pipeline.step()
def extract(ctx: stalwart.Context) -> None:
    url = os.environ.get("OPS_SLOW_HTTP")
    if url:
        ctx.http.get(url)
    ctx.write_text("rows.csv", "id,amount\n" + "".join(f"{n},{n * 3}\n" for n in range(200)))
    _maybe_fail(ctx)


@pipeline.step()
def load(ctx: stalwart.Context) -> None:
    _maybe_fail(ctx)
    ctx.write_json("loaded.json", {"rows": 200, "run": ctx.run_id})


if __name__ == "__main__":
    pipeline.main()
