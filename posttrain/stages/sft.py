"""Stage `sft`: supervised fine-tuning with TRL's SFTTrainer, plus DeepSeek-V3's MoE load balancing.

Reads prompt-completion rows (the distill stage's data.jsonl, any jsonl/parquet file, or a hub data
set), trains on the completion only (TRL's default for that format), full fine-tuning or LoRA, and
writes the model to DIR/<name>/model/ and one JSON line per logging step to metrics.jsonl.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from posttrain.errors import DataError
from posttrain.lora import LoraSpec
from posttrain.moe_balance import MoEBalanceConfig
from posttrain.recipe import StageConfig
from posttrain.stages.base import DATA_FILE, StageContext, StageResult


class Config(StageConfig):
    #: Model to fine-tune: an earlier stage, a path or a hub name (default: the recipe's base model).
    model: str | None = None
    #: Training rows: an earlier stage (its `data_file`), a jsonl/parquet file, or a hub data set.
    data: str
    data_file: str = DATA_FILE
    prompt_column: str = "prompt"
    completion_column: str = "completion"
    max_samples: int | None = Field(None, ge=1)
    lora: LoraSpec | None = None
    moe_balance: MoEBalanceConfig = Field(default_factory=MoEBalanceConfig)

    trl_config: ClassVar[str | None] = "trl:SFTConfig"
    trl_defaults: ClassVar[dict[str, Any]] = {
        "logging_steps": 10,
        "save_steps": 100,
        "save_total_limit": 2,
        "gradient_checkpointing": False,
        "dataloader_num_workers": 0,
    }
    ref_fields: ClassVar[tuple[str, ...]] = ("model", "data")


def run(ctx: StageContext) -> StageResult:
    from trl import SFTTrainer

    from posttrain.lora import apply_lora
    from posttrain.models import load_causal_lm, load_tokenizer
    from posttrain.moe_balance import MoEBalanceMixin
    from posttrain.recipe import build_trl_config
    from posttrain.training import balance_summary, checkpoint_dir, prepare_trainer, save_final, train_resumably

    cfg = ctx.config
    assert isinstance(cfg, Config)
    model_path = ctx.resolve_model(cfg.model)
    tokenizer = load_tokenizer(model_path, padding_side="right")
    dataset = _prompt_completion(ctx.load_dataset(cfg.data, cfg.data_file), cfg)
    model = load_causal_lm(model_path, ctx.recipe.model if cfg.model in (None, "base") else None)
    if cfg.lora is not None:
        model = apply_lora(model, cfg.lora)
    args = build_trl_config(cfg, checkpoint_dir(ctx), **_seed(cfg, ctx))

    class Trainer(MoEBalanceMixin, SFTTrainer):
        pass

    trainer = Trainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    tracker = trainer.setup_moe_balance(cfg.moe_balance)
    prepare_trainer(trainer, ctx)
    ctx.log.info("SFT on %d rows from %s, %s steps", len(dataset), cfg.data, args.max_steps if args.max_steps > 0
                 else f"{args.num_train_epochs} epochs")
    result = train_resumably(trainer, ctx)
    out = save_final(trainer, tokenizer, ctx)
    metrics: dict[str, Any] = {"train_loss": round(result.training_loss, 5), "steps": result.global_step,
                               "rows": len(dataset), "model": str(out)}
    metrics.update(balance_summary(ctx))
    if tracker is not None and ctx.num_processes > 1:
        metrics["bias_sync_max_diff"] = trainer.moe_callback.bias_sync_max_diff
    return StageResult(metrics=metrics, outputs={"model": str(out)})


def _prompt_completion(dataset: Any, cfg: Config) -> Any:
    """Keep the two columns SFT needs, named as TRL expects; a missing column is a clear error."""
    if "messages" in dataset.column_names and cfg.prompt_column not in dataset.column_names:
        dataset = dataset.select_columns(["messages"])
    else:
        missing = [c for c in (cfg.prompt_column, cfg.completion_column) if c not in dataset.column_names]
        if missing:
            raise DataError(f"SFT data for stage {cfg.name!r} has no column(s) {missing}; it has "
                            f"{dataset.column_names} (set prompt_column / completion_column)")
        dataset = dataset.select_columns([cfg.prompt_column, cfg.completion_column])
        dataset = dataset.rename_columns({cfg.prompt_column: "prompt", cfg.completion_column: "completion"})
    if cfg.max_samples is not None:
        dataset = dataset.select(range(min(cfg.max_samples, len(dataset))))
    return dataset


def _seed(cfg: StageConfig, ctx: StageContext) -> dict[str, Any]:
    return {} if "seed" in cfg.trl else {"seed": ctx.seed}
