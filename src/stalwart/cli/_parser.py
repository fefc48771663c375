"""The command line's parsers: ``run`` is the default sub-command, so ``python my_pipeline.py
--force`` works; a command line builds only its own sub-command's parser."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["COMMANDS", "build_parser", "mistyped_command", "with_default_command"]

COMMANDS = (
    "run",
    "status",
    "reset",
    "deadletter",
    "demo",
    "chaos",
    "runs",
    "report",
    "gc",
    "backfill",
)


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, reading the terminal width only when it prints help or usage.

    argparse builds a formatter for every ``add_argument`` (to check the metavar), and the
    stock one imports ``shutil`` - with ``zlib``, ``bz2`` and ``lzma`` - for the width: about
    5 ms of every start, for text that a run never prints.
    """

    def __init__(
        self,
        prog: str,
        indent_increment: int = 2,
        max_help_position: int = 24,
        width: int | None = None,
    ) -> None:
        super().__init__(prog, indent_increment, max_help_position, width or 80)
        self._fit_terminal = width is None
        self._help_position_asked = max_help_position

    def format_help(self) -> str:
        if self._fit_terminal:
            import shutil  # noqa: PLC0415 - see the class docstring

            self._width = shutil.get_terminal_size().columns - 2
            self._max_help_position = min(
                self._help_position_asked, max(self._width - 20, self._indent_increment * 2)
            )
            self._fit_terminal = False
        return super().format_help()


class _Parser(argparse.ArgumentParser):
    """``ArgumentParser`` with ``_HelpFormatter`` (sub-command parsers inherit the class)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)


def _common(standalone: bool, *, run_id: bool = True) -> _Parser:
    parent = _Parser(add_help=False)
    if standalone:
        parent.add_argument(
            "target",
            metavar="PIPELINE",
            help="path/to/file.py[:name] or package.module[:name]",
        )
    if run_id:
        parent.add_argument("--run-id", metavar="ID", help="the run (default: today's UTC date)")
    parent.add_argument(
        "--log-format",
        choices=("json", "text"),
        help="log format on stderr (default: text on a terminal, json otherwise)",
    )
    parent.add_argument("-v", "--verbose", action="store_true", help="debug logs, tracebacks")
    return parent


class _VersionAction(argparse.Action):
    """``--version``, resolved only when asked (importlib.metadata is slow to import)."""

    def __call__(self, parser: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        from importlib.metadata import version  # noqa: PLC0415

        print(f"stalwart {version('stalwart')}")  # to stdout, as --help is
        parser.exit()


def build_parser(
    prog: str, *, standalone: bool, command: str | None = None
) -> argparse.ArgumentParser:
    """The command line. With ``command`` (the first word of a command line), only that
    sub-command's parser is built: parsing ``run ...`` needs none of the others, and a run
    then builds 3 parsers instead of 13."""
    common = _common(standalone)
    parser = _Parser(
        prog=prog,
        description="Run a stalwart pipeline: checkpoints, atomic writes, retries, alerts.",
    )
    parser.add_argument("--version", action=_VersionAction, nargs=0, help="print the version")
    # `prog` given, or argparse formats a usage line (and reads the terminal width) for it.
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", prog=prog)
    builders = {
        "run": _add_run,
        "status": _add_status,
        "reset": _add_reset,
        "deadletter": _add_deadletter,
        "runs": _add_runs,
        "report": _add_report,
        "gc": _add_gc,
        "backfill": _add_backfill,
    }
    if standalone:
        builders["demo"] = _add_demo
        builders["chaos"] = _add_chaos
    many_runs: _Parser | None = None  # runs, gc, backfill: no --run-id (built if needed)
    for name, add in builders.items():
        if command not in builders or name == command:
            parent = common
            if name in ("runs", "gc", "backfill"):
                many_runs = parent = many_runs or _common(standalone, run_id=False)
            add(sub, parent)
    return parser


_Commands = argparse._SubParsersAction  # typeshed's name for what add_subparsers() returns


def parse_param(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` -> ``(KEY, VALUE)``; the value may be empty or hold ``=``."""
    key, equals, value = text.partition("=")
    if not equals or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _add_run(sub: _Commands[_Parser], common: _Parser) -> None:
    run = sub.add_parser(
        "run",
        parents=[common],
        help="run the pipeline (default)",
        description="Run the pipeline: steps already done for this run ID are skipped.",
        epilog="other commands: status, reset, deadletter (COMMAND --help for each)",
    )
    run.add_argument(
        "-p",
        "--param",
        metavar="KEY=VALUE",
        action="append",
        type=parse_param,
        default=[],
        help="a run parameter (ctx.params; repeatable); a step that ran with other "
        "parameters runs again",
    )
    how = run.add_mutually_exclusive_group()
    how.add_argument("--force", action="store_true", help="clear all markers, re-run every step")
    how.add_argument("--step", metavar="NAME", help="re-run NAME and every step after it")


def _add_runs(sub: _Commands[_Parser], common: _Parser) -> None:
    runs = sub.add_parser("runs", parents=[common], help="every run, newest first")
    runs.add_argument("--json", action="store_true", help="machine-readable output")
    runs.add_argument("--limit", type=int, metavar="N", help="only the newest N runs")


def _add_report(sub: _Commands[_Parser], common: _Parser) -> None:
    report = sub.add_parser("report", parents=[common], help="one HTML page about a run")
    report.add_argument("-o", "--output", metavar="FILE", help="default: PIPELINE-RUN_ID.html")


def _add_gc(sub: _Commands[_Parser], common: _Parser) -> None:
    gc = sub.add_parser("gc", parents=[common], help="delete old runs and settled dead letters")
    which = gc.add_mutually_exclusive_group(required=True)
    which.add_argument("--keep-last", type=int, metavar="N", help="keep the newest N runs")
    which.add_argument(
        "--older-than", type=float, metavar="DAYS", help="delete runs older than DAYS days"
    )
    gc.add_argument("--dry-run", action="store_true", help="say what would go, delete nothing")


def _add_backfill(sub: _Commands[_Parser], common: _Parser) -> None:
    backfill = sub.add_parser("backfill", parents=[common], help="run every day FROM..TO")
    backfill.add_argument("first", metavar="FROM", help="first run ID, YYYY-MM-DD")
    backfill.add_argument("last", metavar="TO", help="last run ID, YYYY-MM-DD (inclusive)")
    backfill.add_argument(
        "-p",
        "--param",
        metavar="KEY=VALUE",
        action="append",
        type=parse_param,
        default=[],
        help="a run parameter for every day (repeatable)",
    )
    backfill.add_argument(
        "--keep-going", action="store_true", help="run the other days after a failure"
    )


def _add_chaos(sub: _Commands[_Parser], common: _Parser) -> None:
    from ._chaos import add_chaos_parser  # noqa: PLC0415 - only `stalwart chaos` needs it

    add_chaos_parser(sub)


def _add_status(sub: _Commands[_Parser], common: _Parser) -> None:
    status = sub.add_parser("status", parents=[common], help="show each step of a run")
    status.add_argument("--json", action="store_true", help="machine-readable output")


def _add_reset(sub: _Commands[_Parser], common: _Parser) -> None:
    reset = sub.add_parser("reset", parents=[common], help="clear markers without running")
    reset.add_argument("--step", metavar="NAME", help="clear NAME and every step after it")


def _add_demo(sub: _Commands[_Parser], common: _Parser) -> None:
    demo = sub.add_parser("demo", help="run the reference pipeline against a flaky server")
    demo.add_argument("--fail", metavar="STEP", help="make STEP raise (shows the alert)")
    demo.add_argument("--interrupt", metavar="STEP", help="Ctrl-C inside STEP (no alert)")
    demo.add_argument("--root", metavar="DIR", help="state directory (default: a temp dir)")
    demo.add_argument("--log-format", choices=("json", "text"), default="text")
    demo.add_argument("-v", "--verbose", action="store_true")


def _add_deadletter(sub: _Commands[_Parser], common: _Parser) -> None:
    dead = sub.add_parser("deadletter", help="list, show, replay or discard dead letters")
    dead_sub = dead.add_subparsers(dest="action", metavar="ACTION", required=True)
    dl_list = dead_sub.add_parser("list", parents=[common], help="a table of dead letters")
    dl_list.add_argument("--json", action="store_true", help="machine-readable output")
    dead_sub.add_parser("show", parents=[common], help="everything in one envelope").add_argument(
        "id", metavar="ID"
    )
    replay = dead_sub.add_parser("replay", parents=[common], help="re-send a dead letter")
    which = replay.add_mutually_exclusive_group(required=True)
    which.add_argument("id", metavar="ID", nargs="?")
    which.add_argument("--all", action="store_true", help="every pending dead letter")
    replay.add_argument("--force", action="store_true", help="replay even a superseded dead letter")
    dead_sub.add_parser("discard", parents=[common], help="mark one as discarded").add_argument(
        "id", metavar="ID"
    )


def with_default_command(argv: list[str], *, standalone: bool = True) -> list[str]:
    """``argv`` with ``run`` in front when it names no sub-command. A pipeline's own
    ``--help`` is the help of ``run`` (its options), which names the other commands."""
    if not standalone and argv[:1] in (["-h"], ["--help"]):
        return ["run", *argv]
    if not argv or (argv[0] not in COMMANDS and argv[0] not in ("-h", "--help", "--version")):
        return ["run", *argv]
    return argv


def mistyped_command(argv: list[str], *, standalone: bool) -> str | None:
    """If the first word looks like a mistyped sub-command, what to say (exit 2): "unknown
    command 'stauts' (did you mean status?)". For ``stalwart``, a first word that is a
    pipeline (a file, a module) is not a command at all."""
    if not argv or argv[0].startswith("-") or argv[0] in COMMANDS:
        return None
    word = argv[0]
    import difflib  # noqa: PLC0415 - only for a word that is not a command

    close = difflib.get_close_matches(word, COMMANDS, n=1, cutoff=0.6)
    if standalone:
        import os  # noqa: PLC0415

        if not close or os.path.exists(word.partition(":")[0]) or "." in word or ":" in word:
            return None  # `stalwart pipeline.py ...`, `stalwart pkg.mod:name ...`: a run
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"unknown command {word!r}{hint}; the commands are: {', '.join(COMMANDS[:4])}"
