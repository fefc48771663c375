"""A Dask cluster on 127.0.0.1 for the tests: a scheduler and two worker processes.

Prints the scheduler's address on stdout, then runs until its stdin closes. A task that
kills two workers fails with ``KilledWorker`` (``allowed-failures`` is 1), so the test of a
poison item stays short.
"""

from __future__ import annotations

import sys

import dask
from distributed import LocalCluster

if __name__ == "__main__":
    dask.config.set({"distributed.scheduler.allowed-failures": 1})
    with LocalCluster(  # type: ignore[no-untyped-call]
        n_workers=2,
        threads_per_worker=2,
        processes=True,
        host="127.0.0.1",
        dashboard_address=":0",
    ) as cluster:
        print(cluster.scheduler_address, flush=True)
        sys.stdin.read()
