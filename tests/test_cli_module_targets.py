"""A ``module:name`` target is imported from the directory the command runs in, as
``python -m`` would: ``stalwart status mypipe:pipeline`` works without ``PYTHONPATH``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import run_python

PIPE = """
import stalwart
pipeline = stalwart.Pipeline("mod", root={root!r})

@pipeline.step()
def only(ctx):
    ctx.write_text("out.txt", "x")
"""


def test_status_module_name_works_from_the_module_directory(tmp_path: Path) -> None:
    (tmp_path / "mypipe.py").write_text(PIPE.format(root=str(tmp_path / "state")))
    stalwart_cli = str(Path(sys.executable).with_name("stalwart"))
    ran = run_python(["-c", "import sys; from stalwart.cli._main import console_main; "
                      "sys.argv[0] = 'stalwart'; console_main()",
                      "run", "mypipe:pipeline", "--run-id", "r1"], cwd=tmp_path)  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    status = subprocess.run(
        [stalwart_cli, "status", "mypipe:pipeline", "--run-id", "r1", "--json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["steps"][0]["state"] == "done"
