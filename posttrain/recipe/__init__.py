"""Everything about a recipe before it runs: its typed schema (`schema.py`), loading with `quick:`/`--set`
overrides (`loading.py`), the TRL pass-through (`trl.py`), what it names (`check.py`), what the models and
machines allow (`limits.py`), and how problems are reported (`problems.py`).

The names a stage plugin or script needs are importable from here: `from posttrain.recipe import StageConfig`.
"""

from posttrain.core.identity import IDENTITY, for_identity
from posttrain.recipe.loading import load_recipe, parse_recipe
from posttrain.recipe.schema import (
    LaunchSpec,
    ModelSpec,
    Recipe,
    RewardSpec,
    StageConfig,
    StageKindsLike,
    StrictModel,
    TokenizerSpec,
    TokenizerTrainSpec,
)
from posttrain.recipe.trl import build_trl_config, trl_config_class, trl_fields

__all__ = [
    "IDENTITY", "LaunchSpec", "ModelSpec", "Recipe", "RewardSpec", "StageConfig", "StageKindsLike", "StrictModel",
    "TokenizerSpec", "TokenizerTrainSpec", "build_trl_config", "for_identity", "load_recipe", "parse_recipe",
    "trl_config_class", "trl_fields",
]
