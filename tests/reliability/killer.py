"""Run a Python script and SIGKILL it at its K-th file-system operation.

    python killer.py K script.py [args...]

Counted operations: ``os.open``, ``os.write``, ``os.fsync``, ``os.fdatasync`` (the journal's
commit of a step), ``os.ftruncate`` (its cut of a torn tail), ``os.replace``, ``os.unlink``,
``os.mkdir``. At operation K the process kills itself with SIGKILL - for a write, after
writing half of the buffer, so a torn write is on disk. ``K=0`` kills nothing and, when
``KILLER_COUNT_FILE`` is set, writes the number of operations there at exit.
"""

from __future__ import annotations

import atexit
import os
import runpy
import signal
import sys
from collections.abc import Callable
from typing import Any

TARGET = int(sys.argv[1])
COUNT = 0


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _counted(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        global COUNT  # noqa: PLW0603 - one counter for the whole process, by design
        COUNT += 1
        if COUNT == TARGET:
            if name == "write" and len(args) == 2 and len(args[1]) > 1:
                original(args[0], memoryview(args[1])[: len(args[1]) // 2])
            _die()
        return original(*args, **kwargs)

    return wrapper


for _name in ("open", "write", "fsync", "fdatasync", "ftruncate", "replace", "unlink", "mkdir"):
    setattr(os, _name, _counted(_name, getattr(os, _name)))


def _report() -> None:
    path = os.environ.get("KILLER_COUNT_FILE")
    if path:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(str(COUNT))


atexit.register(_report)
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
