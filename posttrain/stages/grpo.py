"""Stage `grpo`: TRL's GRPOTrainer fed by a weighted mix of rewards from the registry.

Adds what users ask TRL for: named loss presets (`loss: dr_grpo`), DAPO dynamic sampling, the
MoE load-balancing callback during RL, vLLM rollouts when available (colocate, or a server started
with `posttrain rollout-server`) and a logged fallback to transformers generation. With vLLM, the weight
sync sends what vLLM's loaders accept plus the router biases, and the sampler's drift is logged
(`posttrain/vllm_sync.py`).

The report's section on this kind is in grpo_report.py; its hooks are imported here, where the
report looks for them.
"""

from __future__ import annotations

import importlib.util
import logging
import math
from collections import deque
from collections.abc import Sequence
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from posttrain.core.errors import MissingDependencyError, StageError
from posttrain.core.generation import SpeculativeSpec
from posttrain.core.identity import ADDED, PLACEMENT, Placement
from posttrain.core.run_folder import (
    GROUPS_DROPPED,
    METRICS_FILE,
    PROMPTS_FILE,
    REWARD,
    ROLLOUT_LOGP_DIFF,
    ROLLOUT_LOGP_DIFF_MAX,
    read_jsonl,
)
from posttrain.recipe import RewardSpec
from posttrain.stages.base import StageContext, StageResult
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


class RolloutSpec(BaseModel):
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
    #: In-process rollouts: speculative decoding drafted by the model's MTP module (`speculative: {mtp: true}`).
    speculative: Annotated[SpeculativeSpec | None, ADDED] = None
    #: A logging step whose mean per-token |log p_trainer - log p_vLLM| exceeds this logs a WARNING (vLLM only).
    max_logp_diff: Annotated[float, ADDED] = Field(0.05, gt=0)

    @model_validator(mode="after")
    def _start_needs_server_mode(self) -> RolloutSpec:
        if self.start and (self.mode != "server" or self.backend == "transformers"):
            raise ValueError("start: true starts a vLLM rollout server: set backend: vllm (or auto) and mode: server")
        return self


class Config(TrainerConfig):
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
        from trl import GRPOTrainer

        return GRPOTrainer

    def mixins(self) -> tuple[type, ...]:
        from posttrain.training.dynamic_sampling import DynamicSamplingMixin
        from posttrain.training.mtp import SpeculativeRolloutMixin

        mixins: tuple[type, ...] = (RewardErrorGuardMixin, ThinkOpenerMixin, ZeroRewardWarningMixin,
                                    DynamicSamplingMixin, SpeculativeRolloutMixin, *super().mixins())
        if getattr(self.args, "use_vllm", False):
            from posttrain.training.vllm_sync import VLLMSyncMixin

            mixins += (VLLMSyncMixin,)
        return mixins

    def prepare_data(self, dataset: Any) -> Any:
        cfg = self.cfg
        require_columns(dataset, [cfg.prompt_column], cfg, "GRPO prompts", "set prompt_column")
        return dataset.rename_column(cfg.prompt_column, "prompt") if cfg.prompt_column != "prompt" else dataset

    def trl_overrides(self) -> dict[str, Any]:
        return _rollout_args(self.cfg, self.ctx)

    def trainer_kwargs(self, dataset: Any) -> dict[str, Any]:
        self.rewards = self.ctx.build_rewards(self.cfg.rewards).functions
        return {"train_dataset": dataset, "reward_funcs": self.rewards}

    def after_init(self, trainer: Any, dataset: Any) -> None:
        from posttrain.core.models import without_router_logits

        without_router_logits(trainer.model)  # rollouts call `generate`: an MoE's router loss must stay off there
        trainer.setup_reward_error_guard(self.cfg.max_reward_error_rate, self.cfg.reward_error_window)
        trainer.setup_zero_reward_warning(self.cfg.zero_reward_warning_rounds)
        trainer.setup_dynamic_sampling(self.cfg.dynamic_sampling, dataset.to_list(), self.ctx.seed)
        trainer.setup_speculative_rollouts(self.cfg.rollout.speculative)
        if hasattr(trainer, "logp_diff_callback"):
            trainer.logp_diff_callback.threshold = self.cfg.rollout.max_logp_diff
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
        return (f"GRPO on {len(dataset)} prompts: {args.num_generations} completions per prompt, "
                f"{per_step} completions per step, rewards {mix}")

    def summary(self, trainer: Any, result: Any, dataset: Any) -> dict[str, Any]:
        return {**_summary(self.ctx), "beta": self.args.beta, "loss_type": self.args.loss_type}


def run(ctx: StageContext) -> StageResult:
    return GRPOStage(ctx).run()


class RewardErrorGuardMixin:
    """Stop GRPO when a reward keeps failing, instead of training to the end on what the other rewards say.

    A failed row scores None (TRL leaves it out of the advantage), so a judge server that went down or a sandbox
    that broke would otherwise train silently on a different objective. After each scoring round, each reward's
    share of failed rows over the last `window` rounds (fewer at the start) is compared with `max_rate`; above
    it, the stage fails with a `StageError` naming the reward, the rate and the reward's first failure (a rerun
    resumes from the last checkpoint). Counted per process, from the `rewards.registry.Reward` counters.
    Only rows left without a score count: a row scored with an error beside it (an answer the math reward
    could not read, a program that did not compile) is the policy's doing, which a young policy does on
    most rows; those are in `rewards/<name>/error_rate` and the zero-reward warning, and never stop a run.
    """

    _error_guard: tuple[float, int, dict[str, deque[tuple[int, int]]]] | None = None

    def setup_reward_error_guard(self, max_rate: float, window: int) -> None:
        self._error_guard = (max_rate, window, {})

    def _calculate_rewards(self, inputs: Any, prompts: list[Any], completions: list[Any],
                           completion_ids_list: Any) -> Any:
        guarded = [f for f in getattr(self, "reward_funcs", []) if hasattr(f, "failed_count") and hasattr(f, "rows")]
        before = [(f.rows, f.failed_count) for f in guarded]
        out = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)  # type: ignore[misc]
        if self._error_guard is not None:
            for fn, (rows, failed) in zip(guarded, before, strict=True):
                self._check_error_rate(fn, fn.rows - rows, fn.failed_count - failed)
        return out

    def _check_error_rate(self, fn: Any, rows: int, errors: int) -> None:
        assert self._error_guard is not None
        max_rate, window, history = self._error_guard
        rounds = history.setdefault(fn.name, deque(maxlen=window))
        rounds.append((rows, errors))
        scored, failed = sum(r for r, _ in rounds), sum(e for _, e in rounds)
        if not scored or failed / scored <= max_rate:
            return
        raise StageError(f"reward {fn.name}: {failed} of {scored} rows failed over the last {len(rounds)} scoring "
                         f"round(s), more than max_reward_error_rate {max_rate:g}; its first error: "
                         f"{(fn.first_failure or '?')[:1000]}")


class ZeroStreaks:
    """Scoring rounds in a row in which a reward gave 0.0 to every completion it scored, per reward.

    A reward that reads answers in another layout than the prompt asks for (R1-Zero's `<answer>` tags
    against a boxed-only reader) scores every completion 0: GRPO then trains on the other rewards alone
    and nothing fails. A streak of `rounds` such rounds is reported once per reward; a round with any
    other score ends the streak, a round with no score at all (every row failed) neither extends nor
    ends it (the error guard speaks for those).
    """

    def __init__(self, rounds: int):
        self.rounds = rounds
        self.streaks: dict[str, int] = {}
        self.reported: set[str] = set()

    def update(self, name: str, scores: Sequence[float | None]) -> bool:
        """Count one round of `name`'s scores (None or NaN: no score); True on the round the streak reaches
        `rounds`, the first time only."""
        scored = [s for s in scores if s is not None and not math.isnan(s)]
        if not scored:
            return False
        self.streaks[name] = self.streaks.get(name, 0) + 1 if all(s == 0.0 for s in scored) else 0
        if self.rounds and self.streaks[name] >= self.rounds and name not in self.reported:
            self.reported.add(name)
            return True
        return False


class ZeroRewardWarningMixin:
    """Log once when a reward has scored 0.0 on every completion for `rounds` scoring rounds in a row, with one
    completion as the reward saw it and its gold, so a prompt/reward mismatch shows in a run's first minutes."""

    _zero_streaks: ZeroStreaks | None = None

    def setup_zero_reward_warning(self, rounds: int) -> None:
        self._zero_streaks = ZeroStreaks(rounds) if rounds > 0 else None

    def _calculate_rewards(self, inputs: Any, prompts: list[Any], completions: list[Any],
                           completion_ids_list: Any) -> Any:
        out = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)  # type: ignore[misc]
        streaks = self._zero_streaks
        if streaks is not None:
            names = getattr(self, "reward_func_names", None) or [f"reward {j}" for j in range(out.shape[1])]
            for j, name in enumerate(names):
                if streaks.update(name, out[:, j].tolist()) and self.accelerator.is_main_process:  # type: ignore
                    log.warning("%s", zero_reward_message(name, streaks.rounds, completions[0], inputs[0]))
        return out


def zero_reward_message(name: str, rounds: int, completion: Any, row: dict[str, Any]) -> str:
    """The warning of a reward stuck at 0: what it saw in one completion, and the gold it compared it with."""
    from rewards.answer import completion_text

    gold = {k: v for k, v in row.items() if k not in ("prompt", "completion", "completion_ids")}
    gold = {"solution": gold["solution"]} if "solution" in gold else gold
    text = completion_text(completion)
    text = text if len(text) <= 600 else f"{text[:200]} … {text[-400:]}"
    return (f"reward {name} scored 0.0 on every completion for {rounds} scoring rounds in a row: does the prompt "
            f"ask for an answer layout this reward reads? (zero_reward_warning_rounds sets when this is said, 0 "
            f"never) A completion: {text!r}; its row: {str(gold)[:300]}")


class ThinkOpenerMixin:
    """Rewards see the whole assistant turn when the chat template opened `<think>` in the prompt.

    TRL hands rewards conversational prompts as message lists, so the rendered prompt ending in `<think>`
    (DeepSeek-R1, Qwen3 thinking) is invisible to them and the completion starts inside the reasoning. The
    prompt is rendered here as TRL renders it (with the trainer's `chat_template_kwargs`); where it ends with
    the opener, the completions the rewards get start with it (`posttrain/core/chat.py` says why this is
    decided from the prompt, never from the completion). Plain-text prompts are not templated by TRL: a
    prompt string ending in `<think>` is read by the format reward itself.
    """

    _think_openers: dict[str, str]

    def _calculate_rewards(self, inputs: Any, prompts: list[Any], completions: list[Any],
                           completion_ids_list: Any) -> Any:
        from posttrain.core.chat import with_opener

        openers = [self._think_opener(p) for p in prompts]
        if any(openers):
            completions = [with_opener(c, o) for c, o in zip(completions, openers, strict=True)]
        return super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)  # type: ignore[misc]

    def _think_opener(self, prompt: Any) -> str:
        import json

        from posttrain.core.chat import render_generation_prompt, think_opener

        if not isinstance(prompt, list):
            return ""
        if not hasattr(self, "_think_openers"):
            self._think_openers = {}
        key = json.dumps(prompt, sort_keys=True, default=str)
        if key not in self._think_openers:
            tokenizer = getattr(self, "_tokenizer", None) or self.processing_class  # type: ignore[attr-defined]
            kwargs = getattr(self, "chat_template_kwargs", None) or {}
            self._think_openers[key] = think_opener(render_generation_prompt(tokenizer, prompt, **kwargs))
        return self._think_openers[key]


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
    return out


def _summary(ctx: StageContext) -> dict[str, Any]:
    """First vs last logged reward, and the total of dropped groups, for the report."""
    path = ctx.stage_dir / METRICS_FILE
    rows = [r for r in read_jsonl(path) if isinstance(r.get(REWARD), float | int)] if path.exists() else []
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
