"""Alert hygiene: one alert per failure streak, and a recovery notice when it ends.

A *streak* is a run of consecutive failed runs of a pipeline failing at the same step with
the same error type. The first failure of a streak alerts; the next ones are logged (with the
streak's length) but not sent; a different step or error type starts a new streak, which
alerts. The first run that succeeds after a failure sends a recovery notice through the same
alerters, counting the failed runs. Interrupted runs neither extend nor end a streak.

State: the open streak, read-modify-written by runs of different run IDs that may end at
once (each holds its own run's lock, not the pipeline's):

- on a local root, ``<root>/<pipeline>/.alert-streak.json``, replaced atomically under an
  ``flock`` on ``.alert-streak.lock``. What survives a crash: the file holds the old streak or
  the new one, never part of one (it is not fsync'ed: after a power cut it may hold the
  previous streak, which costs at most one duplicate alert or one missed recovery notice);
- on object storage, ``<pipeline>/.alert-streak/<n>``, versions each created once
  (``If-None-Match: *``, the write the run's lease is made of; ``_remote_history.
  VersionedRecord``): two runs that end at once never lose an update, and of two concurrent
  successes exactly one closes the streak and sends the notice. A success costs one listing.

When in doubt (the state cannot be read or written) a failure alerts: a lost streak costs one
duplicate message, a wrong one could hide a new failure.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os

from ._atomic import replace_bytes
from ._records import record_type
from ._services import STREAK_FILE
from ._time import utc_now

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import Any, NamedTuple

    from ._services import RunServices

    Streak = dict[str, Any]
    Change = Callable[[Streak | None], Streak | None]

__all__ = [
    "StreakDecision",
    "log_suppressed",
    "note_failure",
    "notify_recovery",
]

log = logging.getLogger("stalwart.alert")

_LOCK_FILE = ".alert-streak.lock"
_FORMAT = 1


if TYPE_CHECKING:

    class _StreakDecisionFields(NamedTuple):
        send: bool
        streak: int
        first_run_id: str

else:

    def _new_streak_decision(_cls, send, streak, first_run_id):
        return tuple.__new__(_cls, (send, streak, first_run_id))

    _StreakDecisionFields = record_type("StreakDecision", _new_streak_decision)


class StreakDecision(_StreakDecisionFields):
    """Whether to send the alert of a failure, and how long its streak is now (a
    ``NamedTuple``: this module is on every run's path, and a dataclass costs ~1 ms to make)."""

    __slots__ = ()


@contextlib.contextmanager
def _locked(state_dir: str) -> Iterator[None]:
    fd = os.open(
        os.path.join(state_dir, _LOCK_FILE),
        os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
        0o600,
    )
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the flock


def _read(state_dir: str) -> dict[str, Any] | None:
    try:
        with open(os.path.join(state_dir, STREAK_FILE), "rb") as handle:
            data = json.loads(handle.read(65536).decode("utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        log.warning("ignoring the unreadable alert streak in %s (%s)", state_dir, exc)
        return None
    if not isinstance(data, dict) or not isinstance(data.get("count"), int):
        return None
    return data


def _valid(streak: dict[str, Any] | None) -> dict[str, Any] | None:
    if streak is None or not isinstance(streak.get("count"), int):
        return None
    return streak


def _swap_local(state_dir: str, change: Change) -> tuple[Streak | None, Streak | None]:
    with _locked(state_dir):
        old = _read(state_dir)
        new = change(old)
        path = os.path.join(state_dir, STREAK_FILE)
        if new is None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        else:
            replace_bytes(
                path,
                (json.dumps(new, sort_keys=True) + "\n").encode("utf-8"),
                durable=False,  # a record for alerting: a power cut costs one duplicate alert
                new_mode=0o600,
            )
    return old, new


def _swap(services: RunServices, change: Change) -> tuple[Streak | None, Streak | None]:
    """Replace the pipeline's streak by ``change(streak)`` (``None``: no open streak); return
    the old and the new one. See the module docstring for where it is and how."""
    if services.store is None:
        return _swap_local(services.state_dir, change)
    from ._remote_history import VersionedRecord, pipeline_store  # noqa: PLC0415 - object storage

    record = VersionedRecord(pipeline_store(services.store), f"{services.pipeline}/.alert-streak")
    old, new = record.swap(lambda streak: change(_valid(streak)))
    return _valid(old), new


def note_failure(services: RunServices, run_id: str, step: str, error_type: str) -> StreakDecision:
    """Record a failed run (``step`` empty: it failed before its first step) and decide
    whether its alert is sent: only the first failure of a streak is."""

    def extended(streak: Streak | None) -> Streak:
        if streak is not None and (streak.get("step"), streak.get("error_type")) == (
            step,
            error_type,
        ):
            count = int(streak["count"]) + 1
            first = str(streak.get("first_run_id", ""))
            since = str(streak.get("since", ""))
        else:
            count, first, since = 1, run_id, utc_now()
        return {
            "format": _FORMAT,
            "step": step,
            "error_type": error_type,
            "count": count,
            "first_run_id": first,
            "last_run_id": run_id,
            "since": since,
        }

    try:
        _old, new = _swap(services, extended)
    except Exception as exc:  # noqa: BLE001 - when in doubt, alert
        log.warning(
            "could not record the alert streak of %s (%s); alerting", services.pipeline, exc
        )
        return StreakDecision(send=True, streak=1, first_run_id=run_id)
    now = new or {}  # never None: ``extended`` always returns a streak
    count, first = int(now.get("count", 1)), str(now.get("first_run_id", run_id))
    return StreakDecision(send=count == 1, streak=count, first_run_id=first)


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def log_suppressed(pipeline: str, run_id: str, step: str, error_type: str, count: int) -> None:
    """Say (in the log) that an alert was held back, and why."""
    where = f"at step {step}" if step else "before its first step"
    log.warning(
        "%s failed again %s with %s, the %s failed run in a row (run %s): alerted once, "
        "at the first; no alert until a run succeeds (recovery notice) or fails differently",
        pipeline,
        where,
        error_type,
        _ordinal(count),
        run_id,
        extra={
            "pipeline": pipeline,
            "run_id": run_id,
            "step": step,
            "error_type": error_type,
            "streak": count,
            "alert_suppressed": True,
        },
    )


def notify_recovery(services: RunServices, run_id: str, duration_s: float) -> None:
    """After a successful run: if a failure streak was open, close it and send a recovery
    notice through the run's alerters (the log's included). Never raises (a side channel).
    The runner calls it only when ``services.streak_may_be_open()``: on a local root, one
    ``stat`` decides, and this module is not even imported."""
    try:
        streak, _closed = _swap(services, lambda _streak: None)
        if streak is None:
            return
        from ._alerts import Alert, LogAlerter, default_host, send_all  # noqa: PLC0415

        count = int(streak["count"])
        step = str(streak.get("step", ""))
        error_type = str(streak.get("error_type", ""))
        first, last = str(streak.get("first_run_id", "")), str(streak.get("last_run_id", ""))
        runs = f"run {first}" if count == 1 or first == last else f"runs {first} to {last}"
        where = f"at step {step}" if step else "before its first step"
        alert = Alert(
            pipeline=services.pipeline,
            run_id=run_id,
            step=step,
            error_type=error_type,
            error=(
                f"run {run_id} succeeded after {count} failed run{'s' if count > 1 else ''} "
                f"in a row ({runs}; failing {where} with {error_type})"
            ),
            attempts=0,
            duration_s=duration_s,
            host=default_host(),
            kind="recovery",
            streak=count,
        )
        send_all([LogAlerter(), *services.alerters], alert)
    except Exception:
        log.warning("could not send the recovery notice of %s", services.pipeline, exc_info=True)
