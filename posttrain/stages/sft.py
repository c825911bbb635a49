"""Stage `sft`: supervised fine-tuning with TRL's SFTTrainer, plus DeepSeek-V3's MoE load balancing.

Reads prompt-completion rows (the distill stage's data.jsonl, any jsonl/parquet file, or a hub data
set) or conversations (`messages`), trains on the completion only (TRL's default for that format),
full fine-tuning or LoRA, and writes the model to DIR/<name>/model/ and one JSON line per logging
step to metrics.jsonl.

Rows that used tools (a completion `[assistant (tool_calls), tool, assistant]`, as the distill stage writes with
`tools`) train on the model's turns only: TRL's `assistant_only_loss` (on unless `trl:` says otherwise) keeps the
tools' outputs out of the loss, through the chat template's `{% generation %}` marks (TRL puts in a marked copy of
the known templates that lack them). The tokenizer is made ready to render and parse calls, and saved so.
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
        self.tool_rows = _has_tool_turns(dataset[cfg.completion_column][:TOOL_SCAN_ROWS])
        return dataset.rename_columns({cfg.prompt_column: "prompt", cfg.completion_column: "completion"})

    def trl_overrides(self) -> dict[str, Any]:
        if not getattr(self, "tool_rows", False):
            return {}
        from posttrain.core.tool_calls import enable_tool_calls

        enable_tool_calls(self.tokenizer)
        self.ctx.log.info("rows with tool calls: the loss is taken on the model's turns only (assistant_only_loss)")
        return {"assistant_only_loss": True}

    def summary(self, trainer: Any, result: Any, dataset: Any) -> dict[str, Any]:
        return {"rows": len(dataset)}


def run(ctx: StageContext) -> StageResult:
    return SFTStage(ctx).run()


#: Rows looked at for tool calls (a data set is used as one kind or the other).
TOOL_SCAN_ROWS = 10_000


def _has_tool_turns(completions: list[Any]) -> bool:
    return any(isinstance(c, list) and any(isinstance(m, dict) and (m.get("role") == "tool" or m.get("tool_calls"))
                                           for m in c) for c in completions)


# --------------------------------------------------------------------------------------------------
# The report's section on this kind (posttrain.report finds these hooks on this module)
