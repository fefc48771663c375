"""The physical floor of a crash-safe step, in plain Python: what ``make bench`` compares with.

A step that survives a crash must, at the least, write its output atomically and then a
marker the same way; each write is temp file -> write -> ``fsync`` -> ``os.replace`` ->
``fsync`` of the directory. A re-run decides "done" from the marker and the output being
there (two ``stat`` calls). Nothing here imports more than ``os`` and ``sys``, so the script
form (``python plain_floor.py chain N DIR``) is also the floor of a whole process.

The names and bytes match the stalwart workloads in ``workloads.py``: step ``i`` writes
``out-<i>.txt`` holding ``step <i>\\n``. With ``--freeze`` last, the script first moves what
the interpreter's start-up made out of the garbage collector's way (``gc.freeze()``), as
stalwart's ``main()`` does: ``make bench`` reports the 3-step run against that form too.

This module is named ``plain_floor`` rather than ``floor`` so that mypy does not see two
top-level modules called ``floor`` (``benchmarks/peers/floor.py`` is the peers' one).
"""

from __future__ import annotations

import os
import sys

__all__ = [
    "check_chain",
    "durable_write",
    "output_bytes",
    "output_name",
    "plain_write_fsync",
    "run_chain",
    "step_name",
]

MARKERS = ".markers"


def step_name(index: int) -> str:
    return f"step_{index:03d}"


def output_name(index: int) -> str:
    return f"out-{index}.txt"


def output_bytes(index: int) -> bytes:
    return f"step {index}\n".encode()


def durable_write(path: str, data: bytes) -> None:
    """Replace ``path`` by ``data``: temp, write, fsync, rename, fsync of the directory."""
    directory = os.path.dirname(path) or "."
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _done(marker: str, output: str) -> bool:
    try:
        os.stat(marker)
        os.stat(output)
    except FileNotFoundError:
        return False
    return True


def run_chain(steps: int, state: str) -> int:
    """Run ``steps`` crash-safe steps in ``state``; a step whose marker and output exist is
    skipped. Returns how many steps ran."""
    markers = os.path.join(state, MARKERS)
    os.makedirs(markers, exist_ok=True)
    ran = 0
    for index in range(steps):
        name = step_name(index)
        marker = os.path.join(markers, f"{name}.done")
        output = os.path.join(state, output_name(index))
        if _done(marker, output):
            continue
        durable_write(output, output_bytes(index))
        durable_write(marker, b'{"step": "%s", "done": true}\n' % name.encode())
        ran += 1
    return ran


def check_chain(steps: int, state: str) -> int:
    """The skip path's floor: ``stat`` the marker and the output of each step. Returns how
    many steps are done."""
    markers = os.path.join(state, MARKERS)
    return sum(
        _done(
            os.path.join(markers, f"{step_name(index)}.done"),
            os.path.join(state, output_name(index)),
        )
        for index in range(steps)
    )


def plain_write_fsync(path: str, chunk: bytes, count: int) -> None:
    """The floor of a large output: ``open``, ``count`` writes of ``chunk``, ``fsync``."""
    with open(path, "wb") as handle:
        for _ in range(count):
            handle.write(chunk)
        handle.flush()
        os.fsync(handle.fileno())


def main(argv: list[str]) -> int:
    if argv[3:] == ["--freeze"]:  # what start-up made, out of the collector's way (info row)
        import gc  # noqa: PLC0415 - built in; only this form uses it

        gc.freeze()
        argv = argv[:3]
    if len(argv) != 3 or argv[0] not in ("chain", "timed-chain"):
        print("usage: plain_floor.py chain|timed-chain N STATE_DIR [--freeze]", file=sys.stderr)
        return 2
    if argv[0] == "chain":
        run_chain(int(argv[1]), argv[2])
        return 0
    import time  # noqa: PLC0415 - the timed form only: prints the seconds the chain took

    started = time.perf_counter()
    run_chain(int(argv[1]), argv[2])
    print(time.perf_counter() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
