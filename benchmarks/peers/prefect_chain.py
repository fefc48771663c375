"""A chain of N Prefect 3 tasks called in order inside one flow, in Prefect's default
local mode (no ``PREFECT_API_URL``: Prefect starts its temporary API server, backed by
SQLite under ``PREFECT_HOME``, for the life of the process).

Each task writes its output file with a plain ``Path.write_text`` (like Luigi, Prefect
does not fsync a user's file) and returns the path, which the next task takes as input,
so the calls form a chain the way Luigi's ``requires()`` does.

Skipping finished work on a re-run uses Prefect's own mechanism: ``cache_policy=INPUTS``
with ``persist_result=True``. A finished task leaves a persisted result record (its
"marker"; the runner puts them in ``STATE_DIR/.prefect-results`` through
``PREFECT_RESULTS_LOCAL_STORAGE_PATH``), and a re-run in a new process and a new flow run
finds the record for the same inputs and returns it in a ``Cached`` state without running
the task body. This is fair: it is what Prefect documents for "don't redo completed work",
the cold run pays for writing the records as the floor pays for its markers, and the
re-run pays Prefect's real bookkeeping (a task run per step, reported to its API). The
default policy would not skip anything: it includes the flow run's id, new every run.

Usage: ``python prefect_chain.py N STATE_DIR`` (run with the interpreter of Prefect's venv).

Typing: Prefect is installed only in its own venv, so for the project's ``mypy --strict``
the import is untyped; ``import-not-found`` and ``untyped-decorator`` are
silenced on exactly those lines, and ``unused-ignore`` keeps the file clean where Prefect
is installed.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from durable import FSYNC, make_durable
from prefect import flow, task  # type: ignore[import-not-found,unused-ignore]
from prefect.cache_policies import INPUTS  # type: ignore[import-not-found,unused-ignore]
from prefect.client.orchestration import (  # type: ignore[import-not-found,unused-ignore]
    get_client,
)


@task(cache_policy=INPUTS, persist_result=True)  # type: ignore[untyped-decorator,unused-ignore]
def write_step(state: str, index: int, previous: str | None) -> str:
    """Step ``index``: write ``out-<index>.txt`` in ``state`` and return its path."""
    del previous  # only there to chain the calls, and part of the cache key
    path = Path(state) / f"out-{index}.txt"
    path.write_text(f"step {index}\n")
    if FSYNC:
        make_durable(str(path))
    return str(path)


@flow(name="bench-chain")  # type: ignore[untyped-decorator,unused-ignore]
def chain(state: str, steps: int) -> None:
    previous: str | None = None
    for index in range(steps):
        previous = write_step(state, index, previous)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: prefect_chain.py N STATE_DIR", file=sys.stderr)
        return 2
    # Start the temporary API server (a process-wide singleton) before the clock, so
    # chain_ms holds the flow and its tasks, not the server's seconds-long start-up.
    with get_client(sync_client=True) as client:
        client.hello()
    start = time.perf_counter()
    chain(str(Path(argv[1]).resolve()), int(argv[0]))
    print(f"chain_ms={(time.perf_counter() - start) * 1000:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
