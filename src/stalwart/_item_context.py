"""What one item of a map step receives: ``ItemContext``, a ``Context`` that knows its item.

Everything a step's ``Context`` offers (atomic, recorded writes; ``read_*``; ``http``;
``log``; ``params``; ``dead_letter``), plus ``ctx.key``, the item's stable id. Its HTTP
requests carry Idempotency-Keys derived from the item's key as well as the step's, so two
items posting the same body are two requests, and a re-run of one item repeats its own keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from ._context import Context, Step
from ._scope import StepScope, derive_idempotency_key

if TYPE_CHECKING:
    from ._services import RunServices

__all__ = ["ItemContext", "ItemScope"]

_NO_PARAMS: Mapping[str, Any] = MappingProxyType({})


class ItemScope(StepScope):
    """The scope of one item of a map step: its Idempotency-Keys include the item's key."""

    __slots__ = ("item_key",)

    def __init__(self, *, item_key: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.item_key = item_key

    def idempotency_key(self, method: str, path: str, body_sha256: str) -> str:
        identity = (method.upper(), path, body_sha256)
        with self._lock:
            n = self._key_counts.get(identity, 0) + 1
            self._key_counts[identity] = n
        return derive_idempotency_key(
            self.pipeline,
            self.run_id,
            f"{self.step}\x1fitem\x1f{self.item_key}",
            method,
            path,
            body_sha256,
            n,
        )


class ItemContext(Context):
    """What the function of a map step receives for one item: a ``Context`` (writes, reads,
    ``http``, ``log``, ``params``) and ``key``, the item's stable id.

    ``ctx.log`` records carry the item's key (``item``); ``ctx.http`` requests carry
    Idempotency-Keys that include it.
    """

    def __init__(
        self,
        *,
        services: RunServices,
        run_id: str,
        step: Step,
        run_dir: str,
        scope: StepScope,
        runs: int,
        key: str,
        params: Mapping[str, str] = _NO_PARAMS,
        produced: Mapping[str, tuple[str, str]] = _NO_PARAMS,
    ) -> None:
        super().__init__(
            services=services,
            run_id=run_id,
            step=step,
            run_dir=run_dir,
            scope=scope,
            runs=runs,
            params=params,
            produced=produced,
        )
        self.key = key
        """The item's stable id (``key=`` of ``@pipeline.map``)."""
        self._log_context["item"] = key  # ``ctx.log`` records carry the item's key too
