"""The stdlib JSON formatter writes, byte for byte, the lines python-json-logger wrote."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stalwart import Context, Pipeline
from stalwart._logging import ContextFilter, JsonFormatter, rfc3339
from stalwart.cli._main import run_cli

pytest.importorskip("pythonjsonlogger")
from pythonjsonlogger.json import JsonFormatter as PreviousJsonFormatter


def previous_formatter() -> logging.Formatter:
    """The formatter stalwart 0.1 configured (python-json-logger), kept here to compare."""

    class RFC3339JsonFormatter(PreviousJsonFormatter):
        def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
            return rfc3339(record.created)

    formatter: logging.Formatter = RFC3339JsonFormatter(
        ["asctime", "levelname", "name", "message"],
        rename_fields={"asctime": "timestamp", "levelname": "level", "name": "logger"},
        json_ensure_ascii=False,
    )
    return formatter


class Both(logging.Handler):
    """Formats every record with the new and the previous formatter."""

    def __init__(self) -> None:
        super().__init__()
        self.new = JsonFormatter()
        self.old = previous_formatter()
        self.pairs: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        new = self.new.format(record)
        record.exc_text = None  # logging.Formatter caches it; start each side the same
        self.pairs.append((new, self.old.format(record)))


@pytest.fixture
def both() -> Iterator[Both]:
    handler = Both()
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield handler
    root.removeHandler(handler)
    root.setLevel(level)


class Colour(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class Row:
    id: int
    name: str


class Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no str")


class Unshowable(Unprintable):
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


ODD_VALUES: dict[str, Any] = {
    "when": dt.datetime(2026, 11, 28, 3, 0, 0, 123456, tzinfo=dt.UTC),
    "day": dt.date(2026, 11, 28),
    "at": dt.time(3, 0),
    "error": ValueError("bad row 7"),
    "colour": Colour.RED,
    "colours": Colour,
    "raw": b"\x00\xffbytes",
    "buffer": bytearray(b"abc"),
    "row": Row(1, "naïve ünïcode"),
    "kind": Row,
    "path": Path("/tmp/out.csv"),
    "uid": uuid.UUID(int=7),
    "unprintable": Unprintable(),
    "unshowable": Unshowable(),
    "nested": {"a": [1, 2.5, None, True], "b": "ü"},
    "nan": float("nan"),
}


def test_every_kind_of_record_gives_the_same_line(both: Both) -> None:
    log = logging.getLogger("stalwart.test")
    log.info("plain %s and %d", "text", 3)
    log.warning("with fields", extra={"pipeline": "p", "run_id": "r", "rows": 3, "wait_s": 0.5})
    log.info("odd values", extra=ODD_VALUES)
    log.info("a field named timestamp", extra={"timestamp": "mine", "level": "x"})
    log.info({"event": "dict message", "rows": 2})
    log.info({"event": "dict with its own exc_info", "exc_info": "given"})
    log.info("private fields are left out", extra={"_hidden": 1, "shown": 2})
    log.info("stack", stack_info=True)
    log.error('ünïcode ✓ and "quotes"\nnewline')
    try:
        empty: dict[str, int] = {}
        empty["missing"]
    except KeyError:
        log.exception("with a traceback", extra={"step": "s"})
        log.error("traceback and stack", exc_info=True, stack_info=True)
    assert len(both.pairs) == 11
    for new, old in both.pairs:
        assert new == old
    fields = json.loads(both.pairs[2][0])
    assert fields["unshowable"] == "__could_not_encode__"
    assert "Traceback" in json.loads(both.pairs[9][0])["exc_info"]


def test_a_cli_run_logs_the_same_lines_including_a_failure(root: Path, both: Both) -> None:
    pipeline = Pipeline("daily", root=root, metrics=[], alerters=[])

    @pipeline.step
    def fetch(ctx: Context) -> None:
        ctx.log.info("fetched %d rows", 3, extra={"rows": 3, "when": dt.date(2026, 1, 2)})
        ctx.write_text("out.txt", "x\n")

    @pipeline.step
    def report(ctx: Context) -> None:
        raise RuntimeError("report template missing")

    handlers = list(logging.getLogger().handlers)
    code = run_cli(["run", "--run-id", "r1", "--log-format", "json"], pipeline=pipeline)
    for handler in logging.getLogger().handlers:  # the CLI's own stderr handler
        if handler not in handlers:
            logging.getLogger().removeHandler(handler)
    assert code == 1
    messages = [json.loads(new)["message"] for new, _ in both.pairs]
    assert "fetched 3 rows" in messages
    assert any("report failed" in m for m in messages)
    for new, old in both.pairs:
        assert new == old
