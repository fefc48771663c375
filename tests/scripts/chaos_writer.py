"""Stream a large output through ``ctx.atomic_write`` and report progress (SIGKILL tests).

Usage: ``python chaos_writer.py ROOT SEED CHUNKS WAIT``

Runs pipeline ``chaos`` (run ``chaos``, ``force=True``) under ROOT: its one step ``big``
writes ``big.bin`` as CHUNKS chunks of 1 MiB (``chunk(SEED, i)``). It prints ``started``
when the step begins, ``chunk <i>`` after each chunk, ``closing`` just before the block
ends (flush, fsync, rename) and ``renamed`` after it. WAIT says when it waits for a line on
stdin: ``none``; ``start`` (after ``started``, so the test can look at the run directory
before the write begins); ``every`` (after ``started`` and after each ``chunk`` line, so the
test can kill it at an exact point).
"""

from __future__ import annotations

import hashlib
import sys

CHUNK = 1 << 20


def chunk(seed: int, index: int) -> bytes:
    """1 MiB that differs with the seed and the index (cheap to make, cheap to check)."""
    return hashlib.sha256(f"{seed}:{index}".encode()).digest() * (CHUNK // 32)


def content_sha256(seed: int, chunks: int) -> str:
    digest = hashlib.sha256()
    for index in range(chunks):
        digest.update(chunk(seed, index))
    return digest.hexdigest()


def main(root: str, seed: int, chunks: int, wait: str) -> None:
    import stalwart  # noqa: PLC0415 - the test imports this file for chunk() alone

    pipeline = stalwart.Pipeline("chaos", root=root)

    @pipeline.step()
    def big(ctx: stalwart.Context) -> None:
        print("started", flush=True)
        if wait != "none":
            sys.stdin.readline()
        with ctx.atomic_write("big.bin", "wb") as out:
            for index in range(chunks):
                out.write(chunk(seed, index))
                print(f"chunk {index}", flush=True)
                if wait == "every":
                    sys.stdin.readline()
            print("closing", flush=True)
        print("renamed", flush=True)

    pipeline.run(run_id="chaos", force=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
