"""The step commit: the output durable first, then the marker renamed into place without
fsyncs of its own, then the step's "done" record committed by an ``fdatasync`` of the run's
journal - at once for a step that comes a second or more after the last sync, shared with
later steps' records for faster ones (a commit a second after the last sync, 32 records, the
run's end). Every failure of that chain ends with no marker or a durable one, and the marker
alone decides what is done: a journal never makes a step skip, nor run."""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import stalwart
from conftest import run_text
from stalwart import _checkpoint
from stalwart._checkpoint import CheckpointStore, Marker, StepRecord
from stalwart.cli._main import run_cli
from stalwart.cli._status import collect
from stalwart.testing import RecordingAlerter

JOURNAL = ".journal.jsonl"


class Syscalls:
    """Records, in order, the disk calls that make things durable or visible - ``fsync``,
    ``fdatasync``, ``replace``, ``unlink`` - with the path they act on (the calls still
    happen). ``fail`` makes the calls of one kind on paths ending with a suffix raise."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[str, str]] = []
        self.journal_at_sync: list[bytes] = []
        self.fail: dict[str, tuple[str, int]] = {}
        for kind in ("fsync", "fdatasync", "replace", "unlink"):
            monkeypatch.setattr(os, kind, self._wrap(kind, getattr(os, kind)))

    def _wrap(self, kind: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            if kind in ("fsync", "fdatasync"):
                path = os.readlink(f"/proc/self/fd/{args[0]}")
                if stat.S_ISDIR(os.fstat(args[0]).st_mode):
                    path += "/"
                if kind == "fdatasync":
                    self.journal_at_sync.append(Path(path).read_bytes())
            elif kind == "replace":
                path = os.fspath(args[1])
            else:
                path = os.fspath(args[0])
            self.calls.append((kind, path))
            suffix, error = self.fail.get(kind, ("\0", 0))
            if path.endswith(suffix):
                raise OSError(error, os.strerror(error))
            return real(*args, **kwargs)

        return call

    def of(self, *kinds: str) -> list[tuple[str, str]]:
        return [call for call in self.calls if call[0] in kinds]


class Clock:
    """The group commit's clock (``_checkpoint._now``), moved by hand: a step that "takes"
    ``seconds`` moves it that far."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = 1000.0
        monkeypatch.setattr(_checkpoint, "_now", lambda: self.now)

    def advance(self, seconds: float) -> None:
        self.now += seconds


def steps(
    root: Path,
    ran: list[str],
    count: int = 2,
    *,
    clock: Clock | None = None,
    takes: float = 0.0,
    alerter: RecordingAlerter | None = None,
) -> stalwart.Pipeline:
    """``count`` steps ``s0``, ``s1``... each writing ``out-<i>.txt``; each moves ``clock``
    by ``takes`` seconds."""
    alerters = [alerter] if alerter is not None else []
    pipeline = stalwart.Pipeline("p", root=root, alerters=alerters, metrics=[])
    for i in range(count):

        def step(ctx: stalwart.Context, i: int = i) -> None:
            ran.append(ctx.step)
            ctx.write_text(f"out-{i}.txt", f"result {i}\n")
            if clock is not None:
                clock.advance(takes)

        pipeline.step(name=f"s{i}")(step)
    return pipeline


def journal_lines(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / JOURNAL).read_bytes().splitlines()]


# -- what a step costs, in order --------------------------------------------------------------


def test_a_step_of_a_second_or_more_is_committed_with_two_fsyncs_and_one_fdatasync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each step takes a second (the group commit's window): its "done" record is durable
    before the next step starts, as if every commit synced."""
    ran: list[str] = []
    clock = Clock(monkeypatch)
    pipeline = steps(tmp_path, ran, count=3, clock=clock, takes=_checkpoint.COMMIT_EVERY)
    pipeline.run(run_id="warm-up")  # the run directory, .checkpoints/ and the journal exist
    calls = Syscalls(monkeypatch)
    run_dir = str(pipeline.run_dir("warm-up"))
    (Path(run_dir) / ".checkpoints" / "s1.done").unlink()
    (Path(run_dir) / ".checkpoints" / "s2.done").unlink()
    pipeline.run(run_id="warm-up")
    assert ran[3:] == ["s1", "s2"]
    per_step = [
        ("fsync", f"{run_dir}/.out-{{i}}.txt.tmp"),  # the output's bytes
        ("replace", f"{run_dir}/out-{{i}}.txt"),
        ("fsync", f"{run_dir}/"),  # the output's name: durable before any marker exists
        ("replace", f"{run_dir}/.checkpoints/s{{i}}.done"),  # no fsync of its own
        ("fdatasync", f"{run_dir}/{JOURNAL}"),  # the "done" record: the commit point
    ]
    expected = [(kind, path.format(i=i)) for i in (1, 2) for kind, path in per_step]
    seen = [
        (kind, path if kind != "fsync" or path.endswith("/") else _untemp(path))
        for kind, path in calls.of("fsync", "fdatasync", "replace")
        if not path.endswith(".summary.json")  # the run's summary: not synced, not a step's
    ]
    assert seen == expected
    # At each commit, the step's "done" record is already in the journal, after the marker.
    for i, content in zip((1, 2), calls.journal_at_sync, strict=True):
        last = json.loads(content.splitlines()[-1])
        assert (last["step"], last["outcome"]) == (f"s{i}", "done")


def test_faster_steps_share_an_fdatasync_and_the_run_ends_with_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran: list[str] = []
    clock = Clock(monkeypatch)
    pipeline = steps(tmp_path, ran, count=6, clock=clock, takes=0.3)
    calls = Syscalls(monkeypatch)
    pipeline.run(run_id="r1")
    run_dir = pipeline.run_dir("r1")
    commit = ("fdatasync", f"{run_dir}/{JOURNAL}")
    done = [c for c in calls.of("fdatasync", "replace") if c[0] == "fdatasync" or ".done" in c[1]]
    # s0: the first commit syncs at once; s1-s3 come within the second after it; s4 comes
    # 1.2 s after it and syncs s1-s4; s5 waits for the run's end.
    marker = f"{run_dir}/.checkpoints/s{{}}.done"
    assert done == [
        ("replace", marker.format(0)),
        commit,
        *[("replace", marker.format(i)) for i in range(1, 5)],
        commit,
        ("replace", marker.format(5)),
        commit,
    ]
    synced = [[json.loads(line) for line in raw.splitlines()] for raw in calls.journal_at_sync]
    last_done = [[r["step"] for r in lines if r["outcome"] == "done"][-1] for lines in synced]
    assert last_done == ["s0", "s4", "s5"]  # s4's sync came before s5 ran

    # At most COMMIT_BATCH records wait, however fast the steps.
    calls.calls.clear()
    monkeypatch.setattr(_checkpoint, "COMMIT_BATCH", 2)
    clock.now += 10
    pipeline.run(run_id="r2")
    order = [c[1].rpartition("/")[2] for c in calls.of("fdatasync", "replace") if ".done" in c[1]
             or c[0] == "fdatasync"]  # fmt: skip
    assert order == [
        "s0.done", JOURNAL,  # the first commit of a run's store
        "s1.done", "s2.done", JOURNAL,  # two waiting: the batch is full
        "s3.done", "s4.done", JOURNAL,
        "s5.done", JOURNAL,  # the run's end
    ]  # fmt: skip


def test_a_shared_sync_that_fails_at_a_steps_commit_fails_that_step_and_withdraws_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """s1 and s2 wait; s3 comes a second after the last sync and its commit syncs all three:
    it fails, s3 fails (not the run's end), and s1-s3 run again."""
    ran: list[str] = []
    clock = Clock(monkeypatch)
    pipeline = steps(tmp_path, ran, count=4, clock=clock, takes=0.4)
    real = fail_the_second_fdatasync(monkeypatch)
    code, err = run_text(pipeline)
    markers = pipeline.run_dir("r1") / ".checkpoints"
    assert code == 1, err
    assert ran == ["s0", "s1", "s2", "s3"]
    assert "the disk failed committing steps s1, s2, s3 of p (run r1) after they ran" in err
    assert "step s3 failed" in err  # the step whose commit it was
    assert sorted(p.name for p in markers.iterdir()) == ["s0.done"]
    monkeypatch.setattr(os, "fdatasync", real)
    ran.clear()
    assert run_text(pipeline)[0] == 0
    assert ran == ["s1", "s2", "s3"]


def test_records_waiting_when_the_journal_was_closed_by_a_failed_append_are_still_synced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """s1's record waits; s2's records cannot be appended (a full disk), which closes the
    journal. The run's end opens it again and syncs s1's record (it was written before)."""
    ran: list[str] = []
    Clock(monkeypatch)
    pipeline = steps(tmp_path, ran, count=3)
    run_dir = pipeline.run_dir("r1")
    journal = str(run_dir / JOURNAL)
    real_write = os.write

    def write(fd: int, data: bytes) -> int:
        if b'"step":"s2"' in data and os.readlink(f"/proc/self/fd/{fd}") == journal:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    calls = Syscalls(monkeypatch)
    monkeypatch.setattr(os, "write", write)
    code, err = run_text(pipeline)
    assert code == 0, err
    assert calls.of("fdatasync") == [("fdatasync", journal)] * 2  # s0's, then the end's
    last = [json.loads(line) for line in calls.journal_at_sync[-1].splitlines()]
    assert ("s1", "done") in [(r["step"], r["outcome"]) for r in last]
    assert ("fsync", str(run_dir / ".checkpoints" / "s2.done")) in calls.calls  # synced itself


def test_a_second_interrupt_while_the_run_commits_still_ends_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C in s2 ends the run, which syncs s1's waiting record; a second Ctrl-C during
    that sync still writes the run's summary (interrupted) and its last log line."""
    ran: list[str] = []
    Clock(monkeypatch)
    pipeline = steps(tmp_path, ran, count=2)

    @pipeline.step()
    def s2(ctx: stalwart.Context) -> None:
        armed.append(True)
        raise KeyboardInterrupt

    armed: list[bool] = []
    real = os.fdatasync

    def fdatasync(fd: int) -> None:
        real(fd)
        if armed:
            armed.clear()
            raise KeyboardInterrupt  # pressed again while the run ends

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    code, err = run_text(pipeline)
    assert code == 130, err
    assert "run r1 of p: interrupted" in err
    summary = json.loads((pipeline.run_dir("r1") / ".summary.json").read_text())
    assert summary["state"] == "interrupted"


def test_records_waiting_when_a_step_fails_are_committed_before_the_run_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran: list[str] = []
    Clock(monkeypatch)  # never moves: every record after the first waits
    pipeline = steps(tmp_path, ran, count=2)

    @pipeline.step()
    def s2(ctx: stalwart.Context) -> None:
        raise ValueError("boom")

    calls = Syscalls(monkeypatch)
    code, err = run_text(pipeline)
    assert code == 1, err
    run_dir = pipeline.run_dir("r1")
    assert calls.of("fdatasync") == [("fdatasync", f"{run_dir}/{JOURNAL}")] * 2
    last = [json.loads(line) for line in calls.journal_at_sync[-1].splitlines()]
    assert [(r["step"], r["outcome"]) for r in last if r["step"] == "s1"][-1] == ("s1", "done")
    assert CheckpointStore(run_dir).is_done("s1")


def test_an_interrupt_during_a_commits_sync_leaves_its_records_to_the_runs_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C lands in s0's commit, before its sync made anything durable: the record is
    still waiting, so the run's end syncs it (the marker stays: its output is durable)."""
    ran: list[str] = []
    Clock(monkeypatch)
    pipeline = steps(tmp_path, ran, count=2)
    calls = Syscalls(monkeypatch)
    real = os.fdatasync  # the recording wrapper
    interrupted: list[int] = []

    def interrupt_the_first(fd: int) -> None:
        if not interrupted:
            interrupted.append(fd)
            raise KeyboardInterrupt
        real(fd)

    monkeypatch.setattr(os, "fdatasync", interrupt_the_first)
    code, err = run_text(pipeline)
    run_dir = pipeline.run_dir("r1")
    assert code == 130, err
    assert ran == ["s0"]
    assert calls.of("fdatasync") == [("fdatasync", f"{run_dir}/{JOURNAL}")]  # the run's end
    last = [json.loads(line) for line in calls.journal_at_sync[-1].splitlines()]
    assert ("s0", "done") in [(r["step"], r["outcome"]) for r in last]
    assert (run_dir / ".checkpoints" / "s0.done").is_file()


def _untemp(path: str) -> str:
    """``.out-1.txt.1a2b3c4d.tmp`` -> ``.out-1.txt.tmp``."""
    head, _, name = path.rpartition("/")
    parts = name.split(".")
    return f"{head}/{'.'.join(parts[:-2] + parts[-1:])}"


def test_the_first_commit_of_a_new_journal_also_syncs_its_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran: list[str] = []
    pipeline = steps(tmp_path, ran, count=2)
    calls = Syscalls(monkeypatch)
    pipeline.run(run_id="r1")
    run_dir = str(pipeline.run_dir("r1"))
    syncs = calls.of("fsync", "fdatasync")
    at = syncs.index(("fdatasync", f"{run_dir}/{JOURNAL}"))
    assert syncs[at + 1] == ("fsync", f"{run_dir}/")  # once: the journal was created
    assert [c for c in syncs if c[0] == "fdatasync"] == [("fdatasync", f"{run_dir}/{JOURNAL}")] * 2
    assert not any(path.endswith(".done") or "/.checkpoints/." in path for _, path in syncs)


# -- every way the commit can fail -------------------------------------------------------------


@pytest.mark.parametrize("error", [errno.EIO, errno.ENOSPC])
def test_a_journal_commit_that_fails_withdraws_the_marker_and_fails_the_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: int
) -> None:
    ran: list[str] = []
    alerter = RecordingAlerter()
    pipeline = stalwart.Pipeline("p", root=tmp_path, alerters=[alerter], metrics=[])

    @pipeline.step()
    def one(ctx: stalwart.Context) -> None:
        ran.append("one")
        ctx.write_text("out.txt", "hello")

    calls = Syscalls(monkeypatch)
    calls.fail["fdatasync"] = (JOURNAL, error)
    code, err = run_text(pipeline)
    run_dir = pipeline.run_dir("r1")
    marker = run_dir / ".checkpoints" / "one.done"
    assert code == 1, err
    assert not marker.exists()  # withdrawn: nothing claims a step done that may not survive
    assert ("unlink", str(marker)) in calls.calls
    assert os.strerror(error) in err
    assert str(marker) in err
    assert str(run_dir / JOURNAL) in err
    assert "its marker was withdrawn and the step will run again" in err
    assert "the disk failed committing step one of p (run r1) after it ran" in err
    assert "Traceback" not in err
    assert len(alerter.alerts) == 1
    [row] = collect(pipeline, "r1")
    assert row.state == "failed", row
    assert (run_dir / "out.txt").read_text() == "hello"  # the output stays, whole
    calls.fail.clear()
    assert run_text(pipeline)[0] == 0
    assert ran == ["one", "one"]
    assert marker.is_file()


def fail_the_second_fdatasync(monkeypatch: pytest.MonkeyPatch) -> Callable[[int], None]:
    """Make the process's second ``fdatasync`` fail with EIO (the first and later ones
    work); return the real one."""
    real = os.fdatasync
    synced: list[int] = []

    def second_fails(fd: int) -> None:
        synced.append(fd)
        if len(synced) == 2:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real(fd)

    monkeypatch.setattr(os, "fdatasync", second_fails)
    return real


def test_a_shared_commit_that_fails_withdraws_every_marker_it_covered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run's last sync commits s1 and s2 together, and fails: both markers go, the run
    fails (exit 1, an alert, the error naming both), s0 - committed by its own sync - stays,
    and the next run runs s1 and s2 again."""
    ran: list[str] = []
    alerter = RecordingAlerter()
    Clock(monkeypatch)
    pipeline = steps(tmp_path, ran, count=3, alerter=alerter)
    calls = Syscalls(monkeypatch)
    real = fail_the_second_fdatasync(monkeypatch)
    code, err = run_text(pipeline)
    run_dir = pipeline.run_dir("r1")
    markers = run_dir / ".checkpoints"
    assert code == 1, err
    assert "run r1 of p failed committing its steps: CommitError: [Errno 5]" in err
    assert f"committing steps s1, s2 through {run_dir / JOURNAL}" in err
    assert (
        f"their markers were withdrawn and they will run again: s1.done, s2.done in {markers}"
        in err
    )
    assert "the disk failed committing steps s1, s2 of p (run r1) after they ran" in err
    assert "Finished steps keep their checkpoints" not in err
    assert "Traceback" not in err
    assert sorted(p.name for p in markers.iterdir()) == ["s0.done"]
    assert [("unlink", str(markers / f"{s}.done")) for s in ("s1", "s2")] == calls.of("unlink")
    [alert] = alerter.alerts
    assert (alert.step, alert.run_id) == ("s2", "r1")  # the last step it could not commit
    rows = collect(pipeline, "r1")
    assert [(row.step, row.state) for row in rows] == [
        ("s0", "done"),
        ("s1", "failed"),
        ("s2", "failed"),
    ]
    assert all("CommitError: [Errno 5]" in row.error for row in rows[1:])
    monkeypatch.setattr(os, "fdatasync", real)
    ran.clear()
    assert run_text(pipeline)[0] == 0
    assert ran == ["s1", "s2"]


def test_a_sync_that_fails_after_a_failed_step_is_a_warning_and_withdraws_its_markers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran: list[str] = []
    Clock(monkeypatch)
    pipeline = steps(tmp_path, ran, count=2)

    @pipeline.step()
    def s2(ctx: stalwart.Context) -> None:
        raise ValueError("boom")

    fail_the_second_fdatasync(monkeypatch)
    code, err = run_text(pipeline)
    markers = pipeline.run_dir("r1") / ".checkpoints"
    assert code == 1, err
    assert "ValueError: boom" in err  # the step's own error stands
    assert "its marker was withdrawn and the step will run again" in err  # a warning for s1
    assert sorted(p.name for p in markers.iterdir()) == ["s0.done"]


@pytest.mark.parametrize("planted", ["directory", "fifo"])
def test_when_the_journal_cannot_take_the_record_the_marker_syncs_itself(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    planted: str,
) -> None:
    ran: list[str] = []
    pipeline = steps(tmp_path, ran, count=1)
    run_dir = pipeline.run_dir("r1")
    run_dir.mkdir(parents=True)
    if planted == "fifo":
        os.mkfifo(run_dir / JOURNAL)
    else:
        (run_dir / JOURNAL).mkdir()
    calls = Syscalls(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="stalwart.checkpoint"):
        pipeline.run(run_id="r1")
    marker = run_dir / ".checkpoints" / "s0.done"
    assert calls.of("fdatasync") == []
    assert calls.of("fsync")[-2:] == [("fsync", str(marker)), ("fsync", f"{marker.parent}/")]
    assert f"could not append step s0's record to {run_dir / JOURNAL}" in caplog.text
    assert CheckpointStore(run_dir).is_done("s0")


def test_a_marker_that_can_neither_be_committed_nor_sync_itself_is_withdrawn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran: list[str] = []
    pipeline = steps(tmp_path, ran, count=1)
    run_dir = pipeline.run_dir("r1")
    run_dir.mkdir(parents=True)
    (run_dir / JOURNAL).mkdir()  # the journal cannot take the line
    calls = Syscalls(monkeypatch)
    calls.fail["fsync"] = ("s0.done", errno.EIO)
    code, err = run_text(pipeline)
    marker = run_dir / ".checkpoints" / "s0.done"
    assert code == 1, err
    assert not marker.exists()
    assert "syncing its marker itself: the journal could not take its record" in err
    assert str(marker) in err


@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EIO])
def test_a_done_record_that_cannot_be_written_leaves_a_synced_marker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: int
) -> None:
    """The record's ``write`` fails (a full disk): the step is not failed for statistics;
    its marker is made durable by itself instead, and the journal starts a clean line."""
    ran: list[str] = []
    pipeline = steps(tmp_path, ran, count=2)
    store = CheckpointStore(pipeline.run_dir("r1"))
    real_write = os.write
    journal = str(store.run_dir / JOURNAL)

    def write(fd: int, data: bytes) -> int:
        done = b'{"step":"s0"' in data and b'"outcome":"done"' in data
        if done and os.readlink(f"/proc/self/fd/{fd}") == journal:
            real_write(fd, data[:7])  # a torn line, then the disk is full
            raise OSError(error, os.strerror(error))
        return real_write(fd, data)

    calls = Syscalls(monkeypatch)
    monkeypatch.setattr(os, "write", write)
    code, err = run_text(pipeline)
    assert code == 0, err
    assert f"could not append step s0's record to {journal}" in err
    assert ("fsync", str(store.marker_path("s0"))) in calls.calls
    monkeypatch.undo()
    assert [s for s in ("s0", "s1") if store.is_done(s, run_id="r1")] == ["s0", "s1"]
    records = [(r["step"], r["outcome"]) for r in journal_lines(store.run_dir)]
    assert records == [("s0", "running"), ("s1", "running"), ("s1", "done")]  # torn line cut


def test_a_torn_tail_that_cannot_be_cut_leaves_a_synced_marker_and_no_merged_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The torn tail must be cut before anything is appended; if the disk refuses the cut
    (EIO), nothing is appended at all: the records are lost with a warning, and the marker
    syncs itself."""
    ran: list[str] = []
    pipeline = steps(tmp_path, ran, count=1)
    run_dir = pipeline.run_dir("r1")
    run_dir.mkdir(parents=True)
    torn = b'{"step":"s0","runs":1,"outcome":"running"}\n{"step":"s0","ru'
    (run_dir / JOURNAL).write_bytes(torn)

    def failing_ftruncate(fd: int, length: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    calls = Syscalls(monkeypatch)
    monkeypatch.setattr(os, "ftruncate", failing_ftruncate)
    with caplog.at_level(logging.WARNING, logger="stalwart.checkpoint"):
        pipeline.run(run_id="r1")
    marker = run_dir / ".checkpoints" / "s0.done"
    assert ran == ["s0"]
    assert (run_dir / JOURNAL).read_bytes() == torn  # never appended to a torn line
    assert caplog.text.count(f"could not append step s0's record to {run_dir / JOURNAL}") == 2
    assert ("fsync", str(marker)) in calls.calls
    assert calls.of("fdatasync") == []
    monkeypatch.undo()
    assert CheckpointStore(run_dir).is_done("s0")


# -- the marker decides: the journal never overrules it ----------------------------------------


def test_a_marker_deleted_by_hand_runs_its_step_again_whatever_the_journal_says(
    tmp_path: Path,
) -> None:
    ran: list[str] = []
    pipeline = steps(tmp_path, ran)
    pipeline.run(run_id="r1")
    run_dir = pipeline.run_dir("r1")
    assert [r["outcome"] for r in journal_lines(run_dir) if r["step"] == "s0"][-1] == "done"
    (run_dir / ".checkpoints" / "s0.done").unlink()
    ran.clear()
    pipeline.run(run_id="r1")
    assert ran == ["s0"]


@pytest.mark.parametrize("damage", [b"", b"\x00" * 300, b"{not json"])
def test_a_damaged_marker_runs_its_step_again_whatever_the_journal_says(
    tmp_path: Path, damage: bytes
) -> None:
    """What a power cut can leave of a marker that was never synced: empty, zeros, torn."""
    ran: list[str] = []
    pipeline = steps(tmp_path, ran)
    pipeline.run(run_id="r1")
    marker = pipeline.run_dir("r1") / ".checkpoints" / "s1.done"
    marker.write_bytes(damage)
    ran.clear()
    pipeline.run(run_id="r1")
    assert ran == ["s1"]
    assert Marker.from_json(marker.read_bytes()).step == "s1"


@pytest.mark.parametrize("journal", ["missing", "no done line", "empty", "zeros", "torn"])
def test_a_marker_whose_done_record_was_lost_still_skips_its_step(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], journal: str
) -> None:
    """A power cut after the marker's rename and before the journal's commit: the kernel
    may have written the marker and not the record. The marker stands (its outputs were
    durable before it existed); the journal is never required to confirm it."""
    ran: list[str] = []
    pipeline = steps(tmp_path, ran)
    pipeline.run(run_id="r1")
    run_dir = pipeline.run_dir("r1")
    path = run_dir / JOURNAL
    raw = path.read_bytes()
    last_done = raw.rstrip(b"\n").rpartition(b"\n")[0] + b"\n"  # s1's "done" line lost
    path.write_bytes(
        {
            "missing": b"",
            "no done line": last_done,
            "empty": b"",
            "zeros": last_done + b"\x00" * 4096,
            "torn": last_done + b'{"step":"s1","run',
        }[journal]
    )
    if journal == "missing":
        path.unlink()
    ran.clear()
    pipeline.run(run_id="r1")
    assert ran == []
    assert run_cli(["status", "--run-id", "r1", "--json"], pipeline=pipeline) == 0
    rows = json.loads(capsys.readouterr().out)["steps"]
    assert [(row["step"], row["state"]) for row in rows] == [("s0", "done"), ("s1", "done")]


def test_a_garbage_journal_tail_is_cut_before_the_next_record(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Zeros a power cut left at the end of the journal are reported once, then cut off:
    they never merge with the next record, nor are they warned about on every later run."""
    ran: list[str] = []
    pipeline = steps(tmp_path, ran)
    pipeline.run(run_id="r1")
    run_dir = pipeline.run_dir("r1")
    path = run_dir / JOURNAL
    clean = path.read_bytes()
    path.write_bytes(clean + b"\x00" * 512)
    (run_dir / ".checkpoints" / "s1.done").unlink()
    ran.clear()
    with caplog.at_level(logging.WARNING, logger="stalwart.checkpoint"):
        pipeline.run(run_id="r1")
    assert ran == ["s1"]
    assert f"ignored 1 unreadable line(s) of {path}" in caplog.text
    after = path.read_bytes()
    assert after.startswith(clean)
    assert b"\x00" not in after
    assert [(r["step"], r["outcome"]) for r in journal_lines(run_dir)][-2:] == [
        ("s1", "running"),
        ("s1", "done"),
    ]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="stalwart.checkpoint"):
        pipeline.run(run_id="r1")
    assert "unreadable" not in caplog.text


def test_commit_writes_the_marker_and_the_record(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    marker = Marker(
        pipeline="p",
        step="fetch",
        run_id=tmp_path.name,
        started="s",
        finished="f",
        duration_s=0.1,
        attempts=1,
        retries=0,
        runs=2,
    )
    store.commit(marker, StepRecord(runs=2, outcome="done"))
    store.close()
    assert store.is_done("fetch")
    assert CheckpointStore(tmp_path).read_record("fetch") == StepRecord(runs=2, outcome="done")
    assert stat.S_IMODE(store.marker_path("fetch").stat().st_mode) == 0o600
