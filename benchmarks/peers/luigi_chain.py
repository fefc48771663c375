"""A chain of N Luigi tasks, each requiring the previous one.

Each task's output is a ``LocalTarget`` written through ``target.open("w")`` (Luigi's own
atomic file: a temp file renamed into place on close; Luigi does not fsync; with
``PEERS_FSYNC=1`` the file and its directory are fsynced after it). The chain is
run with ``luigi.build([...], local_scheduler=True)``, Luigi's serverless mode. A re-run
of a finished chain asks the last task's ``complete()`` (its output exists) and stops
there: that is how Luigi decides "already done".

Usage: ``python luigi_chain.py N STATE_DIR`` (run with the interpreter of Luigi's venv).

Typing: Luigi is installed only in its own venv, not in the project's, so for the
project's ``mypy --strict`` the import is untyped: ``import-not-found`` and the
subclass-of-Any error (``misc``) are silenced on exactly those lines; ``unused-ignore``
keeps the file clean where Luigi is installed too.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import luigi  # type: ignore[import-not-found,unused-ignore]
from durable import FSYNC, make_durable


class Step(luigi.Task):  # type: ignore[misc,unused-ignore]
    """Step ``index`` of the chain; writes ``out-<index>.txt`` in ``state``."""

    state: Any = luigi.Parameter()
    index: Any = luigi.IntParameter()

    def requires(self) -> list[Step]:
        if self.index == 0:
            return []
        return [Step(state=self.state, index=self.index - 1)]

    def output(self) -> Any:
        return luigi.LocalTarget(str(Path(self.state) / f"out-{self.index}.txt"))

    def run(self) -> None:
        with self.output().open("w") as out:
            out.write(f"step {self.index}\n")
        if FSYNC:
            make_durable(self.output().path)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: luigi_chain.py N STATE_DIR", file=sys.stderr)
        return 2
    steps, state = int(argv[0]), str(Path(argv[1]).resolve())
    start = time.perf_counter()
    ok = luigi.build([Step(state=state, index=steps - 1)], local_scheduler=True)
    print(f"chain_ms={(time.perf_counter() - start) * 1000:.3f}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
