"""What a run keeps about each step: the ``.done`` marker (``Marker``, with its outputs) and
the journal's ``StepRecord``, their JSON forms and the checks that a file read back is one.

Names of runs, pipelines and steps are checked here too (``validate_name``): they become
directory and file names, so they are never allowed to be paths.

The records are named tuples: immutable, compared and printed by their fields, as frozen
dataclasses would be, but cheaper to define at every start (no ``dataclasses`` module, with
its ``inspect``, ``ast`` and ``dis``: ~6 ms). Type checkers see each as a ``typing.NamedTuple``
(under ``TYPE_CHECKING``); at run time it is a ``record_type`` made from a ``__new__`` that
takes the same fields with the same defaults (``tests/test_architecture.py`` keeps the two
equal), so a run never imports ``typing`` (~3 ms). Methods live on a subclass with
``__slots__ = ()``. ``record_type`` is ``collections.namedtuple`` with that ``__new__``
written out in the module rather than compiled from source at every start (0.24 ms for the
ten records a run defines; ``tests/test_records.py`` holds the two to the same behaviour).
The run's other records (``Step``, ``Failure``, ``RunServices``, the journal's ``Entry``)
are made by it too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from operator import itemgetter
from types import MappingProxyType

from ._errors import UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NamedTuple, TypeGuard

_MARKER_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
"""A marker's JSON (``json.dumps`` with these options), built once: it is on every step."""

__all__ = [
    "MARKER_FORMAT",
    "InputRecord",
    "Marker",
    "OutputRecord",
    "SkipDecision",
    "StepRecord",
    "is_name",
    "is_sha256",
    "normalize_output_name",
    "parse_record",
    "record_fields",
    "record_type",
    "validate_name",
    "validate_params",
]

MARKER_FORMAT = 1


try:  # the C descriptor namedtuple's fields are (a field read is on every skip decision)
    from _collections import _tuplegetter as _field  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - CPython has it; what namedtuple falls back to

    def _field(index: int, doc: str) -> Any:
        return property(itemgetter(index), doc=doc)


class _Record(tuple):  # type: ignore[type-arg]  # the field types: the typed NamedTuple's
    """What ``collections.namedtuple`` puts on every class it makes, written once."""

    __slots__ = ()
    _fields: tuple[str, ...] = ()
    _field_defaults: dict[str, Any] = {}  # noqa: RUF012 - read only, replaced per record

    @classmethod
    def _make(cls, iterable: Iterable[Any]) -> Any:
        result = tuple.__new__(cls, iterable)
        if len(result) != len(cls._fields):
            raise TypeError(f"Expected {len(cls._fields)} arguments, got {len(result)}")
        return result

    def _replace(self, /, **changes: Any) -> Any:
        result = self._make(map(changes.pop, self._fields, self))
        if changes:
            raise ValueError(f"Got unexpected field names: {list(changes)!r}")
        return result

    def _asdict(self) -> dict[str, Any]:
        return dict(zip(self._fields, self, strict=True))

    def __repr__(self) -> str:
        pairs = zip(self._fields, self, strict=True)
        return f"{type(self).__name__}({', '.join(f'{name}={value!r}' for name, value in pairs)})"

    def __getnewargs__(self) -> tuple[Any, ...]:  # pickle and copy call __new__ with these
        return tuple(self)


def record_type(typename: str, new: Callable[..., Any]) -> Any:
    """``collections.namedtuple`` for the fields that ``new`` takes, ``new`` as its
    ``__new__``: ``def _new(_cls, a, b=0): return tuple.__new__(_cls, (a, b))`` gives
    ``namedtuple(typename, ["a", "b"], defaults=(0,))``, the same class in every way a
    caller can see (a tuple, its fields as read-only attributes, ``_fields``,
    ``_field_defaults``, ``_make``, ``_replace``, ``_asdict``, its ``repr``, pickling, the
    errors of a wrong call).

    ``namedtuple`` makes that ``__new__`` by compiling its source at every start (``eval``:
    0.35 million instructions, two thirds of what the class costs); ``new`` is compiled
    with its module, once, into the bytecode cache. ``tests/test_architecture.py`` checks
    that each ``new`` returns its parameters in order, and that they are the fields of the
    record's typed declaration."""
    code = new.__code__
    fields = code.co_varnames[1 : code.co_argcount]
    defaults = new.__defaults__ or ()
    new.__name__, new.__qualname__ = "__new__", f"{typename}.__new__"
    namespace: dict[str, Any] = {
        "__slots__": (),
        "__doc__": f"{typename}({', '.join(fields)})",
        "__new__": new,
        "_fields": fields,
        "_field_defaults": dict(zip(fields[len(fields) - len(defaults) :], defaults, strict=True)),
        "__match_args__": fields,
    }
    for index, name in enumerate(fields):
        namespace[name] = _field(index, f"Alias for field number {index}")
    return type(typename, (_Record,), namespace)


# Names and digests are checked with string methods, not regular expressions: compiling one
# costs 50-200 us, and these checks run at every start (tests/test_run_ids.py compares each
# with the regular expression it stands for).
_NAME_CHARACTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-"
_HEX_DIGITS = "0123456789abcdef"


def is_name(value: object) -> TypeGuard[str]:
    """``[A-Za-z0-9][A-Za-z0-9._-]{0,127}``: a run ID, pipeline or step name."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= 128
        and value[0] not in "._-"
        and not value.strip(_NAME_CHARACTERS)
    )


def is_sha256(value: str) -> bool:
    """``[0-9a-f]{64}``."""
    return len(value) == 64 and not value.strip(_HEX_DIGITS)


#: The parameters of a run that has none (shared: read-only).
NO_PARAMS: Mapping[str, str] = MappingProxyType({})

#: A parameter's name (compiled by ``re`` on first use: most runs have no parameters).
PARAM_KEY_PATTERN = r"\A[A-Za-z_][A-Za-z0-9_.-]{0,63}\Z"


def validate_params(params: Mapping[str, str] | None) -> Mapping[str, str]:
    """Run parameters as a read-only mapping: keys ``[A-Za-z_][A-Za-z0-9_.-]{0,63}``,
    values strings (``UsageError`` otherwise)."""
    if not params:
        return NO_PARAMS
    checked: dict[str, str] = {}
    for key, value in params.items():
        if not isinstance(key, str) or not re.match(PARAM_KEY_PATTERN, key):
            raise UsageError(
                f"invalid parameter name {key!r}: use letters, digits, _ . - (starting with a "
                f"letter or _), at most 64 characters"
            )
        if not isinstance(value, str) or "\x00" in value:
            raise UsageError(f"parameter {key}: its value must be text, not {value!r}"[:200])
        checked[key] = value
    return MappingProxyType(checked)


def validate_name(value: object, what: str) -> str:
    """A run ID, pipeline or step name: ``[A-Za-z0-9][A-Za-z0-9._-]{0,127}``, never a path."""
    if is_name(value):
        return value
    shown = repr(value) if not isinstance(value, str) or len(value) <= 60 else repr(value[:60])
    raise UsageError(
        f"invalid {what} {shown}: use 1 to 128 characters from A-Z a-z 0-9 . _ -, "
        f"starting with a letter or digit (it becomes a directory name, never a path)"
    )


if TYPE_CHECKING:

    class _OutputRecordFields(NamedTuple):
        name: str
        size: int
        sha256: str

else:

    def _new_output_record(_cls, name, size, sha256):
        return tuple.__new__(_cls, (name, size, sha256))

    _OutputRecordFields = record_type("OutputRecord", _new_output_record)


class OutputRecord(_OutputRecordFields):
    """One output of a step: its name relative to the run directory, size and sha256."""

    __slots__ = ()


if TYPE_CHECKING:

    class _InputRecordFields(NamedTuple):
        name: str
        step: str
        sha256: str

else:

    def _new_input_record(_cls, name, step, sha256):
        return tuple.__new__(_cls, (name, step, sha256))

    _InputRecordFields = record_type("InputRecord", _new_input_record)


class InputRecord(_InputRecordFields):
    """An output a step read through ``ctx.read_*``: its name, the step that produced it and
    the sha256 that step recorded. If the producer's output changes, the reader runs again."""

    __slots__ = ()


if TYPE_CHECKING:

    class _MarkerFields(NamedTuple):
        pipeline: str
        step: str
        run_id: str
        started: str
        finished: str
        duration_s: float
        attempts: int
        """HTTP attempts the step made in its completing run (first tries plus retries)."""
        retries: int
        """How many of those attempts were retries."""
        runs: int
        """How many times this step started for this run ID, across processes."""
        outputs: tuple[OutputRecord, ...] = ()
        inputs: tuple[InputRecord, ...] = ()
        """What the step read (``ctx.read_*``) of earlier steps' outputs."""
        params: Mapping[str, str] = NO_PARAMS
        """The run parameters the step ran with (``--param``)."""
        format: int = MARKER_FORMAT

else:

    def _new_marker(  # noqa: PLR0917 - the fields, as namedtuple takes them
        _cls,
        pipeline,
        step,
        run_id,
        started,
        finished,
        duration_s,
        attempts,
        retries,
        runs,
        outputs=(),
        inputs=(),
        params=NO_PARAMS,
        format=MARKER_FORMAT,
    ):
        return tuple.__new__(
            _cls,
            (
                pipeline,
                step,
                run_id,
                started,
                finished,
                duration_s,
                attempts,
                retries,
                runs,
                outputs,
                inputs,
                params,
                format,
            ),
        )

    _MarkerFields = record_type("Marker", _new_marker)


class Marker(_MarkerFields):
    """What a ``.done`` marker records about a completed step (immutable; build it with
    keywords)."""

    __slots__ = ()

    def to_json(self) -> bytes:
        """One line of JSON (the C encoder: markers are written on every step)."""
        data: dict[str, Any] = {
            "format": self.format,
            "pipeline": self.pipeline,
            "step": self.step,
            "run_id": self.run_id,
            "started": self.started,
            "finished": self.finished,
            "duration": self.duration_s,
            "attempts": self.attempts,
            "retries": self.retries,
            "runs": self.runs,
            "outputs": [{"name": o.name, "size": o.size, "sha256": o.sha256} for o in self.outputs],
        }
        if self.inputs:
            data["inputs"] = [
                {"name": i.name, "step": i.step, "sha256": i.sha256} for i in self.inputs
            ]
        if self.params:
            data["params"] = dict(self.params)
        return (_MARKER_ENCODER.encode(data) + "\n").encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Marker:
        """Parse a marker; ``ValueError`` (saying what is wrong) if it is not one."""
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise ValueError(f"not valid JSON ({type(exc).__name__})") from None
        if not isinstance(data, dict):
            raise ValueError(  # noqa: TRY004 - the contract: ValueError for any bad marker
                f"expected a JSON object, found {type(data).__name__}"
            )
        try:
            version = _typed(data, "format", int)
            if version != MARKER_FORMAT:
                raise ValueError(f"unknown marker format {version} (this stalwart writes 1)")
            raw_outputs = _typed(data, "outputs", list)
            return cls(
                pipeline=_typed(data, "pipeline", str),
                step=_typed(data, "step", str),
                run_id=_typed(data, "run_id", str),
                started=_typed(data, "started", str),
                finished=_typed(data, "finished", str),
                duration_s=float(
                    _typed(data, "duration" if "duration" in data else "duration_s", (int, float))
                ),
                attempts=_count(data, "attempts"),
                retries=_count(data, "retries"),
                runs=_count(data, "runs"),
                outputs=tuple(_output(o) for o in raw_outputs),
                inputs=tuple(_input(i) for i in _typed(data, "inputs", list))
                if "inputs" in data
                else (),
                params=_params(data["params"]) if "params" in data else NO_PARAMS,
                format=version,
            )
        except KeyError as exc:
            raise ValueError(f"missing field {exc}") from None
        except TypeError as exc:
            raise ValueError(str(exc)) from None


def _typed(data: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = data[key]
    # JSON decodes to exact types, so `type(...) is` suffices - and it keeps `true` out of
    # the integers. It is on the skip path: 14 checks per marker.
    if type(value) is kind or (type(kind) is tuple and type(value) in kind):
        return value
    raise TypeError(f"{key!r} has the wrong type ({type(value).__name__})")


def _count(data: dict[str, Any], key: str) -> int:
    value: int = _typed(data, key, int)
    if value < 0:
        raise TypeError(f"{key!r} is negative")
    return value


def _name_and_digest(item: object, what: str) -> tuple[str, str]:
    """The ``name`` (an output name) and ``sha256`` of a recorded output or input."""
    if not isinstance(item, dict):
        raise TypeError(f"an {what} is a {type(item).__name__}, not an object")
    name = _typed(item, "name", str)
    if not _is_output_name(name):
        raise TypeError(f"{what} name {name[:80]!r} is not a path inside the run directory")
    sha256 = _typed(item, "sha256", str)
    if not is_sha256(sha256):
        raise TypeError(f"{what} {name!r} has a malformed sha256")
    return name, sha256


def _output(item: dict[str, Any]) -> OutputRecord:
    name, sha256 = _name_and_digest(item, "output")
    return OutputRecord(name=name, size=_count(item, "size"), sha256=sha256)


def _input(item: dict[str, Any]) -> InputRecord:
    name, sha256 = _name_and_digest(item, "input")
    return InputRecord(name=name, step=_typed(item, "step", str), sha256=sha256)


def _params(value: object) -> Mapping[str, str]:
    if not isinstance(value, dict) or not all(
        type(k) is str and type(v) is str for k, v in value.items()
    ):
        raise TypeError("'params' is not an object of strings")
    return MappingProxyType(dict(value))


def normalize_output_name(name: object) -> str | None:
    """``name`` as ``Context`` records it (``a//b`` -> ``a/b``), or None if it is not an
    output name: relative, no ``..``, no part starting with a dot (those are stalwart's:
    markers, lock, temp files), no NUL or backslash. Plain string work: it is on the hot path.
    """
    if not isinstance(name, str) or not name or name[0] == "/" or "\x00" in name or "\\" in name:
        return None
    parts = [part for part in name.split("/") if part]
    if not parts or any(part == ".." or part[0] == "." for part in parts):
        return None
    return "/".join(parts)


def _is_output_name(name: str) -> bool:
    return normalize_output_name(name) is not None


if TYPE_CHECKING:

    class _StepRecordFields(NamedTuple):
        runs: int = 0
        started: str = ""
        outcome: str = ""
        """``"running"``, ``"failed"``, ``"interrupted"``, ``"done"`` (or empty if never run)."""
        finished: str = ""
        error_type: str = ""
        error: str = ""
        attempts: int = 0
        retries: int = 0
        dead_letter_id: str = ""
        extra: Mapping[str, Any] = MappingProxyType({})

else:

    def _new_step_record(  # noqa: PLR0917 - the fields, as namedtuple takes them
        _cls,
        runs=0,
        started="",
        outcome="",
        finished="",
        error_type="",
        error="",
        attempts=0,
        retries=0,
        dead_letter_id="",
        extra=MappingProxyType({}),
    ):
        return tuple.__new__(
            _cls,
            (
                runs,
                started,
                outcome,
                finished,
                error_type,
                error,
                attempts,
                retries,
                dead_letter_id,
                extra,
            ),
        )

    _StepRecordFields = record_type("StepRecord", _new_step_record)


class StepRecord(_StepRecordFields):
    """The latest start or end of a step (from the journal): survives failures and cleared
    markers, unlike the marker. (A ``NamedTuple``, not a dataclass: made at import, a frozen
    dataclass costs ~1.3 ms of every start.)"""

    __slots__ = ()


_RECORD_TYPES: dict[str, type] = {
    "runs": int,
    "started": str,
    "outcome": str,
    "finished": str,
    "error_type": str,
    "error": str,
    "attempts": int,
    "retries": int,
    "dead_letter_id": str,
    "extra": dict,
}


def record_fields(record: StepRecord) -> dict[str, Any]:
    """The record's non-empty fields (journal lines stay short); no deep copy, it is hot."""
    return {
        k: dict(v) if k == "extra" else v
        for k, v in record._asdict().items()
        if v not in ("", 0, None, {})
    }


def parse_record(data: object) -> StepRecord:
    """A journal record; ``TypeError``/``ValueError`` if it is not one."""
    if not isinstance(data, dict):
        raise TypeError("not an object")
    known = {k: data[k] for k in _RECORD_TYPES if k in data}
    for key, value in known.items():
        kind = _RECORD_TYPES[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise TypeError(f"{key} is not a {kind.__name__}")
        if isinstance(value, int) and value < 0:
            raise TypeError(f"{key} is negative")
    return StepRecord(**known)


if TYPE_CHECKING:

    class _SkipDecisionFields(NamedTuple):
        done: bool
        reason: str
        """Why the step must run (empty when it is done)."""
        marker: Marker | None = None
        corrupt: bool = False

else:

    def _new_skip_decision(_cls, done, reason, marker=None, corrupt=False):
        return tuple.__new__(_cls, (done, reason, marker, corrupt))

    _SkipDecisionFields = record_type("SkipDecision", _new_skip_decision)


class SkipDecision(_SkipDecisionFields):
    """Whether a step can be skipped (a ``NamedTuple`` for start-up, like ``StepRecord``)."""

    __slots__ = ()
