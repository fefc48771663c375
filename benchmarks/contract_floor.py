"""The floor of the documented contract, in plain Python: the least a script must do to keep it.

``plain_floor.py`` is the floor of the disk: durable writes and two ``stat`` calls, with
nothing imported but ``os`` and ``sys``. The public contract (docs/design.md, the README)
asks a pipeline for more than that, whoever implements it:

- an argparse CLI: ``run [--run-id ID] [--force | --step NAME] [--log-format json|text]``;
- logs through the standard ``logging`` module, one JSON object per line on stderr
  (python-json-logger) when stderr is not a terminal, with pipeline, run_id and step;
- per step, after its output is durable, a JSON marker (step, run_id, started, finished,
  duration, attempts, and each output's name, size and sha256), written durably too;
- a step is skipped only if its marker parses and every output it records is there with the
  recorded size; a corrupt marker is a warning and a re-run.

This script does just that, with no stalwart import, so that ``make bench`` can split the
whole-process gap in two: what the contract costs by itself (this against ``plain_floor.py``)
and what stalwart adds on top of it (``workloads.py`` against this). It logs the lines
stalwart's runner logs: "started" and "done" for a step that runs, "already done, skipping"
for one that is skipped, one summary per run.

It is a floor, a lower bound: the run's lock, the sweep of stale temp files, the journal,
retries, alerts and metrics are left out (syscalls, mostly, rather than imports).

``python contract_floor.py chain N DIR [run ...]`` runs ``N`` steps in ``DIR`` (outputs in
``DIR``, markers in ``DIR/.checkpoints``) with the run ID ``bench`` unless ``run ...`` says
otherwise; step ``i`` writes ``out-<i>.txt`` holding ``step <i>\\n``, as in ``workloads.py``.
"""

from __future__ import annotations

import argparse
import contextlib  # imported by logging anyway
import json
import logging
import os
import re
import sys
import time

from plain_floor import durable_write, output_bytes, output_name, step_name

__all__ = ["build_parser", "configure_logging", "run_chain"]

MARKERS = ".checkpoints"
PIPELINE = "bench"
RUN_ID = "bench"
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")

log = logging.getLogger("contract_floor")


def utc(seconds: float, places: int) -> str:
    """``seconds`` since the epoch as UTC RFC 3339 with ``places`` decimals."""
    whole = int(seconds)
    fraction = int((seconds - whole) * 10**places)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{fraction:0{places}d}Z"


def _run_id(text: str) -> str:
    if not _RUN_ID.fullmatch(text):
        raise argparse.ArgumentTypeError(f"invalid run ID {text!r}")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="contract_floor.py chain N DIR")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    run = sub.add_parser("run", help="run the chain")
    run.add_argument(
        "--run-id",
        type=_run_id,
        default=time.strftime("%Y-%m-%d", time.gmtime()),
        metavar="ID",
        help="the run (default: today's UTC date)",
    )
    how = run.add_mutually_exclusive_group()
    how.add_argument("--force", action="store_true", help="clear all markers, re-run every step")
    how.add_argument("--step", metavar="NAME", help="re-run NAME and every step after it")
    run.add_argument("--log-format", choices=("json", "text"), help="default: json unless a TTY")
    return parser


def configure_logging(fmt: str | None) -> None:
    """The root logger to stderr at INFO: JSON lines (python-json-logger) or text."""
    if fmt is None:
        fmt = "text" if sys.stderr.isatty() else "json"
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        from pythonjsonlogger.json import JsonFormatter  # noqa: PLC0415 - JSON format only

        class Formatter(JsonFormatter):
            def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
                return utc(record.created, 3)

        handler.setFormatter(
            Formatter(
                ["asctime", "levelname", "name", "message"],
                rename_fields={"asctime": "timestamp", "levelname": "level", "name": "logger"},
            )
        )
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s"))
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)


def _done(marker: str, state: str, scope: dict[str, object]) -> bool:
    """The documented skip rule: the marker parses, its outputs are there at their size."""
    try:
        with open(marker, "rb") as handle:
            outputs = [
                (str(o["name"]), int(o["size"])) for o in json.loads(handle.read())["outputs"]
            ]
    except FileNotFoundError:
        return False
    except (OSError, ValueError, LookupError, TypeError):
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


def run_chain(steps: int, state: str, args: argparse.Namespace) -> int:
    """Run ``steps`` steps in ``state`` as the documented runner would; returns how many ran."""
    run_started = time.time()
    markers = os.path.join(state, MARKERS)
    os.makedirs(markers, exist_ok=True)
    names = [step_name(index) for index in range(steps)]
    first_cleared = 0 if args.force else names.index(args.step) if args.step else steps
    for name in names[first_cleared:]:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(markers, f"{name}.done"))
    context: dict[str, object] = {"pipeline": PIPELINE, "run_id": args.run_id}
    ran = 0
    for index, name in enumerate(names):
        marker = os.path.join(markers, f"{name}.done")
        scope = {**context, "step": name}
        if _done(marker, state, scope):
            log.info("step %s already done, skipping", name, extra=scope)
            continue
        log.info("step %s started", name, extra={**scope, "attempt": 1})
        started = time.time()
        data = output_bytes(index)
        durable_write(os.path.join(state, output_name(index)), data)
        finished = time.time()
        import hashlib  # noqa: PLC0415 - as in stalwart: a re-run that skips never hashes

        record = {
            "pipeline": PIPELINE,
            "step": name,
            "run_id": args.run_id,
            "started": utc(started, 6),
            "finished": utc(finished, 6),
            "duration": round(finished - started, 6),
            "attempts": 1,
            "outputs": [
                {
                    "name": output_name(index),
                    "size": len(data),
                    "sha256": hashlib.sha256(data).hexdigest(),
                }
            ],
        }
        durable_write(marker, json.dumps(record, separators=(",", ":")).encode())
        log.info(
            "step %s done in %.3f s",
            name,
            finished - started,
            extra={**scope, "attempt": 1, "duration_s": round(finished - started, 6), "retries": 0},
        )
        ran += 1
    elapsed = time.time() - run_started
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


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[0] != "chain":
        print("usage: contract_floor.py chain N DIR [run [--run-id ID] ...]", file=sys.stderr)
        return 2
    steps, state = int(argv[1]), argv[2]
    parser = build_parser()
    args = parser.parse_args(argv[3:] or ["run", "--run-id", RUN_ID])
    if args.step is not None and args.step not in {step_name(i) for i in range(steps)}:
        parser.error(f"no step named {args.step!r}")
    configure_logging(args.log_format)
    run_chain(steps, state, args)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
