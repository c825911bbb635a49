"""The stage kinds: a name -> a module defining `Config` (a `StageConfig`) and `run(ctx) -> StageResult`.

Adding a kind = one module in this package and one line in `KINDS` below (or an entry point in group
`posttrain.stages`, or `KINDS.register(...)` from a plugin). Modules are imported on first use, so
`posttrain validate` never pays for torch or TRL. The recipe schema is handed this registry; it
does not import the stages.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from posttrain.recipe import StageConfig
    from posttrain.stages.base import StageContext, StageResult

ENTRY_POINT_GROUP = "posttrain.stages"


@dataclass(frozen=True)
class StageKind:
    name: str
    config: type[StageConfig]
    run: Callable[[StageContext], StageResult]
    #: The stage module itself, for optional hooks (e.g. its `report` section).
    module: ModuleType

    def hook(self, name: str) -> Any:
        """An optional function the stage module defines (`None` when it has none)."""
        return getattr(self.module, name, None)


class StageKinds:
    """Stage kinds by name, their modules imported when first asked for."""

    def __init__(self, modules: dict[str, str]):
        self._modules = dict(modules)

    def register(self, kind: str, module: str) -> None:
        """Add (or replace) a kind implemented in `module`."""
        self._modules[kind] = module

    def names(self) -> list[str]:
        kinds = {k for k, m in self._modules.items() if importlib.util.find_spec(m) is not None}
        kinds |= {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)}
        return sorted(kinds)

    def get(self, kind: str) -> StageKind:
        if kind in self._modules:
            module = importlib.import_module(self._modules[kind])
        else:
            found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == kind]
            if not found:
                raise KeyError(kind)
            module = importlib.import_module(found[0].value.partition(":")[0])
        return StageKind(kind, module.Config, module.run, module)

    def config(self, kind: str) -> type[StageConfig]:
        return self.get(kind).config


KINDS = StageKinds({
    "distill": "posttrain.stages.distill",
    "sft": "posttrain.stages.sft",
    "reward_model": "posttrain.stages.reward_model",
    "grpo": "posttrain.stages.grpo",
    "dpo": "posttrain.stages.dpo",
    "eval": "posttrain.stages.eval",
    "pass_rate_filter": "posttrain.stages.pass_rate_filter",
    "on_policy_distill": "posttrain.stages.on_policy_distill",
})
register_stage_kind = KINDS.register
