"""``stalwart.Pipeline``: the library's ``Pipeline``, and its command line (``main``)."""

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
        from ._main import run_cli  # noqa: PLC0415 - argparse and logging set-up, only here

        sys.exit(run_cli(list(sys.argv[1:] if argv is None else argv), pipeline=self))
