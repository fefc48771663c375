"""The run summary the runner keeps: ``<root>/<pipeline>/runs/<run_id>/.summary.json`` (the
same key on object storage), written when a run starts (state ``running``) and again when it
ends (``succeeded``, ``failed`` or ``interrupted``, with the duration, the failed step and its
error type), so ``runs`` reads one small object per run instead of every marker (see
``_history``).

What survives a crash: the summary is replaced atomically, never partly written - locally a
temp file and a rename, without fsync (like the journal, it is a record for people, not the
source of truth about what is done - the markers are: after a power cut it may show the run's
previous state); on object storage one PUT, through the run's lease (a holder that lost it
writes no summary). This module is on every run's path: it defines no class (a dataclass
costs about a millisecond of every start) and imports nothing the runner does not already.
"""

from __future__ import annotations

import json
import logging
import os

from ._atomic import replace_bytes
from ._time import utc_now

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any, Protocol

    from ._services import RunServices

__all__ = ["SUMMARY_FILE", "SUMMARY_FORMAT", "RunState", "begin_run", "end_run"]

log = logging.getLogger("stalwart.history")

SUMMARY_FILE = ".summary.json"
SUMMARY_FORMAT = 1
_OUTCOME_STATE = {"success": "succeeded", "failure": "failed", "interrupted": "interrupted"}


if TYPE_CHECKING:

    class RunState(Protocol):
        """What a summary is made of: the runner's run, read (a protocol: no import of it)."""

        @property
        def name(self) -> str: ...
        @property
        def run_id(self) -> str: ...
        @property
        def run_dir(self) -> str: ...
        @property
        def ran(self) -> list[str]: ...
        @property
        def skipped(self) -> list[str]: ...
        @property
        def duration_s(self) -> float: ...
        @property
        def params(self) -> Mapping[str, str]: ...
        @property
        def services(self) -> RunServices: ...


def _write(run: RunState, data: dict[str, Any]) -> None:
    """Replace the run's summary (see the module docstring); a failure is logged, never
    raised: the run matters more than its summary."""
    data["format"] = SUMMARY_FORMAT
    store = run.services.store
    where = run.run_dir
    try:
        payload = json.dumps(data, ensure_ascii=False, sort_keys=True).encode("utf-8") + b"\n"
        if store is None:
            replace_bytes(
                os.path.join(run.run_dir, SUMMARY_FILE),
                payload,
                durable=False,
                new_mode=0o600,
                shared=False,  # the run directory is ours alone while the run lock is held
            )
        else:  # object storage: one PUT, through the run's lease
            from ._remote_state import run_key  # noqa: PLC0415 - object storage only

            key = f"{run_key(run.name, run.run_id)}/{SUMMARY_FILE}"
            where = store.url(key)
            store.write(key, payload)
    except Exception as exc:  # noqa: BLE001 - a record for people: never fails the run
        log.warning("could not write the run summary %s (%s); `runs` may lag", where, exc)


def begin_run(run: RunState) -> str:
    """Record that ``run`` started (state ``running``); return its start time."""
    started = utc_now()
    _write(
        run,
        {
            "pipeline": run.name,
            "run_id": run.run_id,
            "state": "running",
            "started": started,
            "pid": os.getpid(),
            "params": dict(run.params),
        },
    )
    return started


def end_run(
    run: RunState,
    *,
    started: str,
    outcome: str,
    failed_step: str = "",
    error_type: str = "",
    error: str = "",
) -> None:
    """Record how ``run`` ended: ``outcome`` is the runner's (``success``, ``failure``,
    ``interrupted``); a failed run names its step (empty: it failed before its first step),
    error type and message (secrets already masked)."""
    _write(
        run,
        {
            "pipeline": run.name,
            "run_id": run.run_id,
            "state": _OUTCOME_STATE.get(outcome, outcome),
            "started": started,
            "finished": utc_now(),
            "duration_s": round(run.duration_s, 6),
            "failed_step": failed_step,
            "error_type": error_type,
            "error": error[:500],
            "ran": len(run.ran),
            "skipped": len(run.skipped),
            "pid": os.getpid(),
            "params": dict(run.params),
        },
    )
