"""Atomic writes: the fsync/rename order, cleanup on every exception, modes, streaming, sweeps."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import importlib.util
import json
import os
import stat
import sys
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import stalwart
from stalwart import _atomic
from stalwart._atomic import (
    FileDigest,
    atomic_write,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    fsync_directory,
    is_temp_name,
    replace_bytes,
    sweep_temp_files,
    temp_name_for,
)

MiB = 1 << 20


def temp_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.rglob("*") if is_temp_name(p.name))


@pytest.fixture
def umask() -> Iterator[Callable[[int], None]]:
    """Set the process umask for one test; restored afterwards."""
    original = os.umask(0o022)
    os.umask(original)

    def set_umask(value: int) -> None:
        os.umask(value)

    yield set_umask
    os.umask(original)


class DiskCalls:
    """Records os.open / os.fsync / os.replace as (call, path) in the order they happen."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[str, str]] = []
        self.sizes: dict[str, int] = {}
        self._paths: dict[int, str] = {}
        real_open, real_fsync, real_replace = os.open, os.fsync, os.replace

        def fake_open(path: Any, flags: int, mode: int = 0o777, **kw: Any) -> int:
            fd = real_open(path, flags, mode, **kw)
            self._paths[fd] = os.fspath(path)
            self.calls.append(("open", os.fspath(path)))
            return fd

        def fake_fsync(fd: int) -> None:
            path = self._paths.get(fd, f"fd {fd}")
            self.sizes[path] = os.fstat(fd).st_size  # what is in the file when it is synced
            self.calls.append(("fsync", path))
            real_fsync(fd)

        def fake_replace(src: Any, dst: Any) -> None:
            self.calls.append(("replace", f"{os.fspath(src)} -> {os.fspath(dst)}"))
            real_replace(src, dst)

        monkeypatch.setattr(os, "open", fake_open)
        monkeypatch.setattr(os, "fsync", fake_fsync)
        monkeypatch.setattr(os, "replace", fake_replace)

    def order(self) -> list[tuple[str, str]]:
        return [c for c in self.calls if c[0] != "open"]


# -- the protocol order ----------------------------------------------------------------------


@pytest.mark.parametrize("how", ["stream", "bytes", "text", "json"])
def test_fsync_temp_then_replace_then_fsync_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    dest = tmp_path / "out.dat"
    dest.write_bytes(b"old")
    calls = DiskCalls(monkeypatch)
    payload = "x" * 300_000
    if how == "stream":
        with atomic_write(dest, "w") as handle:
            handle.write(payload)
    elif how == "bytes":
        atomic_write_bytes(dest, payload.encode())
    elif how == "text":
        atomic_write_text(dest, payload)
    else:
        atomic_write_json(dest, payload)
    expected = dest.read_bytes()
    temps = [path for call, path in calls.calls if call == "open" and is_temp_name(Path(path).name)]
    assert len(temps) == 1
    temp = temps[0]
    assert Path(temp).parent == tmp_path
    assert calls.order() == [
        ("fsync", temp),
        ("replace", f"{temp} -> {dest}"),
        ("fsync", str(tmp_path)),
    ]
    # Everything was flushed into the temp file before it was synced.
    assert calls.sizes[temp] == len(expected)
    assert not os.path.exists(temp)


def test_marker_is_written_with_the_same_protocol(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = stalwart.CheckpointStore(tmp_path)
    store._ensure_directory()
    calls = DiskCalls(monkeypatch)
    store.write_marker(
        stalwart.Marker(
            pipeline="p",
            step="fetch",
            run_id="r",
            started="s",
            finished="f",
            duration_s=0.1,
            attempts=1,
            retries=0,
            runs=1,
        )
    )
    (step, temp), (replace, _), (dirsync, directory) = calls.order()
    assert (step, replace, dirsync) == ("fsync", "replace", "fsync")
    assert is_temp_name(Path(temp).name)
    assert directory == str(tmp_path / ".checkpoints")


def test_fsync_directory_syncs_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = DiskCalls(monkeypatch)
    fsync_directory(tmp_path)
    assert calls.order() == [("fsync", str(tmp_path))]


# -- cleanup on errors ------------------------------------------------------------------------


@pytest.mark.parametrize("error", [ValueError("bad row"), KeyboardInterrupt(), SystemExit(3)])
@pytest.mark.parametrize("existing", [True, False])
def test_exception_in_block_removes_temp_and_keeps_destination(
    tmp_path: Path, error: BaseException, existing: bool
) -> None:
    dest = tmp_path / "report.csv"
    if existing:
        dest.write_text("old report\n")
    seen: list[str] = []

    def write_then_fail() -> None:
        with atomic_write(dest) as handle:
            handle.write("new partial report " * 100_000)  # more than the 1 MiB buffer
            handle.flush()
            seen.extend(temp_files(tmp_path))
            raise error

    with pytest.raises(type(error)):
        write_then_fail()
    assert len(seen) == 1, "the temp file existed while writing"
    assert temp_files(tmp_path) == []
    if existing:
        assert dest.read_text() == "old report\n"
    else:
        assert not dest.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == (["report.csv"] if existing else [])


@pytest.mark.parametrize("failing", ["fsync", "replace"])
@pytest.mark.parametrize("error", ["eio", "interrupt"])
def test_failure_while_committing_removes_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str, error: str
) -> None:
    dest = tmp_path / "data.bin"
    dest.write_bytes(b"old")

    def broken(*args: Any) -> None:
        if error == "eio":
            raise OSError(errno.EIO, "Input/output error")
        raise KeyboardInterrupt

    monkeypatch.setattr(os, failing, broken)
    expected: type[BaseException] = OSError if error == "eio" else KeyboardInterrupt
    with pytest.raises(expected) as info, atomic_write(dest, "wb") as handle:
        handle.write(b"new")
    if error == "eio":
        assert isinstance(info.value, OSError)
        assert info.value.errno == errno.EIO
        assert str(dest) in str(info.value)  # the message names the destination
    monkeypatch.undo()
    assert dest.read_bytes() == b"old"
    assert temp_files(tmp_path) == []


@pytest.mark.parametrize("failing", ["write", "fsync", "replace"])
def test_one_call_forms_remove_temp_on_interrupt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    dest = tmp_path / "data.json"
    dest.write_text('{"old": true}')

    def interrupted(*args: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, failing, interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_json(dest, {"new": True})
    monkeypatch.undo()
    assert json.loads(dest.read_text()) == {"old": True}
    assert temp_files(tmp_path) == []


def test_error_from_the_block_is_not_renamed(tmp_path: Path) -> None:
    """An OSError the caller's own code raises is passed through untouched."""
    original = FileNotFoundError(errno.ENOENT, "No such file", "input.csv")

    def fail_inside() -> None:
        with atomic_write(tmp_path / "out") as handle:
            handle.write("x")
            raise original

    with pytest.raises(FileNotFoundError) as info:
        fail_inside()
    assert info.value is original
    assert temp_files(tmp_path) == []


def test_error_without_errno_is_raised_as_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = OSError("no errno")

    def broken(*args: Any) -> None:
        raise original

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError, match="no errno") as info:
        atomic_write_bytes(tmp_path / "out", b"x")
    assert info.value is original
    assert info.value.__cause__ is not info.value
    monkeypatch.undo()
    assert temp_files(tmp_path) == []


def test_missing_directory_names_the_destination(tmp_path: Path) -> None:
    dest = tmp_path / "missing" / "out.txt"
    with pytest.raises(FileNotFoundError) as info, atomic_write(dest):
        pytest.fail("the block must not run")  # pragma: no cover
    assert str(dest) in str(info.value)
    with pytest.raises(FileNotFoundError, match="atomic write of"):
        atomic_write_text(dest, "x")


def test_directory_at_destination_is_an_error_and_leaves_no_temp(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(IsADirectoryError) as info:
        atomic_write_bytes(dest, b"x")
    assert info.value.errno == errno.EISDIR
    assert str(dest) in str(info.value)
    assert temp_files(tmp_path) == []
    assert dest.is_dir()


def test_unknown_encoding_leaves_no_temp(tmp_path: Path) -> None:
    with pytest.raises(LookupError), atomic_write(tmp_path / "out", encoding="no-such-codec"):
        pytest.fail("the block must not run")  # pragma: no cover
    assert list(tmp_path.iterdir()) == []


def test_closing_the_file_inside_the_block_still_commits(tmp_path: Path) -> None:
    dest = tmp_path / "out.txt"
    with atomic_write(dest) as handle:
        handle.write("complete\n")
        handle.close()
    assert dest.read_text() == "complete\n"
    assert temp_files(tmp_path) == []


# -- permissions ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o755, 0o444])
@pytest.mark.parametrize("how", ["stream", "bytes"])
def test_existing_destination_keeps_its_mode(tmp_path: Path, mode: int, how: str) -> None:
    dest = tmp_path / "keep"
    dest.write_bytes(b"old")
    dest.chmod(mode)
    if how == "stream":
        with atomic_write(dest, "wb") as handle:
            handle.write(b"new")
    else:
        atomic_write_bytes(dest, b"new")
    assert dest.read_bytes() == b"new"
    assert stat.S_IMODE(dest.stat().st_mode) == mode


@pytest.mark.parametrize(("mask", "expected"), [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
@pytest.mark.parametrize("how", ["stream", "bytes"])
def test_new_file_follows_the_umask(
    tmp_path: Path, umask: Callable[[int], None], mask: int, expected: int, how: str
) -> None:
    umask(mask)
    dest = tmp_path / "new"
    if how == "stream":
        with atomic_write(dest, "wb") as handle:
            handle.write(b"new")
    else:
        atomic_write_bytes(dest, b"new")
    assert stat.S_IMODE(dest.stat().st_mode) == expected  # 0o666 & ~umask, not mkstemp's 0600


def test_replace_bytes_new_mode_applies_to_new_files_only(
    tmp_path: Path, umask: Callable[[int], None]
) -> None:
    umask(0o022)
    fresh = tmp_path / "fresh"
    replace_bytes(fresh, b"1", new_mode=0o600)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o600
    fresh.chmod(0o640)
    replace_bytes(fresh, b"2", new_mode=0o600)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o640
    assert fresh.read_bytes() == b"2"


# -- modes, text and binary -------------------------------------------------------------------


def test_text_mode_encodes_and_does_not_translate_newlines(tmp_path: Path) -> None:
    dest = tmp_path / "t.txt"
    with atomic_write(dest, "w") as handle:
        handle.write("café\r\nline\n")
    assert dest.read_bytes() == "café\r\nline\n".encode()
    with atomic_write(dest, "wt", encoding="latin-1") as handle:
        handle.write("café")
    assert dest.read_bytes() == b"caf\xe9"


def test_binary_mode_writes_bytes_and_rejects_text(tmp_path: Path) -> None:
    dest = tmp_path / "b.bin"
    with atomic_write(dest, "wb") as handle:
        handle.write(b"\x00\xff" * 10)
    assert dest.read_bytes() == b"\x00\xff" * 10
    with pytest.raises(TypeError), atomic_write(dest, "wb") as handle:
        handle.write("text")  # type: ignore[call-overload]
    with pytest.raises(TypeError), atomic_write(dest, "w") as text:
        text.write(b"bytes")  # type: ignore[arg-type]
    assert dest.read_bytes() == b"\x00\xff" * 10
    assert temp_files(tmp_path) == []


@pytest.mark.parametrize("mode", ["a", "r", "w+", "x", "ab", "rb", "", "W"])
def test_invalid_mode_is_refused_before_touching_disk(tmp_path: Path, mode: str) -> None:
    with pytest.raises(ValueError, match="mode must be"):
        atomic_write(tmp_path / "out", mode)  # type: ignore[call-overload]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("value", [object(), {"when": {1, 2}}, {1: "a", "b": 2}, b"bytes"])
def test_json_of_unserialisable_value_leaves_file_untouched(tmp_path: Path, value: Any) -> None:
    dest = tmp_path / "data.json"
    dest.write_text('{"kept": 1}\n')
    with pytest.raises(TypeError):
        atomic_write_json(dest, value)
    assert dest.read_text() == '{"kept": 1}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.json"]


def test_json_form_is_sorted_indented_utf8(tmp_path: Path) -> None:
    dest = tmp_path / "d.json"
    atomic_write_json(dest, {"b": "é", "a": [1, 2]})
    text = dest.read_text(encoding="utf-8")
    assert text.endswith("}\n")
    assert text.index('"a"') < text.index('"b"')
    assert "é" in text
    assert json.loads(text) == {"a": [1, 2], "b": "é"}


def test_bytes_form_rejects_text_without_creating_anything(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="bytes"):
        atomic_write_bytes(tmp_path / "out", "text")  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def test_digest_records_size_and_sha256(tmp_path: Path) -> None:
    data = b"0123456789" * 200_000
    one_call = FileDigest()
    atomic_write_bytes(tmp_path / "a", data, digest=one_call)
    streamed = FileDigest()
    with atomic_write(tmp_path / "b", "wb", digest=streamed) as handle:
        for start in range(0, len(data), 7777):
            handle.write(data[start : start + 7777])
    text = FileDigest()
    atomic_write_text(tmp_path / "c", "é" * 10, digest=text)
    expected = hashlib.sha256(data).hexdigest()
    assert (one_call.size, one_call.sha256) == (len(data), expected)
    assert (streamed.size, streamed.sha256) == (len(data), expected)
    assert (text.size, text.sha256) == (20, hashlib.sha256("é".encode() * 10).hexdigest())


def _hashed_by(digest: FileDigest) -> str:
    """Which sha256 a digest used: ``_hashlib`` (OpenSSL) or the built-in one."""
    return type(digest._hash).__module__


@settings(max_examples=60, deadline=None)
@given(
    chunks=st.lists(st.binary(max_size=300), max_size=8),
    budget=st.integers(min_value=-1, max_value=1200),
)
def test_digest_is_sha256_whichever_implementation_hashes(chunks: list[bytes], budget: int) -> None:
    """Below the process's budget the built-in sha256 hashes the kept bytes; past it,
    OpenSSL's takes over mid-stream. Either way the digest is sha256 of all the bytes."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delitem(sys.modules, "_hashlib")  # as in a run that loaded no OpenSSL
        mp.setattr(_atomic, "_builtin_sha256_left", [budget])
        digest = FileDigest()
        for chunk in chunks:
            digest.update(memoryview(chunk))
        total = sum(map(len, chunks))
        assert digest.size == total
        assert digest.sha256 == hashlib.sha256(b"".join(chunks)).hexdigest()
        within_budget = budget > 0 and total <= budget
        assert (_hashed_by(digest) != "_hashlib") == within_budget
        if within_budget:
            assert _atomic._builtin_sha256_left == [budget - total]
        digest.update(b"more")  # a digest read once keeps hashing what follows
        assert digest.sha256 == hashlib.sha256(b"".join([*chunks, b"more"])).hexdigest()


def test_a_write_past_the_budget_is_hashed_without_a_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    """A chunk larger than what is left of the budget goes to OpenSSL as it is: the digest
    keeps no copy of an 8 MiB write (only the small chunks before it)."""
    monkeypatch.delitem(sys.modules, "_hashlib")
    monkeypatch.setattr(_atomic, "_builtin_sha256_left", [256 * 1024])
    big = bytearray(8 * MiB)
    digest = FileDigest()
    digest.update(b"head")
    tracemalloc.start()
    try:
        digest.update(memoryview(big))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < MiB, f"peak {peak / MiB:.1f} MiB"
    assert digest.sha256 == hashlib.sha256(b"head" + big).hexdigest()
    assert _hashed_by(digest) == "_hashlib"


def test_digest_uses_openssl_once_it_is_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_atomic, "_builtin_sha256_left", [10**6])
    digest = FileDigest()  # _hashlib is loaded in the test process
    digest.update(b"abc")
    assert _hashed_by(digest) == "_hashlib"  # hashing as it goes
    assert digest.sha256 == hashlib.sha256(b"abc").hexdigest()
    assert _atomic._builtin_sha256_left == [10**6]  # the budget is kept for runs without it


def test_digest_falls_back_to_openssl_without_a_builtin_sha256(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delitem(sys.modules, "_hashlib")
    monkeypatch.setattr(_atomic, "_builtin_sha256_left", [10**6])
    for name in ("_sha2", "_sha256"):  # a Python built without them
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setattr(_atomic, "_builtin_sha256_found", [])  # looked up afresh
    assert _atomic._builtin_sha256() is None
    assert _atomic._builtin_sha256_found == [None]  # once
    digest = FileDigest()
    digest.update(b"abc")
    assert digest.sha256 == hashlib.sha256(b"abc").hexdigest()
    assert _hashed_by(digest) == "_hashlib"


def test_the_builtin_sha256_is_looked_up_under_this_versions_name_first() -> None:
    """A name that is not there costs a search of all of ``sys.path``: the first tried is the
    one this Python has (``_sha256`` on 3.11, ``_sha2`` from 3.12)."""
    assert importlib.util.find_spec(_atomic._BUILTIN_SHA256_NAMES[0]) is not None


def test_digesting_handle_exposes_its_descriptor(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    with atomic_write(dest, "wb", digest=FileDigest()) as handle:
        handle.write(b"abc")
        handle.flush()
        assert os.fstat(handle.fileno()).st_size == 3
        temp = temp_files(tmp_path)[0]
        assert os.fstat(handle.fileno()).st_ino == (tmp_path / temp).stat().st_ino
    raw = _atomic._DigestingRaw(os.open(dest, os.O_WRONLY), FileDigest())
    raw.close()
    raw.close()  # closing twice closes the descriptor once
    assert raw.closed


# -- streaming ------------------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "total_mib"), [("wb", 64), ("w", 16)])
def test_streaming_does_not_hold_the_file_in_memory(
    tmp_path: Path, mode: str, total_mib: int
) -> None:
    chunk: bytes | str = b"\xab" * MiB if mode == "wb" else "z" * MiB
    dest = tmp_path / "big"
    digest = FileDigest()
    tracemalloc.start()
    try:
        with atomic_write(dest, mode, digest=digest) as handle:  # type: ignore[call-overload]
            for _ in range(total_mib):
                handle.write(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert dest.stat().st_size == total_mib * MiB
    assert digest.size == total_mib * MiB
    # The whole file would be 16-64 MiB; the writer holds at most a buffer and a chunk.
    assert peak < 6 * MiB, f"peak {peak / MiB:.1f} MiB"


# -- temp names and sweeping ----------------------------------------------------------------


def test_temp_names_are_hidden_unique_and_recognised() -> None:
    names = {temp_name_for("report.csv") for _ in range(50)}
    assert len(names) == 50
    for name in names:
        assert name.startswith(".report.csv.")
        assert name.endswith(".tmp")
        assert is_temp_name(name)
    for other in ["report.csv", ".report.csv", ".x.tmp", "x.0123abcd.tmp", ".x.0123ABCD.tmp"]:
        assert not is_temp_name(other)


def test_long_destination_name_still_fits(tmp_path: Path) -> None:
    dest = tmp_path / ("é" * 120 + ".csv")  # 244 bytes: legal, but not with 14 more
    assert len(os.fsencode(temp_name_for(dest.name))) <= 255
    assert is_temp_name(temp_name_for(dest.name))
    with atomic_write(dest) as handle:
        handle.write("long")
    assert dest.read_text() == "long"
    assert temp_files(tmp_path) == []


def test_sweep_removes_dead_temps_only(tmp_path: Path) -> None:
    nested = tmp_path / "a" / "b"
    nested.mkdir(parents=True)
    dead = [tmp_path / temp_name_for("x.csv"), nested / temp_name_for(".done")]
    for path in dead:
        path.write_bytes(b"debris")
    keep = ["x.csv", ".x.tmp", "x.0123abcd.tmp", ".x.0123ABCD.tmp", ".checkpoint"]
    for name in keep:
        (tmp_path / name).write_text("user data")
    (tmp_path / temp_name_for("dir")).mkdir()  # a directory with a temp name
    link = tmp_path / temp_name_for("link")
    link.symlink_to(tmp_path / "x.csv")  # a symlink with a temp name
    removed = sweep_temp_files(tmp_path)
    assert sorted(removed) == sorted(dead)
    assert not any(p.exists() for p in dead)
    for name in keep:
        assert (tmp_path / name).read_text() == "user data"
    assert link.is_symlink()
    assert sweep_temp_files(tmp_path) == []


def test_sweep_leaves_a_live_writers_temp_alone(tmp_path: Path) -> None:
    dest = tmp_path / "shared.json"
    with atomic_write(dest) as handle:
        handle.write("being written")
        handle.flush()
        live = temp_files(tmp_path)
        assert len(live) == 1
        assert sweep_temp_files(tmp_path) == []  # the writer holds its lock
        assert temp_files(tmp_path) == live
    assert dest.read_text() == "being written"
    assert temp_files(tmp_path) == []


def test_sweep_not_recursive_and_missing_directory(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    top = tmp_path / temp_name_for("a")
    deep = tmp_path / "sub" / temp_name_for("b")
    top.write_bytes(b"")
    deep.write_bytes(b"")
    (tmp_path / temp_name_for("d")).mkdir()
    assert sweep_temp_files(tmp_path, recursive=False) == [top]
    assert deep.exists()
    assert sweep_temp_files(tmp_path / "missing") == []


def test_sweep_skips_a_temp_it_cannot_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    debris = tmp_path / temp_name_for("x")
    debris.write_bytes(b"")
    real_open = os.open

    def refusing(path: Any, flags: int, *args: Any) -> int:
        if os.fspath(path) == str(debris):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", refusing)
    assert sweep_temp_files(tmp_path) == []
    assert debris.exists()
    assert "cannot check temp file" in caplog.text


def test_sweep_is_quiet_about_a_temp_that_vanished(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    debris = tmp_path / temp_name_for("x")
    debris.write_bytes(b"")
    real_open = os.open

    def vanished(path: Any, flags: int, *args: Any) -> int:
        if os.fspath(path) == str(debris):
            raise FileNotFoundError(errno.ENOENT, "No such file", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", vanished)
    assert sweep_temp_files(tmp_path) == []
    assert caplog.text == ""


def test_sweep_treats_a_temp_as_debris_when_flock_is_unsupported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    debris = tmp_path / temp_name_for("x")
    debris.write_bytes(b"")

    def no_locks(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    assert sweep_temp_files(tmp_path) == [debris]
    # ...and writers still work on such a filesystem.
    atomic_write_bytes(tmp_path / "out", b"ok")
    assert (tmp_path / "out").read_bytes() == b"ok"


def test_sweep_tolerates_files_vanishing_or_being_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gone = tmp_path / temp_name_for("gone")
    swapped = tmp_path / temp_name_for("swapped")
    unlinked = tmp_path / temp_name_for("unlinked")
    for path in (gone, swapped, unlinked):
        path.write_bytes(b"")
    real_lstat, real_fstat, real_unlink = os.lstat, os.fstat, os.unlink

    def lstat(path: Any, *args: Any, **kw: Any) -> os.stat_result:
        if os.fspath(path) == str(gone):
            raise FileNotFoundError(errno.ENOENT, "gone", str(path))
        return real_lstat(path, *args, **kw)

    def fstat(fd: int) -> os.stat_result:
        result = real_fstat(fd)
        if result.st_ino == real_lstat(swapped).st_ino:
            return os.stat_result((*result[:1], result.st_ino + 1, *result[2:]))
        return result

    def unlink(path: Any, *args: Any, **kw: Any) -> None:
        if os.fspath(path) == str(unlinked):
            real_unlink(path)  # someone else removed it first
        real_unlink(path, *args, **kw)

    monkeypatch.setattr(os, "lstat", lstat)
    monkeypatch.setattr(os, "fstat", fstat)
    monkeypatch.setattr(os, "unlink", unlink)
    assert sweep_temp_files(tmp_path) == []
    monkeypatch.undo()
    assert gone.exists()
    assert swapped.exists()  # another file now: not what was looked at
    assert not unlinked.exists()


def test_writer_retries_when_a_sweep_takes_its_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sweep that removes the temp between its creation and its lock cannot win."""
    real_lock = _atomic._lock_temp
    swept: list[Path] = []

    def sweep_then_lock(fd: int) -> None:
        if not swept:
            swept.extend(sweep_temp_files(tmp_path))
        real_lock(fd)

    monkeypatch.setattr(_atomic, "_lock_temp", sweep_then_lock)
    atomic_write_bytes(tmp_path / "out", b"complete")
    assert len(swept) == 1
    assert (tmp_path / "out").read_bytes() == b"complete"
    assert temp_files(tmp_path) == []


def test_temp_name_collisions_are_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    taken = tmp_path / ".out.0000abcd.tmp"
    taken.write_bytes(b"someone else's")
    names = iter([taken.name, taken.name, ".out.1111abcd.tmp"])
    monkeypatch.setattr(_atomic, "temp_name_for", lambda name: next(names))
    atomic_write_bytes(tmp_path / "out", b"mine")
    assert (tmp_path / "out").read_bytes() == b"mine"
    assert taken.read_bytes() == b"someone else's"

    monkeypatch.setattr(_atomic, "temp_name_for", lambda name: taken.name)
    with pytest.raises(FileExistsError, match="unique temp file"):
        atomic_write_bytes(tmp_path / "out", b"never")
    assert (tmp_path / "out").read_bytes() == b"mine"


def test_fchmod_failure_removes_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dest = tmp_path / "out"
    dest.write_bytes(b"old")

    def refuse(fd: int, mode: int) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "fchmod", refuse)
    with pytest.raises(PermissionError, match="atomic write of"):
        atomic_write_bytes(dest, b"new")
    assert dest.read_bytes() == b"old"
    assert temp_files(tmp_path) == []


# -- the directory fsync ----------------------------------------------------------------------


def test_directory_fsync_unsupported_is_tolerated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fsync = os.fsync

    def no_dir_sync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "Invalid argument")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", no_dir_sync)
    atomic_write_bytes(tmp_path / "out", b"ok")
    assert (tmp_path / "out").read_bytes() == b"ok"


def test_directory_fsync_failure_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fsync = os.fsync

    def broken_dir_sync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", broken_dir_sync)
    with (
        pytest.raises(OSError, match="atomic write of") as info,
        atomic_write(tmp_path / "out") as handle,
    ):
        handle.write("renamed, not durable")
    assert info.value.errno == errno.EIO
    # The rename happened: the destination is complete, only its durability is in doubt.
    assert (tmp_path / "out").read_text() == "renamed, not durable"
    assert temp_files(tmp_path) == []
