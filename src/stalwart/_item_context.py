"""What one item of a map step receives: ``ItemContext``, a ``Context`` that knows its item.

Everything a step's ``Context`` offers (atomic, recorded writes; ``read_*``; ``http``;
``log``; ``params``; ``dead_letter``), plus ``ctx.key``, the item's stable id. Its HTTP
requests carry Idempotency-Keys derived from the item's key as well as the step's, so two
items posting the same body are two requests, and a re-run of one item repeats its own keys.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, cast

from ._context import Context, Step
from ._logging import ContextAdapter, step_logger
from ._scope import StepScope, derive_idempotency_key

if TYPE_CHECKING:
    from ._services import RunServices

__all__ = ["ItemContext", "ItemScope"]

_NO_PARAMS: Mapping[str, Any] = MappingProxyType({})

_SHARED = frozenset(
    {
        "_services",
        "_step",
        "_produced",
        "params",
        "run_id",
        "_run_dir",
        "attempt",
        "_log_context",
        "_new_scope",
    }
)
"""What the contexts of the items of a chunk share: set once, never changed after."""
_OWN = frozenset({"_item_scope", "key", "_outputs", "_inputs", "_http", "_log"})
"""What each item's context has of its own (its scope, key, what it wrote and read)."""


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
        self._new_scope: Callable[[str], StepScope] | None = None
        self._item_scope: StepScope | None = None
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

    @property  # Context's attribute, made on first use here
    def _scope(self) -> StepScope:
        """The item's scope (its Idempotency-Keys, its dead-letter writer), made on first
        use when the context came from ``_maker``: most items neither call ``ctx.http`` nor
        keep a dead letter."""
        scope = self._item_scope
        if scope is None:
            assert self._new_scope is not None  # noqa: S101 - one of the two is always set
            scope = self._item_scope = self._new_scope(self.key)
        return scope

    @_scope.setter
    def _scope(self, scope: StepScope) -> None:
        self._item_scope = scope

    @property
    def log(self) -> ContextAdapter:
        """A logger (``stalwart.step.<step>``) whose records carry pipeline, run_id, step,
        attempt and the item's key (``item``). Made on first use: most items never log."""
        if self._log is None:
            self._log = ContextAdapter(
                step_logger(self._step.name), {**self._log_context, "item": self.key}
            )
        return self._log

    @classmethod
    def _maker(
        cls,
        *,
        services: RunServices,
        run_id: str,
        step: Step,
        run_dir: str,
        runs: int,
        params: Mapping[str, str],
        new_scope: Callable[[str], StepScope],
    ) -> Callable[[str], ItemContext]:
        """``make(key)``: the context of an item of a chunk. What the items share is made
        once (by ``__init__``); per item only its key, outputs and inputs, in about half
        ``__init__``'s time; its scope is ``new_scope(key)``, made on first use.

        Should ``Context`` gain an attribute this module does not know as shared or as the
        item's own, every item is made by ``__init__`` instead (slower, still right).
        """
        shared: dict[str, Any] = {
            "services": services,
            "run_id": run_id,
            "step": step,
            "run_dir": run_dir,
            "runs": runs,
            "params": params,
        }
        template = cls(scope=cast("StepScope", None), key="", **shared)  # none yet
        template._new_scope = new_scope
        state = vars(template)
        if state.keys() != _SHARED | _OWN:

            def made_by_init(key: str) -> ItemContext:
                return cls(scope=new_scope(key), key=key, **shared)

            return made_by_init
        common = {name: state[name] for name in _SHARED}
        common["_item_scope"] = common["_http"] = common["_log"] = None
        new = object.__new__

        def make(key: str) -> ItemContext:
            ctx: ItemContext = new(cls)
            ctx.__dict__ = {**common, "key": key, "_outputs": {}, "_inputs": {}}
            return ctx

        return make
