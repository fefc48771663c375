"""SIGKILL while dead letters are being written never leaves a partial envelope."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import stalwart
from stalwart._atomic import is_temp_name

WRITER = textwrap.dedent(
    """
    import sys
    from stalwart._deadletter import DeadLetterStore, StepDeadLetters

    store = DeadLetterStore(sys.argv[1], pipeline="crash")
    writer = StepDeadLetters(store, run_id="r", step="s", emit=lambda event: None)
    body = "x" * (2 * 1024 * 1024)
    n = 0
    while True:
        writer.keep_payload(body + str(n), reason=f"n={n}")
        n += 1
        print(n, flush=True)
    """
)


def test_sigkill_during_envelope_writes_leaves_only_whole_envelopes(tmp_path: Path) -> None:
    kills = int(os.environ.get("STALWART_CHAOS_KILLS", "8"))
    rng = random.Random(5)
    root = tmp_path / "state"
    directory = root / "crash" / "deadletter"
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    for _ in range(kills):
        child = subprocess.Popen(
            [sys.executable, str(script), str(directory)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,  # its "kept ... as dead letter" lines, a thousand in chaos
            text=True,
        )
        assert child.stdout is not None
        for _ in range(rng.randint(1, 3)):  # let it finish a few, then kill it mid-write
            assert child.stdout.readline()
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
        assert child.returncode == -signal.SIGKILL
    names = os.listdir(directory)
    envelopes = [n for n in names if n.endswith(".json")]
    assert len(envelopes) >= kills
    for name in envelopes:
        data = json.loads((directory / name).read_text())
        body = data["payload"]["body"]
        assert body["size"] == len(body["data"].encode())
    leftovers = [n for n in names if not n.endswith(".json") and n != ".lock"]
    assert all(is_temp_name(n) for n in leftovers), leftovers

    # The next run of the pipeline sweeps the debris a killed writer left behind.
    pipeline = stalwart.Pipeline("crash", root=root, alerters=[])

    @pipeline.step()
    def noop(ctx: stalwart.Context) -> None:
        del ctx

    pipeline.run(run_id="after")
    assert not [n for n in os.listdir(directory) if is_temp_name(n)]
    assert len([n for n in os.listdir(directory) if n.endswith(".json")]) == len(envelopes)
