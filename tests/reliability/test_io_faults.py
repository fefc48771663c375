"""Fail every I/O operation: the k-th ``os.open/write/fsync/fdatasync/replace`` raises ENOSPC
or EIO.

For each operation kind a clean write is counted first; then, for every k from 1 to that
count, the k-th call of that kind fails - once ("once"), or from then on, like a disk that
stays full ("from-then-on"). The directory fsync is covered too: it is an ``os.open`` and an
``os.fsync`` of the directory, counted like the others. After every fault:

- the destination holds its old content (or, if the fault came after the rename, the new
  content, whole), and no temp file is left;
- the error reaches the caller with its errno and names the destination;
- a failed fsync is never retried (fsync calls counted).

Then the same at the scale of a run: a step's commit (its marker, then the journal's
``fdatasync`` of its "done" record), and every operation of a three-step run through the CLI
(exit 1, a message naming the file, no debris, a clean resume). Plus one real disk-full test
on a 1 MiB tmpfs (root only, as in CI).
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import stat
import subprocess
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import stalwart
from conftest import run_text
from stalwart._atomic import FileDigest, is_temp_name
from stalwart._checkpoint import CheckpointStore, Marker
from stalwart.cli._status import collect
from stalwart.testing import RecordingAlerter

KINDS = ("open", "write", "fsync", "replace")
RUN_KINDS = (*KINDS, "fdatasync")  # a run also commits each step through its journal
MODES = {  # errno, and whether every later call of the kind fails too
    "ENOSPC-once": (errno.ENOSPC, False),
    "ENOSPC-from-then-on": (errno.ENOSPC, True),
    "EIO-once": (errno.EIO, False),
    "EIO-from-then-on": (errno.EIO, True),
}
OLD = b"id,amount\n1,9.99\n"
CHUNK = 512 * 1024
STREAMED = bytes(range(256)) * 10_240  # 2.5 MiB: the 1 MiB buffer spills inside the block


class DiskFaults:
    """Counts the ``os.open/write/fsync/fdatasync/replace`` calls that touch files under
    ``root`` and makes the ``k``-th call of ``kind`` raise ``OSError(error)`` the way the
    kernel would (with the file name for ``open`` and ``replace``). ``persistent``: every later
    call of that kind fails too. Calls are labelled ``open(dir)``/``fsync(dir)`` when they are
    on a directory."""

    def __init__(
        self, root: Path, kind: str = "", k: int = 0, error: int = 0, *, persistent: bool = False
    ) -> None:
        self.root = str(root)
        self.kind = kind
        self.k = k
        self.error = error
        self.persistent = persistent
        self.armed = True
        self.calls: list[str] = []
        self.injected: list[str] = []
        self.replaced = False
        self.replaced_before_fault = False

    def count(self, kind: str) -> int:
        return sum(1 for label in self.calls if label.partition("(")[0] == kind)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for kind in RUN_KINDS:
            monkeypatch.setattr(os, kind, self._wrap(kind, getattr(os, kind)))

    def _label(self, kind: str, args: tuple[Any, ...]) -> str | None:
        """The call's label if it touches something under ``root`` (else None: not ours)."""
        if kind in ("open", "replace"):
            path = str(os.fspath(args[0]))
        else:
            try:
                path = os.readlink(f"/proc/self/fd/{args[0]}")
            except OSError:
                return None
        if not path.startswith(self.root):
            return None
        if kind == "open" and len(args) > 1 and args[1] & os.O_DIRECTORY:
            return "open(dir)"
        if kind == "fsync" and stat.S_ISDIR(os.fstat(args[0]).st_mode):
            return "fsync(dir)"
        return kind

    def _wrap(self, kind: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            label = self._label(kind, args) if self.armed else None
            if label is None:
                return real(*args, **kwargs)
            self.calls.append(label)
            nth = self.count(kind)
            if kind == self.kind and (nth == self.k or (self.persistent and nth > self.k)):
                if not self.injected:
                    self.replaced_before_fault = self.replaced
                self.injected.append(label)
                raise self._oserror(kind, args)
            result = real(*args, **kwargs)
            if kind == "replace":
                self.replaced = True
            return result

        return call

    def _oserror(self, kind: str, args: tuple[Any, ...]) -> OSError:
        strerror = os.strerror(self.error)
        if kind == "open":
            return OSError(self.error, strerror, os.fspath(args[0]))
        if kind == "replace":
            return OSError(self.error, strerror, os.fspath(args[0]), None, os.fspath(args[1]))
        return OSError(self.error, strerror)


def tally(figures: Counter[str], scope: str, faults: DiskFaults) -> None:
    """Count the calls that failed, per scope and operation (``fsync(dir)``...)."""
    for label in faults.injected:
        figures[f"io faults, {scope}: {label}"] += 1


def temps_under(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if is_temp_name(p.name)]


def names_the_path(exc: OSError, path: Path) -> bool:
    return str(path) in str(exc) or exc.filename == str(path)


# -- (a) and (b): one atomic write -------------------------------------------------------------


def write_bytes(dest: Path) -> bytes:
    data = b"id,amount\n" + b"2,19.99\n" * 1000
    stalwart.atomic_write_bytes(dest, data)
    return data


def write_stream(dest: Path) -> bytes:
    with stalwart.atomic_write(dest, "wb", digest=FileDigest()) as handle:  # as ctx streams
        for start in range(0, len(STREAMED), CHUNK):
            handle.write(STREAMED[start : start + CHUNK])
    return STREAMED


WRITERS: dict[str, Callable[[Path], bytes]] = {
    "atomic_write_bytes": write_bytes,
    "atomic_write-stream": write_stream,
}


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("writer", list(WRITERS))
def test_a_fault_at_any_operation_of_an_atomic_write_leaves_the_old_file_whole(
    tmp_path: Path, writer: str, kind: str, mode: str, figures: Counter[str]
) -> None:
    write = WRITERS[writer]
    error, persistent = MODES[mode]
    clean = DiskFaults(tmp_path / "clean")
    (tmp_path / "clean").mkdir()
    with pytest.MonkeyPatch.context() as patch:
        clean.install(patch)
        new = write(tmp_path / "clean" / "report.csv")
    n = clean.count(kind)
    assert n >= 1, clean.calls
    failed: set[str] = set()
    for k in range(1, n + 1):
        directory = tmp_path / f"k{k}"
        directory.mkdir()
        dest = directory / "report.csv"
        dest.write_bytes(OLD)
        faults = DiskFaults(directory, kind, k, error, persistent=persistent)
        with pytest.MonkeyPatch.context() as patch:
            faults.install(patch)
            with pytest.raises(OSError, match=re.escape(os.strerror(error))) as caught:
                write(dest)
        tally(figures, "atomic write", faults)
        failed.update(faults.injected)
        assert faults.injected, f"fault {kind}#{k} was never reached: {faults.calls}"
        where = f"{kind}#{k} ({faults.injected[0]})"
        assert caught.value.errno == error, where
        assert names_the_path(caught.value, dest), f"{where}: {caught.value!r} does not name {dest}"
        assert dest.read_bytes() == (new if faults.replaced_before_fault else OLD), where
        assert sorted(p.name for p in directory.iterdir()) == [dest.name], where
        if kind == "fsync":
            assert faults.count("fsync") == k, f"{where}: a failed fsync was retried"
    if kind in ("open", "fsync"):  # the directory fsync was among the operations failed
        assert f"{kind}(dir)" in failed


# -- (c) the marker written through a pipeline step ----------------------------------------


def one_step(root: Path, alerter: RecordingAlerter) -> stalwart.Pipeline:
    pipeline = stalwart.Pipeline("p", root=root, alerters=[alerter])

    @pipeline.step()
    def one(ctx: stalwart.Context) -> None:
        ctx.write_text("out.txt", "hello")

    return pipeline


def arm_during(patch: pytest.MonkeyPatch, faults: DiskFaults, *methods: str) -> None:
    """Count (and fail) disk calls only while one of ``CheckpointStore``'s ``methods`` runs."""
    faults.armed = False
    for name in methods:
        real = getattr(CheckpointStore, name)

        def armed(*args: Any, _real: Callable[..., Any] = real, **kwargs: Any) -> Any:
            faults.armed = True
            try:
                return _real(*args, **kwargs)
            finally:
                faults.armed = False

        patch.setattr(CheckpointStore, name, armed)


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("kind", RUN_KINDS)
def test_a_fault_committing_a_step_keeps_the_old_marker_or_none_and_says_which(
    tmp_path: Path, kind: str, mode: str, figures: Counter[str]
) -> None:
    error, persistent = MODES[mode]
    root = tmp_path / "state"
    pipeline = one_step(root, RecordingAlerter())
    assert run_text(pipeline)[0] == 0
    run_dir = root / "p" / "runs" / "r1"
    marker = run_dir / ".checkpoints" / "one.done"

    def faulty_run(faults: DiskFaults) -> tuple[int, str]:
        (run_dir / "out.txt").write_text("stale!")  # a changed output: the step runs again
        with pytest.MonkeyPatch.context() as patch:
            faults.install(patch)
            arm_during(patch, faults, "commit")
            return run_text(pipeline)

    clean = DiskFaults(root)
    assert faulty_run(clean)[0] == 0
    old = marker.read_bytes()
    n = clean.count(kind)
    if kind == "fsync":  # the marker has no fsync of its own: the journal's commit covers it
        assert n == 0, clean.calls
        return
    assert n >= 1, clean.calls
    for k in range(1, n + 1):
        faults = DiskFaults(root, kind, k, error, persistent=persistent)
        code, err = faulty_run(faults)
        tally(figures, "step commit", faults)
        where = f"{kind}#{k} ({faults.injected[0] if faults.injected else 'not reached'})"
        assert faults.injected, where
        journal = str(run_dir / ".journal.jsonl")
        if code == 0:  # the "done" record's write failed: the marker synced itself instead
            assert (kind, k) == ("write", 2), f"{where}: {err}"
            assert f"could not append step one's record to {journal}" in err
            assert faults.count("fsync") == 2  # the marker, then .checkpoints/
            assert marker.read_bytes() != old, where
            assert temps_under(run_dir) == [], where
            continue
        assert code == 1, f"{where}: {err}"
        assert str(marker) in err, f"{where}: the message does not name the marker:\n{err}"
        assert "Traceback" not in err
        assert os.strerror(error) in err
        if faults.replaced_before_fault:  # the commit failed: the new marker was withdrawn
            assert not marker.exists(), where
            assert "its marker was withdrawn" in err
        else:
            assert marker.read_bytes() == old, where
        assert temps_under(run_dir) == [], where
        if kind == "fdatasync":
            assert faults.count("fdatasync") == k, f"{where}: a failed fdatasync was retried"
        assert run_text(pipeline)[0] == 0, where  # and the step commits at the next run
        assert Marker.from_json(marker.read_bytes()).run_id == "r1"


def test_a_marker_that_cannot_be_written_fails_the_step_and_pages_a_human(tmp_path: Path) -> None:
    root = tmp_path / "state"
    alerter = RecordingAlerter()
    pipeline = one_step(root, alerter)
    faults = DiskFaults(root, "replace", 1, errno.ENOSPC)
    with pytest.MonkeyPatch.context() as patch:
        faults.install(patch)
        arm_during(patch, faults, "commit")
        code, err = run_text(pipeline)
    assert faults.injected == ["replace"]
    assert code == 1, err
    assert "step one of p (run r1) failed" in err
    assert len(alerter.alerts) == 1, f"a failed run sent no alert:\n{err}"
    assert alerter.last.step == "one"
    assert str(root / "p" / "runs" / "r1" / ".checkpoints" / "one.done") in alerter.last.error
    [row] = collect(pipeline, "r1")
    assert row.state == "failed", row


def test_a_step_journal_that_cannot_be_appended_to_is_never_silent(tmp_path: Path) -> None:
    """Step records are statistics: failing to append one may fail the run (exit 1, an
    alert) or not (a warning naming the file) - but never pass unsaid, never lose a marker."""
    root = tmp_path / "state"
    alerter = RecordingAlerter()
    pipeline = one_step(root, alerter)
    faults = DiskFaults(root, "write", 1, errno.ENOSPC, persistent=True)
    with pytest.MonkeyPatch.context() as patch:
        faults.install(patch)
        arm_during(patch, faults, "write_record")
        code, err = run_text(pipeline)
    checkpoints = str(root / "p" / "runs" / "r1" / ".journal.jsonl")
    assert faults.injected
    if code == 0:
        assert checkpoints in err, f"the lost record was not reported:\n{err}"
        assert CheckpointStore(root / "p" / "runs" / "r1").is_done("one")
    else:
        assert code == 1, err
        assert len(alerter.alerts) == 1, f"a failed run sent no alert:\n{err}"
        assert checkpoints in alerter.last.error


# -- every operation of a three-step run, through the CLI ------------------------------------

ORDERS = [{"id": i, "customer": f"c{i % 97}", "amount": i * 1.5} for i in range(300)]


def three_steps(root: Path, alerter: RecordingAlerter) -> stalwart.Pipeline:
    pipeline = stalwart.Pipeline("p", root=root, alerters=[alerter])

    @pipeline.step()
    def fetch(ctx: stalwart.Context) -> None:
        ctx.write_json("orders.json", ORDERS)

    @pipeline.step()
    def report(ctx: stalwart.Context) -> None:
        rows = "".join(
            f"{order['id']},{order['customer']},{order['amount']:.2f}\n"
            for order in ctx.read_json("orders.json")
        )
        with ctx.atomic_write("report.csv") as out:  # 1.5 MB: the buffer spills in the block
            for _ in range(300):
                out.write(rows)

    @pipeline.step()
    def reject(ctx: stalwart.Context) -> None:
        ctx.dead_letter({"order": 7, "why": "unknown customer"}, reason="unknown customer")
        ctx.write_text("rejected.txt", "1 order kept as a dead letter\n")

    return pipeline


def check_state(root: Path, expected: dict[str, bytes]) -> None:
    """Whatever exists is whole: outputs, markers (and their outputs), envelopes (0600)."""
    run_dir = root / "p" / "runs" / "r1"
    for name, content in expected.items():
        if (run_dir / name).exists():
            assert (run_dir / name).read_bytes() == content, name
    for path in (run_dir / ".checkpoints").glob("*.done"):
        for output in Marker.from_json(path.read_bytes()).outputs:
            assert (run_dir / output.name).stat().st_size == output.size
    for path in (root / "p" / "deadletter").glob("*.json"):
        assert json.loads(path.read_bytes())["payload"]["body"]["size"] > 0
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("kind", RUN_KINDS)
def test_a_fault_anywhere_in_a_run_fails_it_cleanly_and_a_resume_completes_it(
    tmp_path: Path, kind: str, mode: str, figures: Counter[str]
) -> None:
    error, persistent = MODES[mode]
    clean_root = tmp_path / "clean"
    clean = DiskFaults(clean_root)
    with pytest.MonkeyPatch.context() as patch:
        clean.install(patch)
        assert run_text(three_steps(clean_root, RecordingAlerter()))[0] == 0
    clean_dir = clean_root / "p" / "runs" / "r1"
    expected = {n: (clean_dir / n).read_bytes() for n in ("orders.json", "report.csv")}
    expected["rejected.txt"] = (clean_dir / "rejected.txt").read_bytes()
    n = clean.count(kind)
    # fdatasync: the first step's commit, then one shared by the other two when the run ends
    assert n >= (2 if kind == "fdatasync" else 3), clean.calls
    for k in range(1, n + 1):
        root = tmp_path / f"k{k}"
        faults = DiskFaults(root, kind, k, error, persistent=persistent)
        with pytest.MonkeyPatch.context() as patch:
            faults.install(patch)
            code, err = run_text(three_steps(root, RecordingAlerter()))
        tally(figures, "whole run", faults)
        where = f"{kind}#{k} ({faults.injected[0] if faults.injected else 'not reached'})"
        assert faults.injected, where
        assert code in (0, 1), f"{where}: exit {code}\n{err}"
        if code == 1:
            last_word = err.rstrip().rpartition("failed")[2]
            assert str(root) in last_word, f"{where}: the error names no file:\n{err}"
            assert "Traceback" not in err, where
        assert temps_under(root) == [], where
        check_state(root, expected)
        if kind in ("fsync", "fdatasync"):
            assert faults.count(kind) == k, f"{where}: a failed {kind} was retried"
        # The disk is healthy again: a plain resume completes the run.
        code, err = run_text(three_steps(root, RecordingAlerter()))
        assert code == 0, f"{where}: the resume failed\n{err}"
        run_dir = root / "p" / "runs" / "r1"
        for name, content in expected.items():
            assert (run_dir / name).read_bytes() == content, f"{where}: {name}"
        for step in ("fetch", "report", "reject"):
            assert CheckpointStore(run_dir).is_done(step), f"{where}: {step}"
        check_state(root, expected)
        figures["io faults, whole run: runs failed, then resumed"] += 1


# -- a real full disk ---------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs, mounted for the test (needs root: CI runs as root)."""
    mount, umount = shutil.which("mount"), shutil.which("umount")
    if os.geteuid() != 0 or mount is None or umount is None:
        pytest.skip("the real disk-full test mounts a 1 MiB tmpfs: run as root (CI does)")
    point = tmp_path / "small-disk"
    point.mkdir()
    mounted = subprocess.run(
        [mount, "-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs", str(point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        message = f"cannot mount a tmpfs at {point}: {mounted.stderr.strip()}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message} (CI runs as root: this must work)")
        pytest.skip(message)
    try:
        yield point
    finally:
        subprocess.run([umount, str(point)], check=True)


TOO_BIG = bytes(range(256)) * 8 * 1024  # 2 MiB on a 1 MiB disk


def fill_bytes(dest: Path) -> None:
    stalwart.atomic_write_bytes(dest, TOO_BIG)


def fill_stream(dest: Path) -> None:
    with stalwart.atomic_write(dest, "wb") as handle:  # no digest: plain buffered writes
        for start in range(0, len(TOO_BIG), 64 * 1024):
            handle.write(TOO_BIG[start : start + 64 * 1024])


@pytest.mark.parametrize("fill", [fill_bytes, fill_stream], ids=["bytes", "stream"])
def test_a_full_disk_reaches_the_caller_and_keeps_the_old_file(
    small_disk: Path, fill: Callable[[Path], None], figures: Counter[str]
) -> None:
    dest = small_disk / "report.csv"
    dest.write_bytes(OLD)
    free = os.statvfs(small_disk).f_bfree
    with pytest.raises(OSError, match="No space left on device") as caught:
        fill(dest)
    figures["real disk-full writes (tmpfs)"] += 1
    assert caught.value.errno == errno.ENOSPC
    assert names_the_path(caught.value, dest), repr(caught.value)
    assert dest.read_bytes() == OLD
    assert sorted(p.name for p in small_disk.iterdir()) == [dest.name]
    assert os.statvfs(small_disk).f_bfree == free  # no descriptor keeps the dead temp's space


def test_a_full_disk_fails_the_step_not_the_state(small_disk: Path, figures: Counter[str]) -> None:
    root = small_disk / "state"
    alerter = RecordingAlerter()
    pipeline = stalwart.Pipeline("p", root=root, alerters=[alerter])

    @pipeline.step()
    def big(ctx: stalwart.Context) -> None:
        ctx.write_bytes("big.bin", TOO_BIG)

    code, err = run_text(pipeline)
    figures["real disk-full writes (tmpfs)"] += 1
    run_dir = root / "p" / "runs" / "r1"
    assert code == 1
    assert str(run_dir / "big.bin") in err
    assert os.strerror(errno.ENOSPC) in err
    assert len(alerter.alerts) == 1
    assert not (run_dir / "big.bin").exists()
    assert not (run_dir / ".checkpoints" / "big.done").exists()
    assert temps_under(root) == []
    [row] = collect(pipeline, "r1")
    assert row.state == "failed"
