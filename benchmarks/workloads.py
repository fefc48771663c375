"""The stalwart side of ``make bench``: the same work as ``plain_floor.py``, through stalwart.

Step ``i`` of a chain writes ``out-<i>.txt`` holding ``step <i>\\n`` with ``ctx.write_text``
(atomic, durable, recorded in the step's marker), exactly the bytes the floor writes.

The script form, ``python workloads.py chain N ROOT``, is the whole-process workload: a
pipeline file as a user writes it, run through ``pipeline.main()`` (the CLI, so it logs JSON
lines to stderr as it would under cron) with the run ID ``bench``. ``timed-chain N ROOT``
does the same and prints, on stdout, the seconds ``pipeline.main()`` took (the per-step row
as users run it: the CLI, JSON logs to a file).
"""

from __future__ import annotations

import sys

from plain_floor import output_name, step_name

import stalwart

TYPE_CHECKING = False  # a pipeline file imports only what it uses: not typing (~3 ms), pathlib
if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

__all__ = ["RUN_ID", "build_chain", "large_write", "make_step", "retried"]

RUN_ID = "bench"
PIPELINE = "bench"


def make_step(index: int) -> Callable[[stalwart.Context], None]:
    name, text = output_name(index), f"step {index}\n"

    def step(ctx: stalwart.Context) -> None:
        ctx.write_text(name, text)

    step.__name__ = step.__qualname__ = step_name(index)
    return step


def build_chain(steps: int, root: str | Path) -> stalwart.Pipeline:
    """A pipeline of ``steps`` trivial steps, state under ``root``, every option left at its
    default (the runner clears ``STALWART_*`` and ``SLACK_*`` from the environment)."""
    pipeline = stalwart.Pipeline(PIPELINE, root=root)
    for index in range(steps):
        pipeline.step()(make_step(index))
    return pipeline


def large_write(path: str, chunk: bytes, count: int) -> None:
    """Stream ``count`` chunks through ``stalwart.atomic_write`` (binary)."""
    with stalwart.atomic_write(path, "wb") as handle:
        for _ in range(count):
            handle.write(chunk)


def retried(fn: Callable[[], int]) -> Callable[[], int]:
    """``fn`` under ``@stalwart.retry()`` with the default policy."""
    return stalwart.retry()(fn)


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] not in ("chain", "timed-chain"):
        print("usage: workloads.py chain|timed-chain N ROOT", file=sys.stderr)
        return 2
    pipeline = build_chain(int(argv[1]), argv[2])
    if argv[0] == "chain":
        pipeline.main(["--run-id", RUN_ID])  # exits
    import time  # noqa: PLC0415 - the timed form only

    started = time.perf_counter()
    try:
        pipeline.main(["--run-id", RUN_ID])
    except SystemExit as exc:
        if exc.code:
            raise
    print(time.perf_counter() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
