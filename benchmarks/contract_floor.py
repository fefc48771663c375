"""A lean implementation of stalwart's documented contract in plain Python: what ``make bench``
compares stalwart's whole-process runs with.

``plain_floor.py`` is the floor of the disk: durable writes and two ``stat`` calls, with
nothing imported but ``os`` and ``sys``. The public contract (docs/design.md, the README)
asks a pipeline for more than that, whoever implements it:

- a CLI: ``[run] [--run-id ID] [--force | --step NAME] [--log-format json|text]``; a run ID
  that is not ``[A-Za-z0-9][A-Za-z0-9._-]{0,127}`` is a usage error (exit 2);
- logs through the standard ``logging`` module, one JSON object per line on stderr when
  stderr is not a terminal (``timestamp``, ``level``, ``logger``, ``message``, then
  ``pipeline``, ``run_id``, ``step``...): the lines stalwart's runner logs;
- one process per run (``flock`` on the run's lock file), the run's stale temp files swept
  first, SIGTERM turned into an interrupt (exit 143, no marker for the unfinished step);
- a run summary (``running``, then ``succeeded``) for ``runs``, and a look for an open
  alert streak when a run succeeds (one ``stat``), as stalwart does on a local root;
- per step, a journal line when it starts (the marker's ``runs`` counts starts across
  processes) and one when it is done; after its output is durable (temp, ``fsync``,
  rename, ``fsync`` of the directory), a JSON marker ``.checkpoints/<step>.done`` (step,
  run_id, started, finished, duration, attempts, retries, runs, and each output's name,
  size and sha256);
- a step is skipped only if its marker parses, names this step and run, and every output it
  records is there with the recorded size; a corrupt marker is a warning and a re-run.

The marker's commit is a parameter (``--syncs``), so that the floor does what stalwart does:

- ``--syncs 4`` (the default): the marker written like the output (temp, ``fsync``, rename,
  ``fsync`` of ``.checkpoints/``), the journal's lines appended without a sync. 4 syncs per
  step, as stalwart's step commit does today.
- ``--syncs 3``: the marker renamed into place without syncs, then the journal's ``done``
  line appended and made durable with one ``fdatasync``: the output, its directory, the
  journal (stalwart's step commit before the journal's sync was shared).
- ``--syncs 2``: the same, the journal's ``fdatasync`` shared as stalwart shares it
  (docs/crash-safety.md, "The step commit"): at once if the last one is a second old (or
  there was none), else at the 32nd waiting line, a later commit a second after the last
  sync, or the end of the run.

It is lean on purpose, so that it is a floor: nothing is imported that a run does not use
(``argparse`` only for a command line other than ``[run] [--run-id ID]``; a sha256 only
when a step writes, and Python's built-in one, not OpenSSL's, as stalwart hashes small
outputs; a JSON formatter of a few lines over ``json.dumps``), and ``make bench`` runs it
byte-compiled, as an installed package runs (``python -c "import contract_floor..."``), and
it moves what its start-up made out of the garbage collector's generations (``gc.freeze()``)
as stalwart's ``main()`` does.
Left out: retries, alerts, metrics, dead letters, status, secrets in logs (none is used by
these runs: no HTTP call, no alerter, no secret).

``python contract_floor.py chain N ROOT [--syncs 2|3|4] [run ...]`` runs ``N`` steps with the
run ID ``bench`` (unless ``run ...`` says otherwise) in the documented layout: outputs in
``ROOT/bench/runs/<run_id>/``, markers in its ``.checkpoints/``, as stalwart's pipeline
``bench`` with the root ``ROOT``; step ``i`` writes ``out-<i>.txt`` holding ``step <i>\\n``,
as in ``workloads.py``.
"""

from __future__ import annotations

import contextlib  # imported by logging anyway
import gc
import json
import logging
import os
import re  # imported by logging anyway
import sys
import time

from plain_floor import durable_write, output_bytes, output_name, step_name

TYPE_CHECKING = False  # nothing imported for annotations only
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

__all__ = ["Args", "JsonLines", "main", "parse_args", "run_chain"]

MARKERS = ".checkpoints"
JOURNAL = ".journal.jsonl"
SUMMARY = ".summary.json"
STREAK = ".alert-streak.json"
PIPELINE = "bench"
RUN_ID = "bench"
EXIT_USAGE = 2
EXIT_TERMINATED = 143
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}

log = logging.getLogger("contract_floor")


class Terminated(KeyboardInterrupt):
    """SIGTERM, turned into an interrupt (no marker for the unfinished step, exit 143)."""


def utc(seconds: float, places: int) -> str:
    """``seconds`` since the epoch as UTC RFC 3339 with ``places`` decimals."""
    whole = int(seconds)
    fraction = int((seconds - whole) * 10**places)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{fraction:0{places}d}Z"


class JsonLines(logging.Formatter):
    """One JSON object per line: timestamp, level, logger, message, then the extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "timestamp": utc(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                line[key] = value
        return json.dumps(line, default=str, ensure_ascii=False)


class Args:
    """The parsed command line."""

    def __init__(
        self, run_id: str, force: bool = False, step: str | None = None, fmt: str | None = None
    ) -> None:
        self.run_id, self.force, self.step, self.log_format = run_id, force, step, fmt


def _today() -> str:
    return time.strftime("%Y-%m-%d", time.gmtime())


def parse_args(argv: list[str]) -> Args:
    """``[run] [--run-id ID]`` without argparse (the common case: cron); anything else
    through argparse, which then also prints help and usage errors (exit 2)."""
    rest = argv[1:] if argv[:1] == ["run"] else argv
    if not rest or (len(rest) == 2 and rest[0] == "--run-id" and _RUN_ID.fullmatch(rest[1])):
        return Args(rest[1] if rest else _today())
    import argparse  # noqa: PLC0415 - only for the rarer command lines

    def run_id(text: str) -> str:
        if not _RUN_ID.fullmatch(text):
            raise argparse.ArgumentTypeError(f"invalid run ID {text!r}")
        return text

    parser = argparse.ArgumentParser(prog="contract_floor.py chain N ROOT")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    run = sub.add_parser("run", help="run the chain")
    run.add_argument("--run-id", type=run_id, default=_today())
    how = run.add_mutually_exclusive_group()
    how.add_argument("--force", action="store_true", help="clear all markers, re-run every step")
    how.add_argument("--step", metavar="NAME", help="re-run NAME and every step after it")
    run.add_argument("--log-format", choices=("json", "text"), help="default: json unless a TTY")
    args = parser.parse_args(argv if argv[:1] == ["run"] else ["run", *argv])
    return Args(args.run_id, args.force, args.step, args.log_format)


def configure_logging(fmt: str | None) -> None:
    """The root logger to stderr at INFO: JSON lines, or text on a terminal."""
    if fmt is None:
        fmt = "text" if sys.stderr.isatty() else "json"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonLines()
        if fmt == "json"
        else logging.Formatter("%(asctime)s %(levelname)-7s %(message)s")
    )
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)


def _done(marker: str, state: str, args: Args, scope: dict[str, object]) -> bool:
    """The documented skip rule: the marker parses and names this step and run, and its
    outputs are there at the recorded size."""
    try:
        with open(marker, "rb") as handle:
            data = json.loads(handle.read())
        ours = data["step"] == scope["step"] and data["run_id"] == args.run_id
        outputs = [(str(o["name"]), int(o["size"])) for o in data["outputs"]]
    except FileNotFoundError:
        return False
    except (OSError, ValueError, LookupError, TypeError):
        ours = False
    if not ours:
        log.warning("step %s: unreadable marker, running it again", scope["step"], extra=scope)
        return False
    for name, size in outputs:
        try:
            actual = os.stat(os.path.join(state, name)).st_size
        except FileNotFoundError:
            actual = -1
        if actual != size:
            log.info(
                "step %s: output %s changed, running it again", scope["step"], name, extra=scope
            )
            return False
    return True


_SHA256: list[Callable[[bytes], Any]] = []


def sha256_hex(data: bytes) -> str:
    """sha256 of a small output without loading OpenSSL (~2.5 ms), as stalwart hashes small
    outputs: Python's built-in sha256 (``_sha2`` from 3.12, ``_sha256`` before); ``hashlib``
    only on a Python built without it. Looked up on first use (a re-run never hashes), once,
    this version's name first (a missing module is searched for along all of ``sys.path``)."""
    if not _SHA256:
        names = ("_sha2", "_sha256") if sys.version_info >= (3, 12) else ("_sha256", "_sha2")
        for name in (*names, "hashlib"):
            try:
                _SHA256.append(__import__(name).sha256)
                break
            except (ImportError, AttributeError):
                continue
    return str(_SHA256[0](data).hexdigest())


def _replace(path: str, data: bytes) -> None:
    """Atomic, not synced: temp, write, rename."""
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _lock_and_sweep(state: str) -> int:
    """One process per run (``flock``), then the stale temp files of killed writers."""
    import fcntl  # noqa: PLC0415 - part of the contract, imported where it is used

    fd = os.open(os.path.join(state, ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    for directory in (state, os.path.join(state, MARKERS)):
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.name.endswith(".tmp") and entry.name.startswith("."):
                    os.unlink(entry.path)
    return fd


def _summary(state: str, run_id: str, status: str, started: str) -> None:
    """The run's summary for ``runs`` (atomic, not synced: a lost one is a statistic)."""
    data = {"pipeline": PIPELINE, "run_id": run_id, "state": status, "started": started}
    _replace(os.path.join(state, SUMMARY), json.dumps(data).encode())


class Journal:
    """``.journal.jsonl``: one JSON line per step start and end, read back only for the
    number of earlier starts of a step that runs (a re-run that skips never reads it)."""

    def __init__(self, state: str) -> None:
        self.path = os.path.join(state, JOURNAL)
        self.fd = -1
        self.created = False
        self.runs: dict[str, int] | None = None
        self.waiting = 0  # done lines not yet synced
        self.synced_at: float | None = None

    def starts(self, step: str) -> int:
        if self.runs is None:
            self.runs = {}
            with contextlib.suppress(FileNotFoundError), open(self.path, "rb") as lines:
                for line in lines:
                    with contextlib.suppress(ValueError, LookupError, TypeError):
                        record = json.loads(line)
                        self.runs[record["step"]] = int(record["runs"])
        return self.runs.get(step, 0)

    def append(self, record: dict[str, object]) -> None:
        """Append one line (not synced)."""
        if self.fd < 0:
            flags = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC
            try:
                self.fd = os.open(self.path, flags | os.O_CREAT | os.O_EXCL, 0o600)
                self.created = True
            except FileExistsError:
                self.fd = os.open(self.path, flags)
        os.write(self.fd, (json.dumps(record, separators=(",", ":")) + "\n").encode())

    def commit(self, record: dict[str, object], *, shared: bool) -> None:
        """Append a step's done line and make it durable: at once, or (``shared``) as
        stalwart shares the sync: at once only if the last one is a second old (or there was
        none), else at the 32nd waiting line or later (``close``: the run's end)."""
        self.append(record)
        self.waiting += 1
        last = self.synced_at
        if not shared or last is None or time.monotonic() - last >= 1.0 or self.waiting >= 32:
            self.sync()

    def sync(self) -> None:
        """Make the lines appended so far durable (``fdatasync``; the first time, after
        creating the journal, its directory entry too)."""
        self.waiting, self.synced_at = 0, time.monotonic()
        os.fdatasync(self.fd)
        if self.created:
            self.created = False
            directory = os.open(os.path.dirname(self.path), os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)

    def close(self) -> None:
        if self.fd >= 0:
            if self.waiting:
                self.sync()
            os.close(self.fd)


def run_chain(steps: int, root: str, args: Args, syncs: int = 4) -> int:
    """Run ``steps`` steps under ``root`` as the documented runner would; returns how many
    ran."""
    run_started = time.time()
    state = os.path.join(root, PIPELINE, "runs", args.run_id)
    markers = os.path.join(state, MARKERS)
    os.makedirs(markers, exist_ok=True)
    lock = _lock_and_sweep(state)
    started_text = utc(run_started, 6)
    _summary(state, args.run_id, "running", started_text)
    names = [step_name(index) for index in range(steps)]
    first_cleared = 0 if args.force else names.index(args.step) if args.step else steps
    for name in names[first_cleared:]:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(markers, f"{name}.done"))
    context: dict[str, object] = {"pipeline": PIPELINE, "run_id": args.run_id}
    journal = Journal(state)
    ran = 0
    for index, name in enumerate(names):
        marker = os.path.join(markers, f"{name}.done")
        scope = {**context, "step": name}
        if _done(marker, state, args, scope):
            log.info("step %s already done, skipping", name, extra=scope)
            continue
        runs = journal.starts(name) + 1
        started = time.time()
        record: dict[str, object] = {"step": name, "runs": runs, "started": utc(started, 6)}
        journal.append({**record, "outcome": "running"})
        log.info("step %s started", name, extra={**scope, "attempt": runs})
        data = output_bytes(index)
        durable_write(os.path.join(state, output_name(index)), data)
        finished = time.time()
        record["finished"] = utc(finished, 6)
        marker_data = {
            "format": 1,
            "pipeline": PIPELINE,
            "step": name,
            "run_id": args.run_id,
            "started": record["started"],
            "finished": record["finished"],
            "duration": round(finished - started, 6),
            "attempts": 1,
            "retries": 0,
            "runs": runs,
            "outputs": [
                {
                    "name": output_name(index),
                    "size": len(data),
                    "sha256": sha256_hex(data),
                }
            ],
        }
        encoded = json.dumps(marker_data, separators=(",", ":")).encode()
        if syncs == 4:  # the marker durable by itself; the journal is statistics
            durable_write(marker, encoded)
            journal.append({**record, "outcome": "done"})
        else:  # the journal's done line commits the step: an fdatasync, shared with --syncs 2
            _replace(marker, encoded)
            journal.commit({**record, "outcome": "done"}, shared=syncs == 2)
        log.info(
            "step %s done in %.3f s",
            name,
            finished - started,
            extra={
                **scope,
                "attempt": runs,
                "duration_s": round(finished - started, 6),
                "retries": 0,
            },
        )
        ran += 1
    journal.close()
    elapsed = time.time() - run_started
    _summary(state, args.run_id, "succeeded", started_text)
    os.path.exists(os.path.join(root, PIPELINE, STREAK))
    os.close(lock)
    log.info(
        "run %s of %s: success in %.2f s (ran %d, skipped %d, failed 0)",
        args.run_id,
        PIPELINE,
        elapsed,
        ran,
        steps - ran,
        extra={**context, "outcome": "success", "duration_s": round(elapsed, 6)},
    )
    return ran


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[0] not in ("chain", "timed-chain"):
        print(
            "usage: contract_floor.py chain|timed-chain N ROOT [--syncs 2|3|4] "
            "[run [--run-id ID] ...]",
            file=sys.stderr,
        )
        return EXIT_USAGE
    started = time.perf_counter()  # timed-chain: from the command line to the last step
    gc.freeze()  # what the start-up made, out of the collector's way, as stalwart's main() does
    steps, root, rest = int(argv[1]), os.path.abspath(argv[2]), argv[3:]
    syncs = 4
    if rest[:1] == ["--syncs"] and len(rest) >= 2 and rest[1] in ("2", "3", "4"):
        syncs, rest = int(rest[1]), rest[2:]
    args = parse_args(rest or ["run", "--run-id", RUN_ID])
    if args.step is not None and args.step not in {step_name(i) for i in range(steps)}:
        print(f"contract_floor.py: error: no step named {args.step!r}", file=sys.stderr)
        return EXIT_USAGE
    configure_logging(args.log_format)
    import signal  # noqa: PLC0415 - part of the contract (SIGTERM), imported where it is used

    signal.signal(signal.SIGTERM, _terminate)
    try:
        run_chain(steps, root, args, syncs)
    except Terminated:
        log.error("terminated (SIGTERM); the unfinished step was not marked done")  # noqa: TRY400 - no traceback for a signal
        return EXIT_TERMINATED
    if argv[0] == "timed-chain":
        print(time.perf_counter() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
