"""``stalwart chaos PIPELINE``: the command line of the crash tester (``_chaos``).

Exit 0 when every kill was survived, 1 otherwise (or when a clean run fails), 2 for a usage
error. On a terminal, a progress bar (with the optional ``tqdm``: ``pip install
stalwart[chaos]``); otherwise, or without it, one line per case.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any, TextIO

from .._chaos import ChaosCase, ChaosError, run_chaos
from .._errors import UsageError

__all__ = ["add_chaos_parser", "chaos_command"]


def add_chaos_parser(sub: Any) -> None:
    """The ``chaos`` sub-command's options (``sub``: argparse's sub-parsers)."""
    chaos = sub.add_parser(
        "chaos",
        help="crash-test a pipeline: SIGKILL it, resume it, compare with a clean run",
        description="Run PIPELINE twice cleanly in scratch roots, then N times killed with "
        "SIGKILL (at a file-system call of a step, or at a moment) and resumed until it "
        "finishes; compare every file with the clean run. Exit 0 when every kill was "
        "survived, 1 otherwise, 2 for a usage error. See docs/chaos.md.",
    )
    chaos.add_argument(
        "target", metavar="PIPELINE", help="path/to/file.py[:name] or package.module[:name]"
    )
    chaos.add_argument(
        "--kills",
        type=int,
        default=20,
        metavar="N",
        help="cases, each killed once or more (default 20)",
    )
    chaos.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default 0)")
    chaos.add_argument("--run-id", default="chaos", metavar="ID", help="run id (default chaos)")
    chaos.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="run parameter passed to every run (repeatable)",
    )
    chaos.add_argument(
        "--steps", metavar="A,B", help="kill only at file-system calls of these steps"
    )
    chaos.add_argument("--json", action="store_true", help="print the report as JSON")


def _progress(err: TextIO) -> tuple[Callable[[ChaosCase, int], None], Callable[[], None]]:
    """A bar on a terminal when tqdm is installed, else one line per case."""
    if err.isatty():
        try:
            from tqdm import tqdm  # noqa: PLC0415 - optional, drawn only on a terminal
        except ImportError:
            pass
        else:
            bar: list[Any] = []
            failed: list[ChaosCase] = []

            def tick(case: ChaosCase, total: int) -> None:
                if not bar:
                    bar.append(tqdm(total=total, unit="case", file=err, desc="chaos"))
                if not case.survived:
                    failed.append(case)
                bar[0].set_postfix(broke=len(failed))
                bar[0].update(1)

            def close() -> None:
                if bar:
                    bar[0].close()

            return tick, close

    def line(case: ChaosCase, total: int) -> None:
        kills = ", ".join(f"{k.step} at {k.at}" for k in case.kills) or "no kill landed"
        verdict = "survived" if case.survived else f"BROKE: {case.broke[0]}"
        print(f"case {case.index + 1}/{total}: {kills}: {verdict}", file=err, flush=True)

    return line, lambda: None


def chaos_command(args: argparse.Namespace, *, out: TextIO | None = None) -> int:
    """Run ``stalwart chaos`` as parsed; return the exit code."""
    out = out or sys.stdout
    err = sys.stderr
    steps = [s for s in (args.steps or "").split(",") if s] or None
    tick, close = _progress(err)
    try:
        report = run_chaos(
            args.target,
            kills=args.kills,
            seed=args.seed,
            run_id=args.run_id,
            params=args.param,
            steps=steps,
            progress=tick,
        )
    except UsageError as exc:
        print(f"stalwart chaos: error: {exc}", file=err)
        return 2
    except ChaosError as exc:
        print(f"stalwart chaos: {exc}", file=err)
        return 1
    finally:
        close()
    print(report.to_json() if args.json else report.render(), file=out)
    return 0 if report.ok else 1
