"""Stage `grpo`: TRL's GRPOTrainer fed by a weighted mix of rewards from the registry.

Adds what users ask TRL for: named loss presets (`loss: dr_grpo`), DAPO dynamic sampling, the
MoE load-balancing callback during RL, vLLM rollouts when available (colocate, or a server started
with `posttrain rollout-server`) and a logged fallback to transformers generation. With vLLM, the weight
sync sends what vLLM's loaders accept plus the router biases, and the sampler's drift is logged
(`posttrain/training/vllm_sync.py`).

The report's section on this kind is posttrain/report/sections/grpo.py.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Annotated, Any, ClassVar, Literal

from pydantic import ConfigDict, Field, model_validator

from posttrain.core.errors import MissingDependencyError, StageError
from posttrain.core.generation import SpeculativeSpec
from posttrain.core.identity import ADDED, PLACEMENT, MarkedModel, Placement
from posttrain.core.run_folder import (
    GROUPS_DROPPED,
    PROMPTS_FILE,
    REWARD,
    ROLLOUT_LOGP_DIFF,
    ROLLOUT_LOGP_DIFF_MAX,
)
from posttrain.core.tools import ToolOptions
from posttrain.recipe import RewardSpec
from posttrain.stages.base import StageContext, StageResult
from posttrain.training.distill_term import DistillationTerm
from posttrain.training.dynamic_sampling import DynamicSamplingConfig
from posttrain.training.trainer import TrainerConfig, TrainerStage, require_columns

log = logging.getLogger("posttrain.grpo")

#: Named loss variants -> the GRPOConfig fields that make them (the recipe's `trl:` values win).
LOSS_PRESETS: dict[str, dict[str, Any]] = {
    # DeepSeekMath's GRPO (as DeepSeek-V3 uses it): sequence-level mean, advantages scaled by the group's std, and
    # β·KL to the frozen reference (the starting model) with the k3 estimator π_ref/π − log(π_ref/π) − 1, β = 0.04.
    # TRL 1.16 computes exactly that k3 per token whenever `beta` > 0, but by default multiplies it by the importance
    # ratio π/π_old (`use_bias_correction_kl`, DeepSeek-V3.2's unbiased-gradient variant): off here.
    "grpo": {"loss_type": "grpo", "scale_rewards": "group", "beta": 0.04, "use_bias_correction_kl": False},
    # Dr. GRPO: no length or difficulty bias: constant normaliser, no std scaling.
    "dr_grpo": {"loss_type": "dr_grpo", "scale_rewards": "none"},
    # DAPO: token-level loss over the global batch, clip-higher, truncated completions masked.
    "dapo": {"loss_type": "dapo", "epsilon_high": 0.28, "mask_truncated_completions": True},
    "bnpo": {"loss_type": "bnpo"},
    "cispo": {"loss_type": "cispo"},
    "sapo": {"loss_type": "sapo"},
}


#: The rollout server's port unless the recipe says: not 8000, where `vllm serve` (a distillation teacher on this
#: machine, say) listens by default.
DEFAULT_PORT = 8001


class RolloutSpec(MarkedModel):
    """Where completions come from during GRPO."""

    model_config = ConfigDict(extra="forbid")

    #: `auto`: vLLM when it is installed and a GPU is present, else transformers in process.
    backend: Literal["auto", "vllm", "transformers"] = "auto"
    #: vLLM mode: `colocate` (same GPUs as training) or `server` (`posttrain rollout-server` on GPUs of its own).
    mode: Literal["colocate", "server"] = "colocate"
    server_host: Annotated[str, Placement(pin="127.0.0.1")] = "127.0.0.1"
    #: Not 8000, where `vllm serve` (a distillation teacher on this machine, say) listens by default.
    #: (Stages were first hashed with port 8000, the pin.)
    server_port: Annotated[int, Placement(pin=8000)] = Field(DEFAULT_PORT, ge=1, le=65535)
    #: Server mode: `posttrain run` starts the rollout server for this stage on `gpus`, trains on the other GPUs
    #: of the machine, and stops the server after. Off: start it yourself (the run says how when it is not up).
    start: Annotated[bool, ADDED, PLACEMENT] = False
    #: The GPUs the started server uses: indices among those the machine shows (CUDA_VISIBLE_DEVICES order);
    #: several run vLLM data-parallel.
    gpus: Annotated[list[int], ADDED, PLACEMENT] = Field(default_factory=lambda: [0], min_length=1)
    #: More `posttrain rollout-server` options for the started server, e.g. "--tensor-parallel-size 2".
    server_args: Annotated[str, ADDED, PLACEMENT] = ""
    gpu_memory_utilization: float = Field(0.3, gt=0, le=1)
    #: Speculative decoding drafted by the model's MTP module (`speculative: {mtp: true}`): in-process rollouts, or
    #: a vLLM rollout server (started with its `mtp` drafter, which every weight sync keeps on the policy).
    speculative: Annotated[SpeculativeSpec | None, ADDED] = None
    #: A logging step whose mean per-token |log p_trainer - log p_vLLM| exceeds this logs a WARNING (vLLM only).
    max_logp_diff: Annotated[float, ADDED] = Field(0.05, gt=0)

    @model_validator(mode="after")
    def _start_needs_server_mode(self) -> RolloutSpec:
        if self.start and (self.mode != "server" or self.backend == "transformers"):
            raise ValueError("start: true starts a vLLM rollout server: set backend: vllm (or auto) and mode: server")
        return self


class Config(TrainerConfig, ToolOptions):
    #: Prompts with the columns the rewards need: an earlier stage (its `data_file`), a file, or a hub set.
    data_file: str = PROMPTS_FILE
    prompt_column: str = "prompt"
    rewards: list[RewardSpec] = Field(min_length=1)
    loss: Literal["grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo"] | None = None
    dynamic_sampling: DynamicSamplingConfig = Field(default_factory=DynamicSamplingConfig)
    rollout: RolloutSpec = Field(default_factory=RolloutSpec)
    #: Stop the stage when more than this share of one reward's rows failed over the last `reward_error_window`
    #: scoring rounds (one per generation batch); the error names that reward's first failure. 1 never stops.
    max_reward_error_rate: Annotated[float, ADDED] = Field(0.5, ge=0, le=1)
    reward_error_window: Annotated[int, ADDED] = Field(10, ge=1)
    #: Log a warning, once per reward, when it scored 0.0 on every completion for this many scoring rounds in a
    #: row (with a sample completion and its gold): the first sign of a prompt/reward format mismatch. 0: never.
    zero_reward_warning_rounds: Annotated[int, ADDED] = Field(20, ge=0)
    #: An on-policy distillation term beside the rewards: `{teacher: <stage, path or hub name>, weight: w}` adds
    #: w × (log π_teacher − log π_old) to each completion token's advantage (posttrain/training/distill_term.py).
    distillation: Annotated[DistillationTerm | None, ADDED] = None

    trl_config: ClassVar[str | None] = "trl:GRPOConfig"
    trl_defaults: ClassVar[dict[str, Any]] = {
        "logging_steps": 5,
        "save_steps": 50,
        "save_total_limit": 2,
        "gradient_checkpointing": False,
        "log_completions": False,
    }

    def trl_kwargs(self) -> dict[str, Any]:
        preset = LOSS_PRESETS[self.loss] if self.loss else {}
        return {**self.trl_defaults, **preset, "reward_weights": [r.weight for r in self.rewards], **self.trl}


class GRPOStage(TrainerStage):
    cfg: Config
    padding_side = "left"

    def trainer_class(self) -> type:
        from posttrain.training.grpo_trainer import GRPOTrainer

        return GRPOTrainer

    def prepare_data(self, dataset: Any) -> Any:
        cfg = self.cfg
        require_columns(dataset, [cfg.prompt_column], cfg, "GRPO prompts", "set prompt_column")
        dataset = dataset.rename_column(cfg.prompt_column, "prompt") if cfg.prompt_column != "prompt" else dataset
        if cfg.tools and isinstance(dataset[0]["prompt"], str):  # TRL's tool loop takes chats
            from posttrain.core.generation import as_messages

            dataset = dataset.map(lambda row: {"prompt": as_messages(row["prompt"])})
        return dataset

    def trl_overrides(self) -> dict[str, Any]:
        out = _rollout_args(self.cfg, self.ctx)
        if self.cfg.tools:  # TRL counts the rounds of tool outputs; max_turns counts the policy's turns
            out["max_tool_calling_iterations"] = self.cfg.max_turns - 1
        return out

    def trainer_kwargs(self, dataset: Any) -> dict[str, Any]:
        self.rewards = self.ctx.build_rewards(self.cfg.rewards).functions
        out = {"train_dataset": dataset, "reward_funcs": self.rewards}
        self.tools = self.ctx.build_tools(self.cfg.tools) if self.cfg.tools else []
        if self.tools:
            from posttrain.core.tool_calls import control_markers, enable_tool_calls
            from posttrain.training.tools import as_function

            enable_tool_calls(self.tokenizer)  # before TRL checks the template and sets its parser
            markers = control_markers(self.tokenizer)
            out["tools"] = [as_function(tool, markers) for tool in self.tools]
        return out

    def after_init(self, trainer: Any, dataset: Any) -> None:
        from posttrain.core.models import without_router_logits

        without_router_logits(trainer.model)  # rollouts call `generate`: an MoE's router loss must stay off there
        cfg = self.cfg
        trainer.setup_reward_checks(cfg.max_reward_error_rate, cfg.reward_error_window, cfg.zero_reward_warning_rounds)
        trainer.setup_dynamic_sampling(self.cfg.dynamic_sampling, dataset.to_list(), self.ctx.seed)
        trainer.setup_rollouts(self.cfg.rollout.speculative)
        trainer.setup_draft_sync(self.cfg.rollout.speculative)  # a vLLM rollout server's MTP drafter
        trainer.setup_tool_metrics(self.tools)
        trainer.logp_diff_callback.threshold = self.cfg.rollout.max_logp_diff
        if cfg.distillation is not None:
            from posttrain.training.teacher import load_teacher

            teacher, _ = load_teacher(self.ctx, cfg.distillation.teacher, self.tokenizer,
                                      trainer.model.config.get_text_config().vocab_size)
            trainer.setup_distill_term(teacher, cfg.distillation.weight)
        self.bind_policy(trainer)

    def bind_policy(self, trainer: Any) -> None:
        """Hand the live policy (the trainer's own model object and tokenizer) to every reward that judges with it
        (`bind_policy(model, tokenizer)`, e.g. `genrm` with `backend: policy`): self-rewarding, no copy."""
        model = trainer.accelerator.unwrap_model(trainer.model)
        for reward in self.rewards:
            target = getattr(reward, "verifier", reward)
            if callable(getattr(target, "bind_policy", None)) and target.bind_policy(model, self.tokenizer):
                self.ctx.log.info("reward %s: bound to the live policy", getattr(reward, "__name__", reward))

    def describe(self, args: Any, dataset: Any) -> str:
        per_step = args.per_device_train_batch_size * self.ctx.num_processes * args.gradient_accumulation_steps
        mix = ", ".join(f"{r.label}×{r.weight:g}" for r in self.cfg.rewards)
        tools = (f", tools {', '.join(t.name for t in self.cfg.tools)} (at most {self.cfg.max_turns} turns)"
                 if self.cfg.tools else "")
        return (f"GRPO on {len(dataset)} prompts: {args.num_generations} completions per prompt, "
                f"{per_step} completions per step, rewards {mix}{tools}")

    def summary(self, trainer: Any, result: Any, dataset: Any) -> dict[str, Any]:
        for tool in self.tools:  # training is over: the tools' sandboxes end here
            tool.close()
        return {**_summary(self.ctx), "beta": self.args.beta, "loss_type": self.args.loss_type}


def run(ctx: StageContext) -> StageResult:
    return GRPOStage(ctx).run()


def _rollout_args(cfg: Config, ctx: StageContext) -> dict[str, Any]:
    import torch

    spec = cfg.rollout
    have_vllm = importlib.util.find_spec("vllm") is not None
    if spec.backend == "vllm" and not have_vllm:
        raise MissingDependencyError("rollout.backend is 'vllm' but vLLM is not installed: "
                                     "pip install 'posttrain[vllm]' (GPU machines), or set rollout.backend: auto")
    use_vllm = spec.backend == "vllm" or (spec.backend == "auto" and have_vllm and torch.cuda.is_available())
    why = "no GPU" if not torch.cuda.is_available() else "vLLM not installed"
    if use_vllm and (refused := _vllm_refusal(cfg, ctx)) is not None:
        if spec.backend == "vllm":
            raise StageError(f"stage {cfg.name!r}: rollout.backend vllm: {refused}")
        use_vllm, why = False, refused
        ctx.log.warning("rollouts: not vLLM: %s", refused)
    if not use_vllm:
        if spec.backend == "auto":
            ctx.log.info("rollouts: transformers generation in process (%s; vLLM is used when available)", why)
        return {"use_vllm": False}
    ctx.log.info("rollouts: vLLM %s mode", spec.mode)
    out: dict[str, Any] = {"use_vllm": True, "vllm_mode": spec.mode}
    if spec.mode == "server":
        out.update(vllm_server_host=spec.server_host, vllm_server_port=spec.server_port)
    else:
        out.update(vllm_gpu_memory_utilization=spec.gpu_memory_utilization)
    return out


def _vllm_refusal(cfg: Config, ctx: StageContext) -> str | None:
    """Why vLLM 0.31 cannot give this stage correct rollouts (read from the model's config.json and the GPU), or
    None: MLA head sizes no backend takes (it would not start), or colocated MoE weights on a GPU whose MoE kernel
    re-lays them after loading (TRL's colocated sync would scramble the experts; server mode reloads them properly).
    """
    from posttrain.core.vllm_limits import current_gpu, is_moe, mla_problem, moe_relayout, read_config

    model = ctx.resolve_model(cfg.model)
    config = read_config(model)
    if config is None:
        return None
    if (problem := mla_problem(config)) is not None:
        return f"{model} cannot run in vLLM: {problem}"
    if cfg.rollout.mode == "colocate" and is_moe(config) and (relaid := moe_relayout(*current_gpu())) is not None:
        return (f"colocate mode on this GPU would load {model}'s experts wrongly: {relaid}, and TRL's colocated "
                "weight sync writes checkpoint-layout tensors over them; use rollout.mode: server (its sync reloads "
                "them as vLLM does) or a GPU without that kernel (Hopper, Ampere)")
    return None


def _summary(ctx: StageContext) -> dict[str, Any]:
    """First vs last logged reward, and the total of dropped groups, for the report."""
    rows = ctx.logged(REWARD)
    if not rows:
        return {}
    out: dict[str, Any] = {"reward_first": round(rows[0][REWARD], 4), "reward_last": round(rows[-1][REWARD], 4)}
    dropped = [d for r in rows if isinstance(d := r.get(GROUPS_DROPPED), float | int)]
    if dropped:
        out["groups_dropped_per_step"] = round(sum(dropped) / len(dropped), 3)
    diffs = [r for r in rows if isinstance(r.get(ROLLOUT_LOGP_DIFF), float | int)]
    if diffs:  # vLLM rollouts: how far the sampler was from the trainer
        out["rollout_logp_diff_mean"] = round(sum(r[ROLLOUT_LOGP_DIFF] for r in diffs) / len(diffs), 5)
        tops = [r[ROLLOUT_LOGP_DIFF_MAX] for r in diffs if isinstance(r.get(ROLLOUT_LOGP_DIFF_MAX), float | int)]
        out["rollout_logp_diff_max"] = round(max(tops or [r[ROLLOUT_LOGP_DIFF] for r in diffs]), 5)
    return out
