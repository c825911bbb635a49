"""Stage `sft`: supervised fine-tuning with TRL's SFTTrainer, plus DeepSeek-V3's MoE load balancing.

Reads prompt-completion rows (the distill stage's data.jsonl, any jsonl/parquet file, or a hub data
set) or conversations (`messages`), trains on the completion only (TRL's default for that format),
full fine-tuning or LoRA, and writes the model to DIR/<name>/model/ and one JSON line per logging
step to metrics.jsonl.
"""

from __future__ import annotations

from typing import Any, ClassVar

from posttrain.stages.base import StageContext, StageResult
from posttrain.training.trainer import TrainerConfig, TrainerStage, require_columns


class Config(TrainerConfig):
    prompt_column: str = "prompt"
    completion_column: str = "completion"

    trl_config: ClassVar[str | None] = "trl:SFTConfig"
    trl_defaults: ClassVar[dict[str, Any]] = {
        "logging_steps": 10,
        "save_steps": 100,
        "save_total_limit": 2,
        "gradient_checkpointing": False,
        "dataloader_num_workers": 0,
    }


class SFTStage(TrainerStage):
    cfg: Config

    def trainer_class(self) -> type:
        from posttrain.training.trainers import SFTTrainer

        return SFTTrainer

    def prepare_data(self, dataset: Any) -> Any:
        """Keep the two columns SFT needs, named as TRL expects (or the conversations)."""
        cfg = self.cfg
        if "messages" in dataset.column_names and cfg.prompt_column not in dataset.column_names:
            return dataset.select_columns(["messages"])
        require_columns(dataset, [cfg.prompt_column, cfg.completion_column], cfg, "SFT data",
                        "set prompt_column / completion_column")
        dataset = dataset.select_columns([cfg.prompt_column, cfg.completion_column])
        return dataset.rename_columns({cfg.prompt_column: "prompt", cfg.completion_column: "completion"})

    def summary(self, trainer: Any, result: Any, dataset: Any) -> dict[str, Any]:
        return {"rows": len(dataset)}


def run(ctx: StageContext) -> StageResult:
    return SFTStage(ctx).run()


# --------------------------------------------------------------------------------------------------
# The report's section on this kind (posttrain.report finds these hooks on this module)
