"""Is a file ``flock``'ed right now? Asked of the kernel's lock table, without locking.

``status`` must tell a live run from a note left by a killed one without taking the run lock
even for a moment: a shared lock held for microseconds is enough to make a run starting at
that instant exit 75. On Linux ``/proc/locks`` lists every lock with the device and inode of
its file; reading it takes no lock at all.
"""

from __future__ import annotations

import os

__all__ = ["flock_held"]

_TABLE = "/proc/locks"


def flock_held(fd: int) -> bool | None:
    """``True`` if some process holds a ``flock`` on the file open as ``fd``, ``False`` if
    none does, ``None`` if the kernel's table cannot tell (no ``/proc/locks``, or a file
    system whose inode numbers the table shows differently: an entry with this inode on
    another device)."""
    info = os.fstat(fd)
    ours = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    suffix = f":{info.st_ino}"
    try:
        with open(_TABLE, encoding="ascii", errors="replace") as table:
            lines = table.read().splitlines()
    except OSError:
        return None
    unsure = False
    for line in lines:
        # "1: FLOCK  ADVISORY  WRITE 1234 fe:00:5327269 0 EOF"; "1: -> FLOCK ..." is a waiter
        fields = line.split()
        if len(fields) < 6 or fields[1] != "FLOCK":
            continue
        where = fields[5]
        if where == ours:
            return True
        if where.endswith(suffix):
            unsure = True
    return None if unsure else False
