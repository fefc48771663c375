"""``deadletter list|show ID|replay ID|replay --all|discard ID``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from typing import TYPE_CHECKING, TextIO

from .._errors import DeadLetterError, HttpError
from .._printable import printable, terminal_safe_json
from .._time import parse_utc

if TYPE_CHECKING:
    from .._deadletter import DeadLetterStore
    from .._pipeline import Pipeline

__all__ = ["deadletter_command"]


def _age(created_at: str, now: float | None = None) -> str:
    then = parse_utc(created_at)
    if then is None:
        return "?"
    seconds = max(0.0, (time.time() if now is None else now) - then)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def deadletter_command(args: argparse.Namespace, pipeline: Pipeline, err: TextIO) -> int:
    store = pipeline.deadletters
    if args.action == "list":
        return _list(args, pipeline)
    if args.action == "show":
        try:
            envelope = store.show(args.id)
        except DeadLetterError as exc:
            print(f"deadletter show: {printable(exc)}", file=err)
            return 1
        print(terminal_safe_json(json.dumps(envelope, indent=2, ensure_ascii=False)))
        return 0
    if args.action == "discard":
        try:
            store.discard(args.id)
        except DeadLetterError as exc:
            print(f"deadletter discard: {printable(exc)}", file=err)
            return 1
        print(f"dead letter {args.id} discarded (kept for audit)")
        return 0
    if args.all:  # the pending ones: superseded letters were delivered another way
        ids = [r.id for r in store.list(run_id=args.run_id) if r.state == "pending"]
    else:
        ids = [args.id]
    failed = 0
    for envelope_id in ids:
        try:
            if _replay_item(pipeline, store, envelope_id):
                continue
            response = store.replay(envelope_id, pipeline.http, force=args.force)
        except (DeadLetterError, HttpError) as exc:
            failed += 1
            print(f"deadletter replay {envelope_id}: {printable(exc)}", file=err)
            continue
        print(f"dead letter {envelope_id} replayed: HTTP {response.status_code}")
    if args.all:
        print(f"replayed {len(ids) - failed} of {len(ids)} pending dead letter(s)")
    return 1 if failed else 0


def _replay_item(pipeline: Pipeline, store: DeadLetterStore, envelope_id: str) -> bool:
    """A dead letter of kind ``item``: run the item through its map step again (True);
    False for any other kind (re-sent by ``store.replay``)."""
    envelope = store.load(envelope_id)
    if envelope.kind != "item":
        return False
    from .._map import MapStep, replay_item  # noqa: PLC0415 - only item dead letters

    step = next((s for s in pipeline.steps if s.name == envelope.step), None)
    if step is None or not isinstance(step.fn, MapStep):
        raise DeadLetterError(
            f"dead letter {envelope_id} holds an item of step {envelope.step!r}, which "
            f"is not a map step of {pipeline.name}"
        )
    key = replay_item(step.fn, pipeline.services(), store, envelope_id)
    print(f"dead letter {envelope_id} replayed: item {key} ran again and succeeded")
    return True


def _list(args: argparse.Namespace, pipeline: Pipeline) -> int:
    store = pipeline.deadletters
    rows = store.list(run_id=args.run_id)
    if args.json:
        listing = {"format": 1, "dead_letters": [dataclasses.asdict(r) for r in rows]}
        print(json.dumps(listing, indent=2))
        return 0
    if not rows:
        print(f"no dead letters for {pipeline.name} ({store.directory})")
        return 0
    print(f"{'ID':<33} {'AGE':>5}  {'PIPELINE':<14} {'RUN':<12} {'STEP':<12} {'STATE':<10}  REASON")
    for r in rows:
        pipeline_name, run_id, step = printable(r.pipeline), printable(r.run_id), printable(r.step)
        print(
            f"{r.id:<33} {_age(r.created_at):>5}  {pipeline_name:<14} {run_id:<12} "
            f"{step:<12} {printable(r.state):<10}  {printable(r.reason)}"
        )
    return 0
