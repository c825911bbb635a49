"""Stage `grpo`: TRL's GRPOTrainer fed by a weighted mix of rewards from the registry.

Adds what users ask TRL for: named loss presets (`loss: dr_grpo`), DAPO dynamic sampling, the
MoE load-balancing callback during RL, vLLM rollouts when available (colocate, or a server started
with `posttrain rollout-server` / `trl vllm-serve`) and a logged fallback to transformers generation.
"""

from __future__ import annotations

import importlib.util
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from posttrain.dynamic_sampling import DynamicSamplingConfig
from posttrain.errors import DataError, MissingDependencyError
from posttrain.moe_balance import MoEBalanceConfig
from posttrain.recipe import RewardSpec, StageConfig
from posttrain.stages.base import StageContext, StageResult

#: Named loss variants -> the GRPOConfig fields that make them (the recipe's `trl:` values win).
LOSS_PRESETS: dict[str, dict[str, Any]] = {
    # DeepSeekMath's GRPO: sequence-level mean, rewards scaled by the group's std.
    "grpo": {"loss_type": "grpo", "scale_rewards": "group"},
    # Dr. GRPO: no length or difficulty bias: constant normaliser, no std scaling.
    "dr_grpo": {"loss_type": "dr_grpo", "scale_rewards": "none"},
    # DAPO: token-level loss over the global batch, clip-higher, truncated completions masked.
    "dapo": {"loss_type": "dapo", "epsilon_high": 0.28, "mask_truncated_completions": True},
    "bnpo": {"loss_type": "bnpo"},
    "cispo": {"loss_type": "cispo"},
    "sapo": {"loss_type": "sapo"},
}


class RolloutSpec(BaseModel):
    """Where completions come from during GRPO."""

    model_config = ConfigDict(extra="forbid")

    #: `auto`: vLLM when it is installed and a GPU is present, else transformers in process.
    backend: Literal["auto", "vllm", "transformers"] = "auto"
    #: vLLM mode: `colocate` (same GPUs as training) or `server` (`posttrain rollout-server` elsewhere).
    mode: Literal["colocate", "server"] = "colocate"
    server_host: str = "127.0.0.1"
    server_port: int = 8000
    gpu_memory_utilization: float = Field(0.3, gt=0, le=1)


class Config(StageConfig):
    #: The policy to train: an earlier stage (e.g. `sft`), a path or a hub name.
    model: str | None = None
    #: Prompts with the columns the rewards need: an earlier stage (its `data_file`), a file, or a hub set.
    data: str
    data_file: str = "prompts.jsonl"
    #: Split of a hub data set (ignored for stage outputs and local files).
    split: str = "train"
    prompt_column: str = "prompt"
    max_samples: int | None = Field(None, ge=1)
    rewards: list[RewardSpec] = Field(min_length=1)
    loss: Literal["grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo"] | None = None
    dynamic_sampling: DynamicSamplingConfig = Field(default_factory=DynamicSamplingConfig)
    moe_balance: MoEBalanceConfig = Field(default_factory=MoEBalanceConfig)
    rollout: RolloutSpec = Field(default_factory=RolloutSpec)

    trl_config: ClassVar[str | None] = "trl:GRPOConfig"
    trl_defaults: ClassVar[dict[str, Any]] = {
        "logging_steps": 5,
        "save_steps": 50,
        "save_total_limit": 2,
        "gradient_checkpointing": False,
        "log_completions": False,
    }
    ref_fields: ClassVar[tuple[str, ...]] = ("model", "data")

    def trl_kwargs(self) -> dict[str, Any]:
        preset = LOSS_PRESETS[self.loss] if self.loss else {}
        return {**self.trl_defaults, **preset, "reward_weights": [r.weight for r in self.rewards], **self.trl}


def run(ctx: StageContext) -> StageResult:
    from trl import GRPOTrainer

    from posttrain.dynamic_sampling import DynamicSamplingMixin
    from posttrain.models import load_causal_lm, load_tokenizer
    from posttrain.moe_balance import MoEBalanceMixin
    from posttrain.recipe import build_trl_config
    from posttrain.training import balance_summary, checkpoint_dir, prepare_trainer, save_final, train_resumably

    cfg = ctx.config
    assert isinstance(cfg, Config)
    model_path = ctx.resolve_model(cfg.model)
    tokenizer = load_tokenizer(model_path, padding_side="left")
    dataset = _prompts(ctx, cfg)
    rewards = [fn for fn, _ in ctx.build_rewards(cfg.rewards)]
    args = build_trl_config(cfg, checkpoint_dir(ctx), **_rollout_args(cfg, ctx), **_seed(cfg, ctx))
    # A saved directory, not an in-memory model: with beta > 0 TRL rebuilds the reference from it.
    model = load_causal_lm(model_path, ctx.recipe.model if cfg.model in (None, "base") else None)

    class Trainer(DynamicSamplingMixin, MoEBalanceMixin, GRPOTrainer):
        pass

    trainer = Trainer(model=model, args=args, reward_funcs=rewards, train_dataset=dataset,
                      processing_class=tokenizer)
    tracker = trainer.setup_moe_balance(cfg.moe_balance)
    trainer.setup_dynamic_sampling(cfg.dynamic_sampling, dataset.to_list(), ctx.seed)
    prepare_trainer(trainer, ctx)
    ctx.log.info("GRPO on %d prompts: %d completions per prompt, %d completions per step, rewards %s",
                 len(dataset), args.num_generations, args.per_device_train_batch_size * ctx.num_processes
                 * args.gradient_accumulation_steps,
                 ", ".join(f"{r.label}×{r.weight:g}" for r in cfg.rewards))
    result = train_resumably(trainer, ctx)
    out = save_final(trainer, tokenizer, ctx)
    metrics: dict[str, Any] = {"train_loss": round(result.training_loss, 5), "steps": result.global_step,
                               "model": str(out)}
    metrics.update(_summary(ctx))
    metrics.update(balance_summary(ctx))
    if tracker is not None and ctx.num_processes > 1:
        metrics["bias_sync_max_diff"] = trainer.moe_callback.bias_sync_max_diff
    return StageResult(metrics=metrics, outputs={"model": str(out)})


def _prompts(ctx: StageContext, cfg: Config) -> Any:
    dataset = ctx.load_dataset(cfg.data, cfg.data_file, cfg.split)
    if cfg.prompt_column not in dataset.column_names:
        raise DataError(f"GRPO prompts for stage {cfg.name!r} have no column {cfg.prompt_column!r}; they have "
                        f"{dataset.column_names} (set prompt_column)")
    if cfg.prompt_column != "prompt":
        dataset = dataset.rename_column(cfg.prompt_column, "prompt")
    if cfg.max_samples is not None:
        dataset = dataset.select(range(min(cfg.max_samples, len(dataset))))
    return dataset


def _rollout_args(cfg: Config, ctx: StageContext) -> dict[str, Any]:
    import torch

    spec = cfg.rollout
    have_vllm = importlib.util.find_spec("vllm") is not None
    if spec.backend == "vllm" and not have_vllm:
        raise MissingDependencyError("rollout.backend is 'vllm' but vLLM is not installed: "
                                     "pip install 'posttrain[vllm]' (GPU machines), or set rollout.backend: auto")
    use_vllm = spec.backend == "vllm" or (spec.backend == "auto" and have_vllm and torch.cuda.is_available())
    if not use_vllm:
        why = "no GPU" if not torch.cuda.is_available() else "vLLM not installed"
        if spec.backend == "auto":
            ctx.log.info("rollouts: transformers generation in process (%s; vLLM is used when available)", why)
        return {"use_vllm": False}
    ctx.log.info("rollouts: vLLM %s mode", spec.mode)
    out: dict[str, Any] = {"use_vllm": True, "vllm_mode": spec.mode}
    if spec.mode == "server":
        out.update(vllm_server_host=spec.server_host, vllm_server_port=spec.server_port)
    else:
        out.update(vllm_gpu_memory_utilization=spec.gpu_memory_utilization)
    return {k: v for k, v in out.items() if k not in cfg.trl}


def _seed(cfg: StageConfig, ctx: StageContext) -> dict[str, Any]:
    return {} if "seed" in cfg.trl else {"seed": ctx.seed}


def _summary(ctx: StageContext) -> dict[str, Any]:
    """First vs last logged reward, and the total of dropped groups, for the report."""
    from posttrain.stages.base import METRICS_FILE, read_jsonl

    path = ctx.stage_dir / METRICS_FILE
    rows = [r for r in read_jsonl(path) if isinstance(r.get("reward"), float | int)] if path.exists() else []
    if not rows:
        return {}
    out: dict[str, Any] = {"reward_first": round(rows[0]["reward"], 4), "reward_last": round(rows[-1]["reward"], 4)}
    dropped = [d for r in rows if isinstance(d := r.get("dynamic_sampling/groups_dropped"), float | int)]
    if dropped:
        out["groups_dropped_per_step"] = round(sum(dropped) / len(dropped), 3)
    return out
