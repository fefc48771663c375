"""``RemoteContext``: the ``Context`` of a step whose run lives on a ``StateStore``.

- ``ctx.write_bytes/text/json`` put the whole output in one write (one PUT);
- ``ctx.atomic_write`` streams to a local temp file and uploads it only when the block ends
  cleanly (never through a streamed remote file, which publishes a part on an exception);
- ``ctx.read_*`` read the object;
- ``ctx.path(name)`` is a **local copy** of the output (``Path``), in a temporary directory of
  this step, downloaded on first use (or the copy of what the step wrote): for libraries that
  want a file name. Writing to it publishes nothing: write outputs with ``ctx.write_*`` or
  ``ctx.atomic_write``. ``ctx.url(name)`` is the object's ``s3://`` URL.

``RemoteItemContext`` is the same for one item of a map step (an ``ItemContext``), on the
driver's threads or in a worker process (Dask, ``processes``) that opened the store itself.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import itertools
import os
import shutil
import tempfile
import threading
import weakref
from typing import IO, TYPE_CHECKING, Any

from ._atomic import FileDigest, atomic_write, lazy_path, replace_bytes
from ._context import Context, _output_name
from ._item_context import ItemContext
from ._remote_state import run_key

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from ._store import StateStore

__all__ = ["RemoteContext", "RemoteItemContext"]


class RemoteContext(Context):
    """A step's ``Context`` on a store (see the module docstring)."""

    def __init__(self, *, store: StateStore, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._store = store
        self._key = run_key(self.pipeline, self.run_id)
        self._copies: str | None = None

    def url(self, name: str) -> str:
        """The URL of output ``name`` in the store (``s3://bucket/prefix/...``)."""
        return self._store.url(f"{self._key}/{_output_name(name)}")

    def _local(self, clean: str) -> str:
        if self._copies is None:
            self._copies = tempfile.mkdtemp(prefix=f"stalwart-{self.step}-")
            weakref.finalize(self, shutil.rmtree, self._copies, ignore_errors=True)
        path = os.path.join(self._copies, clean)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return path

    def path(self, name: str) -> Path:
        """A local copy of output ``name`` (see the module docstring); the path of a file
        that does not exist if there is no such output."""
        clean = _output_name(name)
        local = self._local(clean)
        if not os.path.exists(local):
            data = self._store.read(f"{self._key}/{clean}")
            if data is not None:
                replace_bytes(local, data, durable=False, shared=False)
        return lazy_path(local)

    def write_bytes(self, name: str, data: bytes) -> str:
        """Write ``data`` to output ``name`` in one PUT; returns the local copy's path (a
        ``str``, as locally)."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"data must be bytes, not {type(data).__name__}")
        clean = _output_name(name)
        self._store.write(f"{self._key}/{clean}", bytes(data))
        digest = FileDigest()
        digest.update(data)
        self._record(clean, digest)
        local = self._local(clean)
        replace_bytes(local, data, durable=False, shared=False)
        return local

    @contextlib.contextmanager
    def _stream(
        self, name: str, mode: str, encoding: str, newline: str | None
    ) -> Iterator[IO[Any]]:
        clean = _output_name(name)
        local = self._local(clean)
        digest = FileDigest()
        with atomic_write(  # type: ignore[call-overload]
            local, mode, encoding=encoding, newline=newline, digest=digest
        ) as handle:
            yield handle
        self._store.upload(f"{self._key}/{clean}", local)  # only after a clean exit
        self._record(clean, digest)

    def read_bytes(self, name: str) -> bytes:
        clean = _output_name(name)
        data = self._store.read(f"{self._key}/{clean}")
        if data is None:
            raise FileNotFoundError(errno.ENOENT, "no such output", self.url(clean))
        self._note_read(name)
        return data


class RemoteItemContext(RemoteContext, ItemContext):
    """An item's ``ItemContext`` on a store: ``ctx.key``, and the writes, reads and local
    copies of ``RemoteContext`` (each output one PUT, made by the process running the item).

    An item's local copies are files of one directory per process (no directory made and
    removed per item: 100,000 items would pay that 100,000 times), removed when the item's
    context is dropped, and the directory when the process exits."""

    _names: dict[str, str] | None = None

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(store=kwargs["services"].store, **kwargs)  # the run's store

    def _local(self, clean: str) -> str:
        names = self._names
        if names is None:
            names = self._names = {}
            weakref.finalize(self, _remove_copies, names)
        found = names.get(clean)
        if found is None:
            leaf = os.path.basename(clean)[-100:]
            found = names[clean] = os.path.join(_item_copies(), f"{next(_numbers)}-{leaf}")
        return found


_numbers = itertools.count()
_copies: list[str] = []
_copies_lock = threading.Lock()


def _item_copies() -> str:
    """This process's directory of items' local copies (made on first use)."""
    if not _copies:
        with _copies_lock:
            if not _copies:
                directory = tempfile.mkdtemp(prefix="stalwart-items-")
                atexit.register(shutil.rmtree, directory, ignore_errors=True)
                _copies.append(directory)
    return _copies[0]


def _remove_copies(names: dict[str, str]) -> None:
    for path in names.values():
        with contextlib.suppress(OSError):
            os.unlink(path)
