"""The command line shared by ``pipeline.main()`` and the ``stalwart`` console script.

``run`` is the default sub-command, so ``python my_pipeline.py --force`` works. Library
errors become exit codes and one readable paragraph on stderr:

    0 success · 1 a step failed (or a replay was refused) · 2 usage error
    75 run locked by another process · 130 interrupted (SIGINT) · 143 terminated (SIGTERM)
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import logging
import os
import signal
import sys
from collections.abc import Iterator
from types import FrameType, ModuleType
from typing import TYPE_CHECKING, Any, TextIO, cast

from ._errors import RunLockedError, UsageError
from ._pipeline import Pipeline, Terminated

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["console_main", "run_cli"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_LOCKED = 75
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143

COMMANDS = ("run", "status", "reset", "deadletter", "demo")


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


def _common(standalone: bool) -> _Parser:
    parent = _Parser(add_help=False)
    if standalone:
        parent.add_argument(
            "target",
            metavar="PIPELINE",
            help="path/to/file.py[:name] or package.module[:name]",
        )
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

        parser.exit(message=f"stalwart {version('stalwart')}\n")


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
    }
    if standalone:
        builders["demo"] = _add_demo
    for name, add in builders.items():
        if command not in builders or name == command:
            add(sub, common)
    return parser


_Commands = argparse._SubParsersAction  # typeshed's name for what add_subparsers() returns


def _add_run(sub: _Commands[_Parser], common: _Parser) -> None:
    run = sub.add_parser("run", parents=[common], help="run the pipeline (default)")
    how = run.add_mutually_exclusive_group()
    how.add_argument("--force", action="store_true", help="clear all markers, re-run every step")
    how.add_argument("--step", metavar="NAME", help="re-run NAME and every step after it")


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
    dead_sub.add_parser("discard", parents=[common], help="mark one as discarded").add_argument(
        "id", metavar="ID"
    )


def _with_default_command(argv: list[str]) -> list[str]:
    if not argv or (argv[0] not in COMMANDS and argv[0] not in ("-h", "--help", "--version")):
        return ["run", *argv]
    return argv


def console_main() -> None:
    """Entry point of the ``stalwart`` console script."""
    sys.exit(run_cli(sys.argv[1:], pipeline=None))


def run_cli(argv: list[str], *, pipeline: Pipeline | None, stderr: TextIO | None = None) -> int:
    """Parse ``argv``, do it, return the exit code (never raises for library errors)."""
    err = stderr or sys.stderr
    standalone = pipeline is None
    prog = "stalwart" if standalone else os.path.basename(sys.argv[0] or "pipeline")
    words = _with_default_command(argv)
    parser = build_parser(prog, standalone=standalone, command=words[0])
    try:
        args = parser.parse_args(words)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code or 0)
    if args.command == "demo":
        from ._demo import run_demo  # noqa: PLC0415

        return run_demo(args)
    verbose = bool(getattr(args, "verbose", False))
    root_logger = logging.getLogger()
    level = root_logger.level
    from ._logging import TextFormatter, configure  # noqa: PLC0415

    handler = configure(args.log_format, verbose=verbose, stream=err)
    # httpx logs every request at INFO; our retry and failure lines already say what matters.
    chatty = logging.getLogger("httpx")
    chatty_level = chatty.level
    if not verbose:
        chatty.setLevel(logging.WARNING)
    say = _Say(prog, err, as_json=not isinstance(handler.formatter, TextFormatter))
    try:
        out = (
            cast("TextIO", _JsonLines()) if say.as_json else err
        )  # JSON asked for: every stderr line is JSON
        return _run_command(args, pipeline, prog=prog, argv=argv, err=out, say=say, verbose=verbose)
    finally:
        root_logger.removeHandler(handler)
        root_logger.setLevel(level)
        chatty.setLevel(chatty_level)


def _run_command(
    args: argparse.Namespace,
    pipeline: Pipeline | None,
    *,
    prog: str,
    argv: list[str],
    err: TextIO,
    say: _Say,
    verbose: bool,
) -> int:
    """Load the pipeline, do the command, turn what it raised into an exit code."""
    try:
        with _sigterm_as_interrupt():
            if pipeline is None:
                pipeline = load_pipeline(args.target)
            return _dispatch(args, pipeline, prog, argv, err)
    except BrokenPipeError:  # `status | head`: the reader left; nothing to say
        with contextlib.suppress(OSError):
            sys.stdout.close()
        return EXIT_OK
    except UsageError as exc:
        if any(str(n).startswith("stalwart:") for n in getattr(exc, "__notes__", ())):
            return say(EXIT_FAILED, _explain_failure(exc, verbose), error=str(exc))  # in a step
        return say(EXIT_USAGE, f"error: {exc}")
    except RunLockedError as exc:
        return say(EXIT_LOCKED, str(exc))
    except Terminated:
        return say(EXIT_TERMINATED, "terminated (SIGTERM); the unfinished step was not marked done")
    except KeyboardInterrupt:
        return say(EXIT_INTERRUPTED, "interrupted; the unfinished step was not marked done")
    except Exception as exc:  # noqa: BLE001 - any step failure becomes exit 1 + a paragraph
        trace = ""
        if verbose:
            import traceback  # noqa: PLC0415

            from ._redact import scrub_registered  # noqa: PLC0415

            trace = scrub_registered("".join(traceback.format_exception(exc)))
            if not say.as_json:  # under JSON: the final record's traceback field
                print(trace, end="", file=err)
        return say(
            EXIT_FAILED,
            _explain_failure(exc, verbose),
            error=f"{type(exc).__name__}: {exc}",
            trace=trace,
        )


class _Say:
    """The last word of a command on stderr: a paragraph for people, or - under
    ``--log-format json`` - one more JSON record, so log shippers see only JSON lines."""

    def __init__(self, prog: str, err: TextIO, *, as_json: bool) -> None:
        self.prog = prog
        self.err = err
        self.as_json = as_json

    def __call__(self, code: int, message: str, *, error: str = "", trace: str = "") -> int:
        if self.as_json:
            extra: dict[str, object] = {"exit_code": code}
            if error:
                from ._redact import scrub_registered  # noqa: PLC0415 - only when failing

                extra["error"] = scrub_registered(error)
            if trace:
                extra["traceback"] = trace.rstrip("\n")
            logging.getLogger("stalwart.cli").error(" ".join(message.split()), extra=extra)
        else:
            print(f"{self.prog}: {message}", file=self.err)
        return code


class _JsonLines(io.TextIOBase):
    """A stderr for ``--log-format json``: each line a command prints to it (``deadletter
    replay ID: ...``) becomes one JSON record on ``stalwart.cli``, never a bare line."""

    def __init__(self) -> None:
        self._partial = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        *lines, self._partial = (self._partial + text).split("\n")
        for line in lines:
            if line.strip():
                logging.getLogger("stalwart.cli").error(line)
        return len(text)


def _explain_failure(exc: BaseException, verbose: bool) -> str:
    notes = [n for n in getattr(exc, "__notes__", []) if n.startswith("stalwart:")]
    hint = notes[-1].removeprefix("stalwart: ") if notes else "the run failed"
    from ._printable import printable  # noqa: PLC0415
    from ._redact import scrub_registered  # noqa: PLC0415 - a step's message may hold a secret

    return (
        f"{printable(hint)}.\n  {type(exc).__name__}: {printable(scrub_registered(str(exc)))}\n"
        "  Finished steps keep their checkpoints."
        + ("" if verbose else " Add --verbose for the traceback.")
    )


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into ``Terminated`` (a KeyboardInterrupt) while the command runs."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise Terminated

    try:
        previous: Any = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _dispatch(
    args: argparse.Namespace, pipeline: Pipeline, prog: str, argv: list[str], err: TextIO
) -> int:
    from ._pipeline import today  # noqa: PLC0415

    run_id = args.run_id if args.run_id is not None else today()
    if args.command == "run":
        # No RunResult to build (and no pathlib to import for it); the resume hint of an
        # alert is worked out only if a step fails.
        pipeline._run(run_id=run_id, force=args.force, from_step=args.step)
        return EXIT_OK
    if args.command == "status":
        from ._status import print_status, status_json  # noqa: PLC0415

        if args.json:
            print(status_json(pipeline, run_id))
        else:
            print_status(pipeline, run_id)
        return EXIT_OK
    if args.command == "reset":
        cleared = pipeline.reset(run_id=run_id, step=args.step)
        print(
            f"cleared {len(cleared)} marker(s) of run {run_id}"
            + (f": {', '.join(cleared)}" if cleared else "")
        )
        return EXIT_OK
    from ._deadletter_cli import deadletter_command  # noqa: PLC0415

    return deadletter_command(args, pipeline, err)


# -- loading a pipeline from the command line ------------------------------------------------


def load_pipeline(target: str) -> Pipeline:
    """``path/to/file.py[:name]`` or ``package.module[:name]`` -> the ``Pipeline`` object.

    Without ``:name``, the module must hold exactly one ``Pipeline``. The file is imported
    under its own name, not as ``__main__``, so its ``if __name__ == "__main__"`` block
    does not run.
    """
    from pathlib import Path  # noqa: PLC0415 - a run from `pipeline.main()` needs no pathlib

    spec, _, attribute = target.partition(":")
    if spec.endswith(".py") or "/" in spec or Path(spec).is_file():
        module = _import_file(Path(spec))
    else:
        if "" not in sys.path and os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())  # `stalwart status mypipe:pipeline` beside mypipe.py
        try:
            module = importlib.import_module(spec)
        except ImportError as exc:
            raise UsageError(f"cannot import pipeline module {spec!r}: {exc}") from None
    found, name = _find_pipeline(module, attribute, target)
    if found.source is None:
        found.source = f"{spec}:{name}"
    return found


def _import_file(path: Path) -> ModuleType:
    if not path.is_file():
        raise UsageError(f"no pipeline file at {str(path)!r}")
    name = f"stalwart_target_{path.stem}".replace("-", "_")
    import importlib.util  # noqa: PLC0415 - only `stalwart run file.py` loads a file

    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise UsageError(f"cannot load {str(path)!r} as Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    directory = str(path.resolve().parent)
    if directory not in sys.path:
        sys.path.insert(0, directory)
    spec.loader.exec_module(module)
    return module


def _find_pipeline(module: ModuleType, attribute: str, target: str) -> tuple[Pipeline, str]:
    if attribute:
        found = getattr(module, attribute, None)
        if not isinstance(found, Pipeline):
            raise UsageError(f"{target!r}: {attribute!r} is not a stalwart.Pipeline")
        return found, attribute
    candidates = {k: v for k, v in vars(module).items() if isinstance(v, Pipeline)}
    if len(candidates) == 1:
        [(name, found)] = candidates.items()
        return found, name
    if not candidates:
        raise UsageError(f"{target!r} defines no stalwart.Pipeline")
    raise UsageError(
        f"{target!r} defines several pipelines ({', '.join(sorted(candidates))}); "
        f"name one as {target}:NAME"
    )
