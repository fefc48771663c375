"""The physical floor: a chain of N crash-safe steps in plain Python, no framework.

Each step writes its small output atomically (temp file in the same directory, write,
fsync, ``os.replace``, fsync of the directory), then a marker the same way, and a
re-run skips every step whose marker exists. Two durable writes per step is the least a
crash-safe step can do; every tool in the side-by-side is compared with this.

Usage: ``python floor.py N STATE_DIR`` (outputs in STATE_DIR, markers in STATE_DIR/.markers).
Like every workload here it prints ``chain_ms=`` last: the time of the chain alone, without
interpreter start, imports or a tool's own start-up, for the in-process per-task cost.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path


def durable_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so a reader sees the old file or the new one, never part."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def run_chain(steps: int, state: Path) -> None:
    markers = state / ".markers"
    markers.mkdir(parents=True, exist_ok=True)
    for index in range(steps):
        marker = markers / f"step-{index}.done"
        if marker.exists():
            continue
        durable_write(state / f"out-{index}.txt", f"step {index}\n")
        durable_write(marker, f"step-{index} done\n")


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: floor.py N STATE_DIR", file=sys.stderr)
        return 2
    start = time.perf_counter()
    run_chain(int(argv[0]), Path(argv[1]))
    print(f"chain_ms={(time.perf_counter() - start) * 1000:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
