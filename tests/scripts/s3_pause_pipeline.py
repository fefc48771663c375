"""A pipeline for the paused-holder test: ``first`` writes, then (with ``TEST_PAUSE`` set)
prints ``READY <pid>`` and stops itself with SIGSTOP before writing ``second.out``; ``after``
writes once more. The outputs name the process that wrote them."""

from __future__ import annotations

import os
import signal

import stalwart

pipeline = stalwart.Pipeline("paused")


@pipeline.step()
def first(ctx: stalwart.Context) -> None:
    ctx.write_text("first.out", f"by {os.getpid()}\n")
    if os.environ.get("TEST_PAUSE"):
        print(f"READY {os.getpid()}", flush=True)
        os.kill(os.getpid(), signal.SIGSTOP)
    ctx.write_text("second.out", f"by {os.getpid()}\n")


@pipeline.step()
def after(ctx: stalwart.Context) -> None:
    ctx.write_text("after.out", f"by {os.getpid()}\n")


if __name__ == "__main__":
    pipeline.main()
