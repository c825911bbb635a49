"""Registry of stage kinds. Adding a kind = one module here and one line in `_KINDS`.

A stage module defines `Config` (a `posttrain.recipe.StageConfig` subclass) and
`run(ctx: StageContext) -> StageResult`. Heavy imports (torch, trl) stay inside `run` so that
`posttrain validate` stays fast.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from posttrain.recipe import StageConfig
    from posttrain.stages.base import StageContext, StageResult

_KINDS: dict[str, str] = {
    "distill": "posttrain.stages.distill",
    "sft": "posttrain.stages.sft",
    "reward_model": "posttrain.stages.reward_model",
    "grpo": "posttrain.stages.grpo",
    "eval": "posttrain.stages.eval",
}
ENTRY_POINT_GROUP = "posttrain.stages"


@dataclass(frozen=True)
class StageKind:
    name: str
    config: type[StageConfig]
    run: Callable[[StageContext], StageResult]


def register_stage_kind(kind: str, module: str) -> None:
    """Register a stage kind implemented in `module` (which defines `Config` and `run`)."""
    _KINDS[kind] = module


def stage_kinds() -> list[str]:
    kinds = {k for k, m in _KINDS.items() if importlib.util.find_spec(m) is not None}
    kinds |= {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)}
    return sorted(kinds)


def get_stage_kind(kind: str) -> StageKind:
    if kind in _KINDS:
        module = importlib.import_module(_KINDS[kind])
    else:
        (ep,) = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == kind] or [None]
        if ep is None:
            raise KeyError(kind)
        module = importlib.import_module(ep.value.partition(":")[0])
    return StageKind(kind, module.Config, module.run)
