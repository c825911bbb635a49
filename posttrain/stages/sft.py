"""Stage `sft`: supervised fine-tuning with TRL's SFTTrainer, plus DeepSeek-V3's MoE load balancing.

Reads prompt-completion rows (the distill stage's data.jsonl, any jsonl/parquet file, or a hub data
set) or conversations (`messages`), trains on the completion only (TRL's default for that format),
full fine-tuning or LoRA, and writes the model to DIR/<name>/model/ and one JSON line per logging
step to metrics.jsonl.
"""

from __future__ import annotations

from typing import Any, ClassVar

from posttrain.core.run_folder import LOSS
from posttrain.report.inputs import StageView, is_number
from posttrain.report.markdown import Document, model_name, num, trend
from posttrain.report.training import balance_text, maxvio_figures, training_plots
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
        from trl import SFTTrainer

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


def report_describe(stage: StageView) -> str:
    rows, steps = stage.metrics.get("rows"), stage.metrics.get("steps")
    on = f" on {rows} prompt-completion rows" if is_number(rows) else ""
    for_steps = f" for {steps} steps" if is_number(steps) else ""
    return (f"Fine-tuned {model_name(stage, 'the base model')} with TRL's SFTTrainer{on}{for_steps}"
            f"{balance_text(stage)}.")


def report_figures(doc: Document, stage: StageView) -> None:
    """Loss and token accuracy first → last, MaxVio against the run without balancing, and the curves."""
    figures = []
    if is_number(stage.metrics.get("train_loss")):
        figures.append(f"- mean training loss: {num(stage.metrics['train_loss'])}")
    if stage.log.has(LOSS):
        figures.append(f"- logged loss: {trend(*stage.log.series(LOSS))}")
    if is_number(stage.metrics.get("eval_loss")):
        figures.append(f"- eval loss: {num(stage.metrics['eval_loss'])}")
    if stage.log.has("mean_token_accuracy"):
        figures.append(f"- token accuracy on training batches: {trend(*stage.log.series('mean_token_accuracy'))}")
    figures += maxvio_figures(stage)
    doc.key_figures(figures)
    training_plots(doc, stage, moe=True)
