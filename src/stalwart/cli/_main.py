"""The command line shared by ``pipeline.main()`` and the ``stalwart`` console script.

``run`` is the default sub-command, so ``python my_pipeline.py --force`` works. Library
errors become exit codes and one readable paragraph on stderr:

    0 success · 1 a step failed (or a replay was refused) · 2 usage error
    75 run locked by another process · 130 interrupted (SIGINT) · 143 terminated (SIGTERM)
"""

from __future__ import annotations

import contextlib
import gc
import io
import logging
import os
import signal
import sys
from collections.abc import Iterator
from types import FrameType, SimpleNamespace

from .._errors import RunLockedError, UsageError
from .._logging import TextFormatter, configure
from .._pipeline import Pipeline
from .._runner import Failure, Terminated
from .._time import today

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any, TextIO

    from .._runner import Run

__all__ = ["console_main", "run_cli"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_LOCKED = 75
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


def console_main() -> None:
    """Entry point of the ``stalwart`` console script."""
    freeze_start_up()
    sys.exit(run_cli(sys.argv[1:], pipeline=None))


def freeze_start_up() -> None:
    """Move what exists when the command line starts (the modules imported so far, the
    pipeline's declaration) out of the garbage collector's generations: ``gc.freeze()``,
    once per process. Called by the two entry points that end the process (``main()``,
    the console script), never by ``run_cli``.

    Those objects live until the process exits, yet every full collection walks them
    again, and so do the collections of the interpreter's shutdown: 12 million
    instructions (~3 ms, a tenth of a 3-step run) for what a run imports. Frozen, they are
    still freed by reference counting; only a reference cycle among them is left to the
    process's exit. What the run creates is collected, and finalized at exit, as before.
    """
    freeze = getattr(gc, "freeze", None)  # CPython's; an interpreter without it skips this
    if freeze is not None and gc.get_freeze_count() == 0:
        freeze()


def run_cli(argv: list[str], *, pipeline: Pipeline | None, stderr: TextIO | None = None) -> int:
    """Parse ``argv``, do it, return the exit code (never raises for library errors)."""
    err = stderr or sys.stderr
    standalone = pipeline is None
    prog = "stalwart" if standalone else os.path.basename(sys.argv[0] or "pipeline")
    args = fast_run_args(argv, standalone=standalone)
    if args is None:
        from ._parser import (  # noqa: PLC0415 - argparse: any other command line
            build_parser,
            mistyped_command,
            with_default_command,
        )

        mistyped = mistyped_command(argv, standalone=standalone)
        if mistyped is not None:
            print(f"{prog}: error: {mistyped}", file=err)
            return EXIT_USAGE
        words = with_default_command(argv, standalone=standalone)
        parser = build_parser(prog, standalone=standalone, command=words[0])
        try:
            args = parser.parse_args(words)
        except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
            return int(exc.code or 0)
    if args.command == "demo":
        from ._demo import run_demo  # noqa: PLC0415 - the demo's server, only for the demo

        return run_demo(args, run_cli)
    if args.command == "chaos":
        from ._chaos import chaos_command  # noqa: PLC0415

        return chaos_command(args)
    verbose = bool(getattr(args, "verbose", False))
    root_logger = logging.getLogger()
    level = root_logger.level
    handler = configure(args.log_format, verbose=verbose, stream=err)
    # httpx logs every request at INFO; our retry and failure lines already say what matters.
    chatty = logging.getLogger("httpx")
    chatty_level = chatty.level
    if not verbose:
        chatty.setLevel(logging.WARNING)
    say = _Say(prog, err, as_json=not isinstance(handler.formatter, TextFormatter))
    try:
        out: TextIO = _JsonLines() if say.as_json else err  # type: ignore[assignment]  # JSON: every line JSON
        return _run_command(args, pipeline, err=out, say=say, verbose=verbose)
    finally:
        root_logger.removeHandler(handler)
        root_logger.setLevel(level)
        chatty.setLevel(chatty_level)


def fast_run_args(argv: list[str], *, standalone: bool) -> argparse.Namespace | None:
    """The command line a scheduler runs, parsed without argparse: ``[run] [--run-id ID]``
    for a pipeline's ``main()``, ``run PIPELINE [--run-id ID]`` for ``stalwart``. ``None``
    for anything else (other options, ``--run-id=ID``, abbreviations such as ``--run``, an ID
    or a pipeline starting with ``-``, help), which argparse parses - and then explains.

    The result is what argparse gives for the same words (``tests/test_cli_fast_path.py``
    compares them): argparse with stalwart's parsers costs ~3 ms of every start
    (``argparse``, ``gettext`` and ``locale``, and the parsers it builds).
    """
    words = argv[1:] if argv[:1] == ["run"] else argv if not standalone else None
    if words is None:  # `stalwart` names its sub-command first: `run PIPELINE ...`
        return None
    target = None
    if standalone:
        if not words or words[0].startswith("-"):
            return None
        target, words = words[0], words[1:]
    if words and (len(words) != 2 or words[0] != "--run-id" or words[1].startswith("-")):
        return None
    fields: dict[str, object] = {
        "version": None,
        "command": "run",
        "run_id": words[1] if words else None,
        "log_format": None,
        "verbose": False,
        "param": [],
        "force": False,
        "step": None,
    }
    if standalone:
        fields["target"] = target
    namespace: argparse.Namespace = SimpleNamespace(**fields)  # type: ignore[assignment]
    return namespace


def _run_command(
    args: argparse.Namespace,
    pipeline: Pipeline | None,
    *,
    err: TextIO,
    say: _Say,
    verbose: bool,
) -> int:
    """Load the pipeline, do the command, turn what it raised into an exit code."""
    try:
        with _sigterm_as_interrupt():
            if pipeline is None:
                from ._load import load_pipeline  # noqa: PLC0415 - `stalwart run file.py` only

                pipeline = load_pipeline(args.target)
            if args.command == "run":
                run = pipeline.start(
                    run_id=args.run_id,
                    force=args.force,
                    from_step=args.step,
                    params=dict(args.param),
                )
                if run.failure is None:
                    return EXIT_OK
                return _failed(run, run.failure, say, err, verbose=verbose)
            return _dispatch(args, pipeline, err)
    except BrokenPipeError:  # `status | head`: the reader left; nothing to say
        with contextlib.suppress(OSError):
            sys.stdout.close()
        return EXIT_OK
    except UsageError as exc:
        return say(EXIT_USAGE, f"error: {exc}")
    except RunLockedError as exc:
        return say(EXIT_LOCKED, str(exc))
    except Terminated:
        return say(EXIT_TERMINATED, "terminated (SIGTERM); the unfinished step was not marked done")
    except KeyboardInterrupt:
        return say(EXIT_INTERRUPTED, "interrupted; the unfinished step was not marked done")
    except Exception as exc:  # noqa: BLE001 - status, reset, deadletter: exit 1 + what broke
        from .._printable import printable  # noqa: PLC0415 - only when failing
        from .._redact import scrub_registered  # noqa: PLC0415

        error = f"{type(exc).__name__}: {scrub_registered(str(exc))}"
        trace = _traceback(exc, say, err) if verbose else ""
        return say(
            EXIT_FAILED, f"{args.command} failed: {printable(error)}", error=error, trace=trace
        )


def _traceback(exc: BaseException, say: _Say, err: TextIO) -> str:
    """The traceback of ``exc``, secrets masked: printed for people, or returned to go in the
    final JSON record's ``traceback`` field."""
    import traceback  # noqa: PLC0415

    from .._redact import scrub_registered  # noqa: PLC0415

    trace = scrub_registered("".join(traceback.format_exception(exc)))
    if not say.as_json:
        print(trace, end="", file=err)
    return trace


def _failed(run: Run, failure: Failure, say: _Say, err: TextIO, *, verbose: bool) -> int:
    """Exit 1 and the paragraph that says what failed and how to resume."""
    trace = _traceback(failure.error, say, err) if verbose else ""
    say(
        EXIT_FAILED,
        explain_failure(
            failure,
            run_id=run.run_id,
            pipeline=run.name,
            verbose=verbose,
            ran=bool(run.ran or run.skipped),
        ),
        error=f"{failure.error_type}: {failure.message}",
        trace=trace,
    )
    return failure.exit_code


def explain_failure(
    failure: Failure, *, run_id: str, pipeline: str, verbose: bool, ran: bool = True
) -> str:
    """The paragraph a person reads when a run failed."""
    withdrawn: tuple[str, ...] = getattr(failure.error, "withdrawn", ())  # a failed commit
    if withdrawn:
        steps = ", ".join(withdrawn)
        where = (
            f"the disk failed committing step{'s' if len(withdrawn) > 1 else ''} {steps} of "
            f"{pipeline} (run {run_id}) after {'they' if len(withdrawn) > 1 else 'it'} ran "
            f"(to be run again)"
        )
    elif failure.step:
        where = f"step {failure.step} of {pipeline} (run {run_id}) failed"
    else:
        where = f"run {run_id} of {pipeline} failed before its first step; no step ran"
    from .._printable import printable  # noqa: PLC0415 - only when failing

    lines = [
        f"{printable(where)}; resume with: {printable(failure.resume_command)}.",
        f"  {failure.error_type}: {printable(failure.message)}",
    ]
    from .._reporting import replay_command  # noqa: PLC0415 - only when failing

    for envelope_id in failure.dead_letter_ids:
        lines.append(
            f"  Kept dead letter {envelope_id}; re-send it with: "
            f"{replay_command(failure.resume_command, envelope_id)}"
        )
    if withdrawn:
        lines.append("  Steps finished before them keep their checkpoints.")
    elif failure.step and ran:
        lines.append("  Finished steps keep their checkpoints.")
    if not failure.alert_sent:
        lines.append("  The alert could not be delivered to every alerter (see the log).")
    if not verbose:
        lines[-1] += " Add --verbose for the traceback."
    return "\n".join(lines)


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
                from .._redact import scrub_registered  # noqa: PLC0415 - only when failing

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


def _dispatch(args: argparse.Namespace, pipeline: Pipeline, err: TextIO) -> int:
    if args.command in ("runs", "report", "gc", "backfill"):
        from ._operations import operations_command  # noqa: PLC0415

        return operations_command(args, pipeline, err)
    run_id = args.run_id if args.run_id is not None else today()
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
    from ._deadletter import deadletter_command  # noqa: PLC0415

    return deadletter_command(args, pipeline, err)
