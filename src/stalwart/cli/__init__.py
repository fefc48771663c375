"""The command line: a layer above the library (the library never imports it).

``stalwart.Pipeline`` is this package's ``Pipeline``: the library's ``Pipeline`` plus
``main()``. ``python my_pipeline.py ...``, ``stalwart ...`` and ``python -m stalwart ...``
share one command line (``_main.run_cli``). Library errors become exit codes and a paragraph
on stderr:

    0 success · 1 a step failed (or a replay was refused) · 2 usage error
    75 run locked by another process · 130 interrupted (SIGINT) · 143 terminated (SIGTERM)

Only ``Pipeline`` is defined here (not in a module of its own: each module a run imports
costs ~0.3 million instructions to find and load), so that ``stalwart.Pipeline`` costs no
argparse and no logging set-up until ``main()``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from .. import _pipeline

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn

__all__ = ["Pipeline"]


class Pipeline(_pipeline.Pipeline):
    __doc__ = _pipeline.Pipeline.__doc__

    def main(self, argv: Sequence[str] | None = None) -> NoReturn:
        """The command line: ``[run] [--run-id ID] [--force] [--step NAME]``, ``status``,
        ``reset``, ``deadletter ...``. Exits with 0, 1, 2, 75, 130 or 143."""
        from ._main import freeze_start_up, run_cli  # noqa: PLC0415 - logging set-up, only here

        freeze_start_up()
        sys.exit(run_cli(list(sys.argv[1:] if argv is None else argv), pipeline=self))
