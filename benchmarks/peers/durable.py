"""``--peer-fsync`` for the peers' chains: the fsyncs a peer does not do, added after its write
so the comparison with stalwart (which makes every output durable) is honest.

Imported by ``luigi_chain.py`` and ``prefect_chain.py`` (run as scripts, so this directory is
on ``sys.path``); stdlib only, as each runs in its peer's own virtualenv.
"""

from __future__ import annotations

import os

FSYNC = os.environ.get("PEERS_FSYNC") == "1"
"""``peers.py --peer-fsync``: make each output durable as stalwart and the floor do."""


def make_durable(path: str) -> None:
    """``fsync`` the file, then its directory (the rename into place): what the tool itself
    does not do, added for an honest comparison with tools that do."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
