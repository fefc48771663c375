"""Interleaved A/B of whole-process commands: which of two (or more) versions starts faster.

    python benchmarks/ab.py ROUNDS NAME 'COMMAND' NAME 'COMMAND' [...]

Every round runs each command once (through the shell), the order reversed every other
round, after one uncounted warm-up round; ``{i}`` in a command becomes the round number
(a fresh state directory per run). It prints each command's median and minimum wall time,
the ratio of medians to the first command, and the median CPU time (user + system, from
``getrusage`` of the children): on a machine shared with other work, CPU time moves less
than wall time (it leaves out waiting for the disk and for the CPU). Children get bytecode caches
(``PYTHONPYCACHEPREFIX``) and no ``STALWART_*``/``SLACK_*`` variables, as in ``run.py``.
To compare versions of stalwart, put each version's ``src/`` first on ``PYTHONPATH``, on
every side: a path entry before the standard library adds a ``stat`` to every import, so a
side started without one would read faster for that alone::

    git archive 61728a8 src | tar -x -C /tmp/old
    python benchmarks/ab.py 31 \\
        old 'PYTHONPATH=/tmp/old/src .venv/bin/python benchmarks/chain.py 3 /tmp/ab/o{i}' \\
        new 'PYTHONPATH=src .venv/bin/python benchmarks/chain.py 3 /tmp/ab/n{i}'
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time


def main(argv: list[str]) -> int:
    if len(argv) < 3 or len(argv) % 2 == 0 or not argv[0].isdigit() or int(argv[0]) < 1:
        print(__doc__, file=sys.stderr)
        return 2
    rounds = int(argv[0])
    commands = list(zip(argv[1::2], argv[2::2], strict=True))
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("STALWART_", "SLACK_")) and k != "PYTHONDONTWRITEBYTECODE"
    }
    env.setdefault("PYTHONPYCACHEPREFIX", os.path.join(tempfile.gettempdir(), "ab-pycache"))
    times: dict[str, list[float]] = {name: [] for name, _ in commands}
    cpu: dict[str, list[float]] = {name: [] for name, _ in commands}
    for index in range(rounds + 1):  # round 0: the warm-up
        for name, command in commands if index % 2 == 0 else commands[::-1]:
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.perf_counter()
            done = subprocess.run(  # noqa: S602 - the user's own command lines
                command.replace("{i}", str(index)),
                shell=True,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                check=False,
            )
            elapsed = (time.perf_counter() - start) * 1000
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            used = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            if done.returncode != 0:
                print(f"{name} exited {done.returncode}:", file=sys.stderr)
                print(done.stderr.decode(errors="replace")[-2000:], file=sys.stderr)
                return 1
            if index:
                times[name].append(elapsed)
                cpu[name].append(used * 1000)
    first = statistics.median(times[commands[0][0]])
    for name, _ in commands:
        median = statistics.median(times[name])
        print(
            f"{name:24s} median {median:8.2f} ms  min {min(times[name]):8.2f} ms  "
            f"{median / first:.2f}x  cpu {statistics.median(cpu[name]):8.2f} ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
