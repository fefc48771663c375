"""A pipeline with one map step over ``MAP_N`` items that the subprocess tests drive.

Run it as ``python map_pipeline.py [CLI arguments]``. Item ``n`` writes ``out/<n>.json``
(``{"n": n, "square": n * n}``). The environment steers it:

``MAP_EXECUTOR``
    ``threads`` (default), ``processes`` or ``dask://HOST:PORT``
``MAP_N``, ``MAP_WORKERS``, ``MAP_CHUNK``
    how many items; workers; items per chunk (default: stalwart's choice)
``MAP_LOG``
    a file each item appends ``<n>`` to when it runs (every execution, across processes)
``MAP_STOP_AT``, ``MAP_FIFO``
    item ``MAP_STOP_AT`` writes ``reached`` to the FIFO ``MAP_FIFO``, then works for
    ``MAP_SLEEP`` seconds (default 3): the test kills the driver meanwhile
``MAP_POISON``
    the item that kills the process running it (``os._exit``): a Dask worker's death
``MAP_FAIL``
    comma-separated items that raise ``ValueError``
"""

from __future__ import annotations

import os
import signal
import time

import stalwart

signal.signal(signal.SIGINT, signal.default_int_handler)

pipeline = stalwart.Pipeline("mapped")

# Read here, in the driver: the function carries them to workers that lack the variables.
LOG = os.environ.get("MAP_LOG", "")
POISON = os.environ.get("MAP_POISON", "")
FAIL = set(os.environ.get("MAP_FAIL", "").split(",")) - {""}
STOP_AT = os.environ.get("MAP_STOP_AT", "")
FIFO = os.environ.get("MAP_FIFO", "")
SLEEP = float(os.environ.get("MAP_SLEEP", "3"))


def _numbers(ctx: stalwart.Context) -> list[int]:
    return list(range(int(os.environ.get("MAP_N", "200"))))


def _chunk() -> int | None:
    value = os.environ.get("MAP_CHUNK")
    return int(value) if value else None


@pipeline.map(
    items=_numbers,
    executor=os.environ.get("MAP_EXECUTOR", "threads"),
    workers=int(os.environ.get("MAP_WORKERS", "4")),
    chunk=_chunk(),
)
def square(ctx: stalwart.ItemContext, n: int) -> None:
    if LOG:
        fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.write(fd, f"{n}\n".encode())
        os.close(fd)
    if str(n) == POISON:
        os._exit(3)
    if str(n) in FAIL:
        raise ValueError(f"item {n} is bad")
    if str(n) == STOP_AT and FIFO:
        with open(FIFO, "w") as fifo:
            fifo.write("reached\n")
        time.sleep(SLEEP)  # the driver is killed meanwhile
    ctx.write_json(f"out/{n}.json", {"n": n, "square": n * n})


if __name__ == "__main__":
    pipeline.main()
