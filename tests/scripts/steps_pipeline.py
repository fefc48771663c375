"""A three-step pipeline (fetch -> transform -> upload) that the subprocess tests drive.

Run it as ``python steps_pipeline.py [CLI arguments]`` or ``stalwart run steps_pipeline.py``.
Each step streams ``<step>.out`` through ``ctx.atomic_write``. The environment steers it:

``TEST_TRACE``
    a file each step appends ``<step> <pid>`` to when it starts (which steps ran, by whom)
``TEST_BLOCK_STEP``
    the step that, with part of its output written, prints ``READY <pid>`` on stdout and
    waits for a line on stdin (a signal, or the line, ends the wait)
``TEST_FAIL_STEP``
    the step that raises ``ValueError("boom in <step>")``
"""

from __future__ import annotations

import os
import signal
import sys
from typing import IO

import stalwart

# A job started without job control inherits SIGINT ignored; the SIGINT test needs Ctrl-C.
signal.signal(signal.SIGINT, signal.default_int_handler)

pipeline = stalwart.Pipeline("orders")


def _start(ctx: stalwart.Context) -> None:
    trace = os.environ.get("TEST_TRACE")
    if trace:
        with open(trace, "a", encoding="utf-8") as handle:
            handle.write(f"{ctx.step} {os.getpid()}\n")
    if os.environ.get("TEST_FAIL_STEP") == ctx.step:
        raise ValueError(f"boom in {ctx.step}")


def _body(ctx: stalwart.Context, out: IO[bytes], content: bytes) -> None:
    out.write(b"partial " * 4096)
    if os.environ.get("TEST_BLOCK_STEP") == ctx.step:
        out.flush()
        print(f"READY {os.getpid()}", flush=True)
        sys.stdin.readline()
    out.write(content)


@pipeline.step()
def fetch(ctx: stalwart.Context) -> None:
    _start(ctx)
    with ctx.atomic_write("fetch.out", "wb") as out:
        _body(ctx, out, f"orders of {ctx.run_id}\n".encode())


@pipeline.step()
def transform(ctx: stalwart.Context) -> None:
    _start(ctx)
    source = ctx.read_bytes("fetch.out")
    with ctx.atomic_write("transform.out", "wb") as out:
        _body(ctx, out, source.upper())


@pipeline.step()
def upload(ctx: stalwart.Context) -> None:
    _start(ctx)
    with ctx.atomic_write("upload.out", "wb") as out:
        _body(ctx, out, b"sent " + ctx.read_bytes("transform.out")[-20:])


if __name__ == "__main__":
    pipeline.main()
