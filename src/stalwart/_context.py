"""What a step receives: ``Context`` (where to write, HTTP, logging, which run) and ``Step``.

Every write through ``Context`` is atomic and recorded as one of the step's outputs, so the
step's marker can check on restart that they are still there.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType

from ._atomic import FileDigest, atomic_write, json_dumps, lazy_path, replace_bytes
from ._errors import UsageError
from ._logging import ContextAdapter, step_logger
from ._records import InputRecord, OutputRecord, normalize_output_name, record_type
from ._scope import StepScope
from ._state_files import real_directories

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path
    from typing import IO, Any, Literal, NamedTuple, overload

    from ._http import StepHttp
    from ._policy import RetryPolicy
    from ._services import RunServices

__all__ = ["Context", "Step", "StepFunction"]

StepFunction = Callable[["Context"], object]

_NO_PARAMS: Mapping[str, Any] = MappingProxyType({})


if TYPE_CHECKING:

    class _StepFields(NamedTuple):
        name: str
        fn: StepFunction
        retry: RetryPolicy | None = None
        """Re-run the whole step after a transient error."""
        timeout: float | None = None
        """Seconds before the step is interrupted with ``StepTimeout``."""
        http_retry: RetryPolicy | None = None
        """The policy of the step's ``ctx.http`` calls (default: the client's)."""

else:

    def _new_step(_cls, name, fn, retry=None, timeout=None, http_retry=None):
        return tuple.__new__(_cls, (name, fn, retry, timeout, http_retry))

    _StepFields = record_type("Step", _new_step)


class Step(_StepFields):
    """A step of a pipeline (a ``NamedTuple``: cheaper to define at import than a dataclass)."""

    __slots__ = ()


def _output_name(name: object) -> str:
    """An output name relative to the run directory; never absolute, never climbing out,
    never hidden (dot names are stalwart's: markers, lock, temp files), never a directory."""
    clean = normalize_output_name(name)
    if isinstance(name, str) and name.endswith("/") and clean is not None:
        raise UsageError(
            f"invalid output name {name!r}: it names a directory; name the file in it "
            f"({clean}/data.json)"
        )
    if clean is None:
        raise UsageError(
            f"invalid output name {name!r}: use a relative path inside the run directory "
            f"with no '..' and no part starting with '.'"
        )
    return clean


class Context:
    """What a step receives: where to write, how to call HTTP, how to log, which run it is.

    Every ``write_*`` (and ``atomic_write``) is atomic and recorded as an output of the step,
    so the step's marker can check on restart that its outputs are still there.
    """

    def __init__(
        self,
        *,
        services: RunServices,
        run_id: str,
        step: Step,
        run_dir: str,
        scope: StepScope,
        runs: int,
        params: Mapping[str, str] = _NO_PARAMS,
        produced: Mapping[str, tuple[str, str]] = _NO_PARAMS,
    ) -> None:
        self._services = services
        self._step = step
        self._scope = scope
        self._outputs: dict[str, OutputRecord] = {}
        self._inputs: dict[str, InputRecord] = {}
        self._produced = produced
        self.params: Mapping[str, str] = params
        """The run's parameters (``--param KEY=VALUE``), read-only."""
        self._http: StepHttp | None = None
        self.run_id = run_id
        self._run_dir = run_dir
        self.attempt = runs
        self._log: ContextAdapter | None = None
        self._log_context: dict[str, object] = {
            "pipeline": services.pipeline,
            "run_id": run_id,
            "step": step.name,
            "attempt": runs,
        }

    @property
    def log(self) -> ContextAdapter:
        """A logger (``stalwart.step.<step>``) whose records carry pipeline, run_id, step and
        attempt. Made on first use: most steps, and most items of a map step, never log."""
        if self._log is None:
            self._log = ContextAdapter(step_logger(self._step.name), self._log_context)
        return self._log

    @property
    def run_dir(self) -> Path:
        """This run's directory, where the outputs are."""
        return lazy_path(self._run_dir)

    @property
    def step(self) -> str:
        return self._step.name

    @property
    def pipeline(self) -> str:
        return self._services.pipeline

    @property
    def outputs(self) -> tuple[OutputRecord, ...]:
        return tuple(self._outputs.values())

    @property
    def inputs(self) -> tuple[InputRecord, ...]:
        """The earlier steps' outputs this step read, with the sha256 their step recorded."""
        return tuple(self._inputs.values())

    def _note_read(self, name: str) -> None:
        clean = normalize_output_name(name)
        found = self._produced.get(clean) if clean is not None else None
        if clean is not None and found is not None and clean not in self._outputs:
            self._inputs[clean] = InputRecord(name=clean, step=found[0], sha256=found[1])

    @property
    def http(self) -> StepHttp:
        """The pipeline's ``HttpClient``, bound to this step (Idempotency-Keys, retries)."""
        if self._http is None:
            from ._http import StepHttp  # noqa: PLC0415 - httpx only when a step uses HTTP

            self._http = StepHttp(self._services.http.get(), self._scope)
        return self._http

    def path(self, name: str) -> Path:
        """Where output ``name`` lives: inside this run's directory, nowhere else."""
        return lazy_path(os.path.join(self._run_dir, _output_name(name)))

    def _target(self, name: str) -> tuple[str, str]:
        """The clean output name and the file's path; its directories made if need be."""
        clean = _output_name(name)
        if "/" in clean:
            real_directories(self._run_dir, clean.rpartition("/")[0], mode=0o777)
        return clean, os.path.join(self._run_dir, clean)

    def _record(self, name: str, digest: FileDigest) -> None:
        self._outputs[name] = OutputRecord(name=name, size=digest.size, sha256=digest.sha256)

    def write_bytes(self, name: str, data: bytes) -> str:
        """Write ``data`` to output ``name`` atomically; returns the file's path as a ``str``
        (``ctx.path(name)`` is the ``pathlib.Path``: a run that writes never loads
        ``pathlib``, ~4 ms of every start)."""
        clean, target = self._target(name)
        digest = FileDigest()
        replace_bytes(target, data, shared=False)  # the run lock makes the directory ours
        digest.update(data)
        self._record(clean, digest)
        return target

    def write_text(self, name: str, data: str, *, encoding: str = "utf-8") -> str:
        """Write the text ``data`` to output ``name`` atomically; returns its path (a ``str``)."""
        if not isinstance(data, str):
            raise TypeError(
                f"write_text({name!r}, ...) takes str, not {type(data).__name__}"
                + ("; use ctx.write_bytes for bytes" if isinstance(data, bytes | bytearray) else "")
            )
        return self.write_bytes(name, data.encode(encoding))

    def write_json(self, name: str, data: Any) -> str:
        """Write ``data`` as JSON to output ``name`` atomically (serialised first: a value
        that is not JSON raises ``TypeError`` before anything is written)."""
        return self.write_bytes(name, json_dumps(data).encode("utf-8"))

    if TYPE_CHECKING:

        @overload
        def atomic_write(
            self,
            name: str,
            mode: Literal["w", "wt"] = ...,
            *,
            encoding: str = ...,
            newline: str | None = ...,
        ) -> contextlib.AbstractContextManager[IO[str]]: ...
        @overload
        def atomic_write(
            self, name: str, mode: Literal["wb"], *, encoding: str = ..., newline: str | None = ...
        ) -> contextlib.AbstractContextManager[IO[bytes]]: ...

    def atomic_write(
        self, name: str, mode: str = "w", *, encoding: str = "utf-8", newline: str | None = ""
    ) -> contextlib.AbstractContextManager[IO[Any]]:
        """Stream output ``name`` to a temp file, renamed into place when the block ends
        cleanly (discarded if it raises). For outputs too big to hold in memory. Text is
        written without newline translation (``newline=""``, as the csv module wants)."""
        return self._stream(name, mode, encoding, newline)

    @contextlib.contextmanager
    def _stream(
        self, name: str, mode: str, encoding: str, newline: str | None
    ) -> Iterator[IO[Any]]:
        clean, target = self._target(name)
        digest = FileDigest()
        with atomic_write(  # type: ignore[call-overload]
            target, mode, encoding=encoding, newline=newline, digest=digest
        ) as handle:
            yield handle
        self._record(clean, digest)

    def read_bytes(self, name: str) -> bytes:
        """The bytes of output ``name``. Reading an earlier step's output records it as an
        input of this step: if that output changes, this step runs again."""
        data = self.path(name).read_bytes()
        self._note_read(name)
        return data

    def read_text(self, name: str, *, encoding: str = "utf-8") -> str:
        """The text of output ``name`` (recorded as an input, like ``read_bytes``)."""
        return self.read_bytes(name).decode(encoding)

    def read_json(self, name: str) -> Any:
        """Parse output ``name`` as JSON (``ValueError`` naming the file if it is not)."""
        raw = self.read_bytes(name)
        try:
            return json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise ValueError(f"{self.path(name)} is not valid JSON: {exc}") from None

    def dead_letter(self, payload: bytes | str | Any, *, reason: str) -> str:
        """Keep ``payload`` (bytes, text or JSON-able) as a dead letter; return its id."""
        if self._scope.dead_letter is None:
            raise UsageError("dead letters are not available in this pipeline")
        envelope_id: str = self._scope.dead_letter.keep_payload(payload, reason=reason)
        return envelope_id
