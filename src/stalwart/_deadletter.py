"""Dead letters: requests (or payloads) that failed for good, kept on disk for replay.

One envelope per failure, ``<root>/<pipeline>/deadletter/<id>.json``: JSON, written
atomically (temp, fsync, rename, fsync of the directory) with mode 0600 in a 0700 directory,
so a crash leaves either the whole envelope or none. Ids sort by creation time:
``20261128T031500123456Z-1a2b3c4d``. Secrets are never stored: credential headers are
dropped, and a URL that carried a secret (user-info, ``?token=``) is stored redacted and
refused at replay (credentials belong on the ``HttpClient``, which replay goes through).

An envelope is never deleted by stalwart: replay marks it ``replayed``, discard marks it
``discarded``; both keep it for audit.
"""

from __future__ import annotations

import builtins
import contextlib
import getpass
import json
import logging
import os
import re
import secrets
import time
import traceback
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._atomic import json_dumps, replace_bytes
from ._envelope import ENVELOPE_FORMAT, Envelope, StoredBody, encode_body
from ._errors import DeadLetterError, HttpError, HttpStatusError, UsageError
from ._lock import locked_file
from ._redact import is_secret_header, redact_url
from ._state_files import NotRegularFile, open_regular
from ._time import utc_now, utc_text

if TYPE_CHECKING:
    import httpx

    from ._http import HttpClient, Response
    from ._scope import EventSink

__all__ = ["DeadLetterStore", "EnvelopeSummary", "StepDeadLetters"]

log = logging.getLogger("stalwart.deadletter")

ID_RE = re.compile(r"\A\d{8}T\d{12}Z-[0-9a-f]{8}\Z")
_DROP_HEADERS = frozenset(
    {"host", "content-length", "connection", "accept-encoding", "user-agent", "transfer-encoding"}
)
_MAX_ENVELOPE = 256 * 1024 * 1024
_NOT_REPLAYED = _DROP_HEADERS | frozenset(
    {"keep-alive", "proxy-connection", "te", "trailer", "upgrade", "expect"}
)
"""Headers a replay never sends as stored: hop-by-hop (RFC 9110 7.6.1) and framing headers
belong to the connection that carries the request, which httpx sets up itself."""


def new_id(now: float | None = None) -> str:
    """``20261128T031500123456Z-1a2b3c4d``: the UTC time of creation (so ids sort by age),
    then 32 random bits."""
    stamp = utc_text(time.time() if now is None else now)
    return stamp.translate(_COMPACT) + "-" + secrets.token_hex(4)


_COMPACT = str.maketrans("", "", "-:.")


def validate_id(envelope_id: object) -> str:
    if isinstance(envelope_id, str) and ID_RE.match(envelope_id):
        return envelope_id
    shown = repr(envelope_id)[:80]
    raise UsageError(
        f"invalid dead-letter id {shown}: ids look like 20261128T031500123456Z-1a2b3c4d "
        f"(see 'deadletter list')"
    )


def decode_body(record: object) -> bytes:
    """The exact bytes of a stored body; ``DeadLetterError`` if the record is damaged."""
    return StoredBody.parse(record).content()


@dataclass(frozen=True, slots=True)
class EnvelopeSummary:
    """One row of ``deadletter list``."""

    id: str
    created_at: str
    pipeline: str
    run_id: str
    step: str
    reason: str
    state: str
    """``pending``, ``replayed``, ``discarded``, ``superseded`` (the step succeeded later in
    that run) or ``corrupt`` (unreadable file)."""


class DeadLetterStore:
    """The dead-letter envelopes of one pipeline, in ``directory`` (0700).

    Disk access goes through ``_read``, ``_write``, ``_list``, ``_locked``, ``_size``,
    ``_remove`` and ``_remove_lock`` only: the seam for another backend.
    """

    def __init__(self, directory: str | os.PathLike[str], *, pipeline: str | None = None) -> None:
        self.directory = Path(directory)
        # <root>/<pipeline>/deadletter: the pipeline's name is the parent directory's.
        self.pipeline = pipeline if pipeline is not None else self.directory.absolute().parent.name

    # -- the storage seam --------------------------------------------------------------------

    def _ensure_directory(self) -> None:
        missing = []
        probe = self.directory
        while not probe.exists():
            missing.append(probe)
            probe = probe.parent
        for directory in reversed(missing):
            with contextlib.suppress(FileExistsError):
                os.mkdir(directory, 0o700)

    def _path(self, envelope_id: str) -> Path:
        return self.directory / f"{validate_id(envelope_id)}.json"

    def _read(self, envelope_id: str) -> bytes:
        path = self._path(envelope_id)
        try:  # a FIFO or a directory named like an envelope is corrupt, never a hang
            fd = open_regular(path)
        except FileNotFoundError:
            raise UsageError(
                f"no dead letter {envelope_id} in {self.directory} (see 'deadletter list')"
            ) from None
        except NotRegularFile as exc:
            raise DeadLetterError(
                f"dead letter {envelope_id} is corrupt: {exc.filename} {exc.strerror}"
            ) from None
        except OSError as exc:
            raise DeadLetterError(
                f"cannot open dead letter {envelope_id}: {exc.strerror}"
            ) from None
        with os.fdopen(fd, "rb") as handle:
            return handle.read(_MAX_ENVELOPE + 1)

    def _write(self, envelope_id: str, data: bytes) -> None:
        self._ensure_directory()
        path = self._path(envelope_id)
        replace_bytes(path, data, new_mode=0o600)  # durable; 0600 from creation on

    def _list(self) -> list[str]:
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        return sorted(n[:-5] for n in names if n.endswith(".json") and ID_RE.match(n[:-5]))

    @contextlib.contextmanager
    def _locked(self, envelope_id: str) -> Iterator[None]:
        """Serialise replays and discards of one letter (another process replaying the same
        id waits; other letters do not): ``flock`` on ``.<id>.lock``, never a symlink."""
        self._ensure_directory()
        with contextlib.ExitStack() as held:
            try:
                held.enter_context(
                    locked_file(self.directory / f".{validate_id(envelope_id)}.lock")
                )
            except NotRegularFile as exc:
                raise DeadLetterError(
                    f"dead letter {envelope_id} cannot be locked: {exc}"
                ) from None
            yield

    # -- envelopes ---------------------------------------------------------------------------

    def write(self, envelope: dict[str, Any]) -> str:
        """Store a new envelope (its ``id`` is filled in if missing); return the id."""
        envelope.setdefault("id", new_id())
        envelope.setdefault("format", ENVELOPE_FORMAT)
        envelope.setdefault("state", "pending")
        envelope.setdefault("history", [])
        self._write(envelope["id"], json_dumps(envelope).encode("utf-8"))
        return str(envelope["id"])

    def load(self, envelope_id: str) -> Envelope:
        """The envelope, typed; ``UsageError`` if unknown, ``DeadLetterError`` if corrupt."""
        return Envelope.parse(
            self._document(envelope_id), envelope_id, str(self._path(envelope_id))
        )

    def show(self, envelope_id: str) -> dict[str, Any]:
        """Everything in one envelope, as stored (what ``deadletter show ID`` prints): also
        one whose fields are damaged, as long as it is JSON for this id."""
        return self._document(envelope_id)

    def _document(self, envelope_id: str) -> dict[str, Any]:
        raw = self._read(envelope_id)
        where = str(self._path(envelope_id))
        if len(raw) > _MAX_ENVELOPE:
            raise DeadLetterError(f"dead letter {envelope_id} is larger than 256 MiB: not loaded")
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise DeadLetterError(
                f"dead letter {envelope_id} is corrupt (not valid JSON: {type(exc).__name__}); "
                f"the file is {where}"
            ) from None
        if not isinstance(data, dict) or data.get("id") != envelope_id:
            raise DeadLetterError(
                f"dead letter {envelope_id} is corrupt (not an envelope for this id); "
                f"the file is {where}"
            )
        try:  # it must be writable back (replay and discard record what they did)
            json_dumps(data).encode("utf-8")
        except UnicodeEncodeError:
            raise DeadLetterError(
                f"dead letter {envelope_id} is corrupt (text that is not valid Unicode); "
                f"the file is {where}"
            ) from None
        return data

    def list(self, *, run_id: str | None = None) -> list[EnvelopeSummary]:
        """Every envelope (of ``run_id``, if given), oldest first; unreadable ones are
        listed with state ``corrupt`` (whatever ``run_id`` asks for: they might be of it)."""
        rows = self._summaries()
        if run_id is None:
            return rows
        return [row for row in rows if row.run_id == run_id or row.state == "corrupt"]

    def _summaries(self) -> builtins.list[EnvelopeSummary]:
        rows = []
        for envelope_id in self._list():
            try:
                env = self.load(envelope_id)
            except (DeadLetterError, UsageError):
                rows.append(
                    EnvelopeSummary(envelope_id, "", self.pipeline, "", "", "unreadable", "corrupt")
                )
                continue
            rows.append(
                EnvelopeSummary(
                    id=envelope_id,
                    created_at=env.created_at,
                    pipeline=env.pipeline,
                    run_id=env.run_id,
                    step=env.step,
                    reason=env.reason,
                    state=env.state,
                )
            )
        return rows

    def _update(self, envelope: Envelope, action: str, detail: str = "", **fields: Any) -> Envelope:
        """Write ``envelope`` back with ``fields`` set and what was done in its history."""
        entry = {"at": utc_now(), "action": action, "by": _who(), "detail": detail}
        document = envelope.with_history(entry, **fields)
        self._write(envelope.id, json_dumps(document).encode("utf-8"))
        return Envelope.parse(document, envelope.id, str(self._path(envelope.id)))

    def supersede(
        self, *, run_id: str, step: str, keep: Collection[str] = ()
    ) -> builtins.list[str]:
        """The step succeeded later in the same run: mark its pending envelopes of that run
        (but those in ``keep``) ``superseded``: what they carried was delivered by the later
        run. Returns their ids. ``replay --all`` skips them; ``replay ID`` needs ``force``."""
        settled = []
        for row in self._summaries():
            if row.state != "pending" or row.run_id != run_id or row.step != step:
                continue
            if row.id in keep:
                continue
            with self._locked(row.id):
                envelope = self.load(row.id)
                if envelope.state != "pending":
                    continue
                self._update(
                    envelope,
                    "superseded",
                    f"step {step} succeeded in run {run_id}",
                    state="superseded",
                    superseded_at=utc_now(),
                )
            settled.append(row.id)
        return settled

    def _size(self, envelope_id: str) -> int:
        return os.lstat(self._path(envelope_id)).st_size

    def _remove(self, envelope_id: str) -> None:
        """Delete the envelope (called under its lock)."""
        os.unlink(self._path(envelope_id))

    def _remove_lock(self, envelope_id: str) -> None:
        """Delete the lock of a removed envelope (once it was let go)."""
        with contextlib.suppress(OSError):
            os.unlink(self.directory / f".{envelope_id}.lock")

    def stored_size(self, envelope_id: str) -> int:
        """The size of the stored envelope, in bytes."""
        return self._size(envelope_id)

    def remove_settled(self, envelope_id: str, settled: Collection[str]) -> int | None:
        """Delete the envelope if its state is one of ``settled`` (``gc``); return the bytes
        freed, or None if it was not settled (it may have changed since it was listed). A
        pending letter is never deleted."""
        if "pending" in settled:
            raise ValueError("a pending dead letter is never deleted")
        with self._locked(envelope_id):  # no replay or discard of it meanwhile
            try:
                if self.load(envelope_id).state not in settled:
                    return None
            except (DeadLetterError, UsageError):
                return None
            size = self._size(envelope_id)
            self._remove(envelope_id)
        self._remove_lock(envelope_id)  # its lock goes too
        return size

    def discard(self, envelope_id: str) -> Envelope:
        """Mark an envelope discarded (kept for audit, with who and when)."""
        self.load(envelope_id)  # unknown or malformed ids fail here, before any lock
        with self._locked(envelope_id):
            envelope = self.load(envelope_id)
            if envelope.state != "pending":
                raise DeadLetterError(
                    f"dead letter {envelope_id} is already {envelope.state}: nothing to discard"
                )
            return self._update(
                envelope,
                "discarded",
                state="discarded",
                discarded_at=utc_now(),
                discarded_by=_who(),
            )

    def keep_request(self, **kwargs: Any) -> str:
        """Keep a failed request (``HttpClient.request(..., dead_letter=store)`` outside a
        pipeline): an envelope with no run and no step."""
        return StepDeadLetters(self, run_id="", step="").keep_request(**kwargs)

    def keep_payload(self, payload: object, *, reason: str) -> str:
        """Keep ``payload`` (bytes, text or JSON-able) as a dead letter with no run or step."""
        return StepDeadLetters(self, run_id="", step="").keep_payload(payload, reason=reason)

    def replay(
        self, envelope_id: str, client: HttpClient | None = None, *, force: bool = False
    ) -> Response:
        """Re-send a pending HTTP dead letter through ``client`` (its credentials, its retry
        policy; a default ``HttpClient()`` if none is given) with the original body and
        Idempotency-Key. On success the envelope is marked ``replayed``; a second replay is
        refused. On failure it stays pending and the attempt is recorded; the error is raised."""
        if client is None:
            from ._http import HttpClient  # noqa: PLC0415

            with HttpClient() as own:
                return self.replay(envelope_id, own, force=force)
        self.load(envelope_id)  # unknown or malformed ids fail here, before any lock
        with self._locked(envelope_id):
            envelope = self.load(envelope_id)
            state = envelope.state
            if state == "superseded" and not force:
                raise DeadLetterError(
                    f"dead letter {envelope_id} is superseded: step {envelope.step} "
                    f"succeeded later in run {envelope.run_id}, so what it carried was "
                    f"most likely delivered. Replay it anyway with --force"
                )
            if state not in ("pending", "superseded"):
                raise DeadLetterError(
                    f"dead letter {envelope_id} was already {state} ({envelope.settled_at()}); "
                    "refusing to send it again"
                )
            if envelope.kind != "http":
                raise DeadLetterError(
                    f"dead letter {envelope_id} holds a payload, not an HTTP request: there is "
                    "nothing to re-send. Inspect it with 'deadletter show', "
                    "then 'deadletter discard'."
                )
            request = envelope.request()
            if request.url_redacted:
                raise DeadLetterError(
                    f"dead letter {envelope_id}: its URL carried a secret that was not stored "
                    f"({request.url}); put credentials on the HttpClient (headers=, auth=), "
                    f"then re-send it yourself"
                )
            body = decode_body(request.body)
            hop_by_hop = _NOT_REPLAYED | _connection_tokens(request.headers)
            headers = {
                k: v
                for k, v in request.headers.items()
                if not is_secret_header(k) and k.strip().lower() not in hop_by_hop
            }
            try:
                response = client.request(
                    request.method,
                    request.url,
                    content=body,
                    headers=headers,
                    idempotency_key=request.idempotency_key,
                )
            except HttpError as exc:
                self._update(envelope, "replay_failed", str(exc)[:500])
                raise
            except (TypeError, UnicodeError) as exc:  # a stored method or header httpx refuses
                raise DeadLetterError(
                    f"dead letter {envelope_id} holds a request that cannot be sent as stored "
                    f"({type(exc).__name__}: {exc}); inspect it with 'deadletter show'"
                ) from None
            self._update(
                envelope,
                "replayed",
                f"HTTP {response.status_code}",
                state="replayed",
                replayed_at=utc_now(),
                replay_status=response.status_code,
            )
            return response


def _connection_tokens(headers: Mapping[str, str]) -> frozenset[str]:
    """The header names a stored ``Connection`` header declares hop-by-hop (RFC 9110 7.6.1)."""
    return frozenset(
        token.strip().lower()
        for name, value in headers.items()
        if str(name).strip().lower() == "connection"
        for token in str(value).split(",")
    )


def _who() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


def _user_frames(limit: int = 6) -> list[str]:
    """Where in the user's code the failing call was made (stalwart's own frames left out)."""
    package = str(Path(__file__).parent)
    frames = [f for f in traceback.extract_stack() if not f.filename.startswith(package)]
    return [f"{f.filename}:{f.lineno} in {f.name}" for f in frames[-limit:]]


class StepDeadLetters:
    """Writes the dead letters of one running step (what ``dead_letter=True`` uses)."""

    def __init__(
        self, store: DeadLetterStore, *, run_id: str, step: str, emit: EventSink | None = None
    ) -> None:
        self.store = store
        self.run_id = run_id
        self.step = step
        self.emit = emit

    def _base(self, kind: str, reason: str) -> dict[str, Any]:
        return {
            "format": ENVELOPE_FORMAT,
            "id": new_id(),
            "kind": kind,
            "state": "pending",
            "created_at": utc_now(),
            "pipeline": self.store.pipeline,
            "run_id": self.run_id,
            "step": self.step,
            "reason": reason,
            "where": _user_frames(),
            "history": [],
        }

    def _keep(self, envelope: dict[str, Any]) -> str:
        envelope_id = self.store.write(envelope)
        log.warning(
            "step %s: kept the failed %s as dead letter %s (%s)",
            self.step,
            "request" if envelope["kind"] == "http" else envelope["kind"],
            envelope_id,
            envelope["reason"],
            extra={"dead_letter_id": envelope_id, "step": self.step, "run_id": self.run_id},
        )
        if self.emit:
            from .instrumentation._events import DeadLettered  # noqa: PLC0415 - sinks only

            self.emit(
                DeadLettered(
                    pipeline=self.store.pipeline,
                    run_id=self.run_id,
                    step=self.step,
                    envelope_id=envelope_id,
                    reason=envelope["reason"],
                )
            )
        return envelope_id

    def keep_request(
        self,
        *,
        request: httpx.Request,
        body: bytes,
        error: HttpError,
        attempts: int,
        elapsed: float = 0.0,
    ) -> str:
        status = error.status if isinstance(error, HttpStatusError) else None
        reason = f"HTTP {status}" if status else type(error).__name__
        if error.transient and attempts > 1:
            reason += f" after {attempts} attempts"
        raw_url = str(request.url)
        shown = redact_url(raw_url)
        envelope = self._base("http", reason)
        envelope.update(
            {
                "attempts": attempts,
                "first_failure_at": utc_text(time.time() - elapsed),
                "last_failure_at": utc_now(),
                "error": {
                    "type": type(error).__name__,
                    "message": str(error),
                    "traceback": "".join(traceback.format_exception_only(error)).strip(),
                },
                "response": (
                    {"status": status, "excerpt": getattr(error, "body_excerpt", "")}
                    if status
                    else None
                ),
                "request": {
                    "method": request.method,
                    "url": shown,
                    "url_redacted": shown != raw_url,
                    "content_type": request.headers.get("content-type", ""),
                    "headers": {
                        k: v
                        for k, v in request.headers.items()
                        if k.lower() not in _DROP_HEADERS and not is_secret_header(k)
                    },
                    "idempotency_key": request.headers.get("idempotency-key", ""),
                    "body": encode_body(body),
                },
            }
        )
        return self._keep(envelope)

    def keep_payload(self, payload: object, *, reason: str) -> str:
        if isinstance(payload, bytes):
            body, content_type = payload, "application/octet-stream"
        elif isinstance(payload, str):
            body, content_type = payload.encode("utf-8"), "text/plain; charset=utf-8"
        else:
            body, content_type = json_dumps(payload).encode("utf-8"), "application/json"
        envelope = self._base("payload", reason)
        envelope.update(
            {
                "attempts": 1,
                "first_failure_at": envelope["created_at"],
                "last_failure_at": envelope["created_at"],
                "error": None,
                "response": None,
                "payload": {"content_type": content_type, "body": encode_body(body)},
            }
        )
        return self._keep(envelope)
