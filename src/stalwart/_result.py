"""``RunResult``: what ``Pipeline.run`` returns.

Its own module so that a run from the command line, which returns no result, does not pay
for defining the dataclass (about 1.5 ms of every start here).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["RunResult"]


@dataclass(frozen=True, slots=True, kw_only=True)
class RunResult:
    """What ``Pipeline.run`` did (returned on success; failures raise)."""

    pipeline: str
    run_id: str
    ran: tuple[str, ...]
    skipped: tuple[str, ...]
    duration_s: float
    run_dir: Path
