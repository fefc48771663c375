"""A chain of N stalwart steps, written against the public API in docs (docs/design.md).

Each step writes its small output with ``ctx.write_text`` (atomic and durable, recorded
in the step's marker); steps run in declaration order and a re-run of a finished run
skips every step whose marker is valid.

Usage: ``python stalwart_chain.py N STATE_DIR`` (run with the project's interpreter);
state lives in STATE_DIR/bench/runs/bench/.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import stalwart


def make_step(index: int) -> Callable[[stalwart.Context], None]:
    def step(ctx: stalwart.Context) -> None:
        ctx.write_text(f"out-{index}.txt", f"step {index}\n")

    # Step names come from the function's name: give each of the N steps its own.
    step.__name__ = step.__qualname__ = f"step_{index:03d}"
    return step


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: stalwart_chain.py N STATE_DIR", file=sys.stderr)
        return 2
    steps, root = int(argv[0]), argv[1]
    pipeline = stalwart.Pipeline("bench", root=root)
    for index in range(steps):
        pipeline.step()(make_step(index))
    # main() exits non-zero through SystemExit on failure; the runner also checks outputs.
    start = time.perf_counter()
    try:
        pipeline.main(["--run-id", "bench"])
    finally:
        print(f"chain_ms={(time.perf_counter() - start) * 1000:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
