"""Stage `reward_model`: a Bradley-Terry reward model trained with TRL's RewardTrainer on preference pairs.

Reads `prompt`/`chosen`/`rejected` rows (the distill stage's pairs.jsonl, a local file, or a hub
preference set), holds out a share of the prompts, puts a one-output sequence-classification head on
the model (DeepSeek-V3 has one in transformers; DeepSeek-V3 trains its reward model from the SFT
checkpoint, so `model: sft` is the usual choice), trains, and reports pairwise accuracy on the
held-out pairs: the share where the chosen completion scores higher.

Writes DIR/<name>/model/ (with reward_stats.json: mean/std of held-out scores, for the `reward_model`
reward's z-score), metrics.jsonl (TRL's loss, accuracy, margin; eval_* rows on the held-out pairs),
and with `judge_data:` also judge_data.jsonl: judged examples that teach a generative reward model
the judge format (see data_pipelines.judge_data), made from the training pairs only.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
from typing import Any, ClassVar

from pydantic import Field

from posttrain.core.errors import DataError
from posttrain.core.run_folder import JUDGE_DATA_FILE, MODEL_DIR, PAIRS_FILE
from posttrain.recipe import RewardSpec, StrictModel
from posttrain.stages.base import StageContext, StageResult
from posttrain.training.moe_balance import MoEBalanceConfig
from posttrain.training.trainer import TrainerConfig, TrainerStage, require_columns

#: Training pairs scored for reward_stats.json when nothing is held out.
STATS_SAMPLE = 512


def _default_verifiers() -> list[RewardSpec]:
    return [RewardSpec(name="math", weight=0.8, kwargs={"workers": 0}),
            RewardSpec(name="format", weight=0.2, kwargs={"strict": True})]


class JudgeDataSpec(StrictModel):
    """Also write judge_data.jsonl (prompt/completion rows for an `sft` stage) from the training pairs."""

    #: Judge template, the one the `genrm` reward will render: a built-in (compact, score, principles) or a file.
    template: str = "compact"
    #: Show the judge a reference answer: the pair's `solution`, else the chosen completion's boxed answer.
    reference: bool = True
    #: Score scale of the verdicts (`Score: X/scale`).
    scale: int = Field(10, ge=1)
    max_examples: int | None = Field(None, ge=1)
    #: Rule-based verifiers that label each completion; the verdict is their weighted mean on the scale.
    verifiers: list[RewardSpec] = Field(default_factory=_default_verifiers, min_length=1)


class Config(TrainerConfig):
    #: Preference pairs: an earlier stage (its `data_file`), a jsonl/parquet file, or a hub data set.
    data_file: str = PAIRS_FILE
    #: Share of prompts held out to measure pairwise accuracy (pairs of one prompt stay on one side).
    eval_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    judge_data: JudgeDataSpec | None = None
    #: Off by default here: the reward model's routers keep the biases the policy was trained with.
    moe_balance: MoEBalanceConfig = Field(
        default_factory=lambda: MoEBalanceConfig(bias_update_speed=0.0, seq_aux_loss_coef=0.0))

    trl_config: ClassVar[str | None] = "trl:RewardConfig"
    trl_defaults: ClassVar[dict[str, Any]] = {
        "per_device_train_batch_size": 32,
        "per_device_eval_batch_size": 64,
        "learning_rate": 3e-4,
        "lr_scheduler_type": "cosine",
        "warmup_steps": 0.05,
        "num_train_epochs": 1,
        "logging_steps": 10,
        "eval_strategy": "steps",
        "eval_steps": 50,
        "save_steps": 100,
        "save_total_limit": 2,
        "gradient_checkpointing": False,
        "dataloader_num_workers": 0,
        "center_rewards_coefficient": 0.01,
        "max_length": 1024,
    }


class RewardModelStage(TrainerStage):
    cfg: Config
    log_keys = ("loss", "accuracy", "margin", "eval_accuracy")

    def trainer_class(self) -> type:
        from posttrain.training.trainers import RewardTrainer

        held_out, tokenizer = self.held_out, self.tokenizer

        class Trainer(RewardTrainer):
            def evaluate(self, eval_dataset: Any = None, ignore_keys: Any = None,
                         metric_key_prefix: str = "eval") -> dict[str, float]:
                """Exact held-out figures, scored as the `reward_model` reward scores (TRL averages batch means,
                which over-weights a short last batch)."""
                if eval_dataset is not None or not len(held_out):
                    return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
                model = self.accelerator.unwrap_model(self.model)
                was_training = model.training
                model.eval()
                try:
                    found = pairwise_metrics(*_score_pairs(model, tokenizer, held_out,
                                                           self.args.per_device_eval_batch_size))
                    logs = {f"{metric_key_prefix}_loss": found["eval_loss"],
                            f"{metric_key_prefix}_accuracy": found["pairwise_accuracy"],
                            f"{metric_key_prefix}_margin": found["reward_margin"]}
                    self.log(logs)  # in eval mode, so RewardTrainer adds no training figures to this row
                    self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, logs)
                finally:
                    model.train(was_training)
                return logs

        return Trainer

    def prepare_data(self, dataset: Any) -> Any:
        """The training pairs; a share of the prompts is held out (`self.held_out`)."""
        cfg = self.cfg
        require_columns(dataset, ["chosen", "rejected"], cfg, "preference data",
                        "expected prompt, chosen, rejected")
        keep = [c for c in ("prompt", "chosen", "rejected", "margin", "solution", "rejected_reason")
                if c in dataset.column_names]
        train, self.held_out = split_by_prompt(dataset.select_columns(keep), cfg.eval_fraction, self.ctx.seed)
        if len(train) == 0:
            raise DataError(f"stage {cfg.name!r}: no training pairs left after holding out {cfg.eval_fraction:.0%} "
                            "of the prompts; lower eval_fraction or give more pairs")
        self.judge_examples = (_write_judge_data(self.ctx, cfg.judge_data, train)
                               if cfg.judge_data is not None else None)
        return train

    def trl_overrides(self) -> dict[str, Any]:
        from posttrain.core.models import model_remote_code

        extra: dict[str, Any] = {} if len(self.held_out) else {"eval_strategy": "no"}
        if self.cfg.model in (None, "base") and self.cfg.lora is None:
            spec = self.ctx.recipe.model
            extra["model_init_kwargs"] = {"dtype": spec.dtype, "revision": spec.revision,
                                          "trust_remote_code": model_remote_code(self.ctx.base_model,
                                                                                 spec.trust_remote_code)}
        return extra

    def load_model(self, path: str) -> Any:
        """The path (RewardTrainer puts the one-output head on it: AutoModelForSequenceClassification); with LoRA,
        that model built here and wrapped by part, as SFT does (peft inside RewardTrainer would remap a MoE's
        `gate_proj`/`up_proj` targets onto the routed experts), with the score head trained (peft's SEQ_CLS)."""
        from posttrain.core.models import with_sequence_classification

        spec = self.ctx.recipe.model if self.cfg.model in (None, "base") else None
        hub = {} if spec is None else {"revision": spec.revision, "trust_remote_code": spec.trust_remote_code}
        if self.cfg.lora is None:
            with_sequence_classification(path, **hub)  # OLMoE and other families transformers ships without a head
            return path
        from transformers import set_seed

        from posttrain.core.models import load_sequence_classifier, torch_dtype, without_router_logits
        from posttrain.training.lora import apply_lora

        dtype = {} if spec is None else {"dtype": torch_dtype(spec.dtype)}
        set_seed(self.args.seed)  # the head is initialised at random: as RewardTrainer does, seed first
        model = load_sequence_classifier(path, hub, num_labels=1, **dtype)
        return apply_lora(without_router_logits(model), self.cfg.lora, task_type="SEQ_CLS")

    def trainer_kwargs(self, dataset: Any) -> dict[str, Any]:
        return {"train_dataset": dataset, "eval_dataset": self.held_out if len(self.held_out) else None}

    def describe(self, args: Any, dataset: Any) -> str:
        length = f"{args.max_steps} steps" if args.max_steps > 0 else f"{args.num_train_epochs:g} epochs"
        return (f"reward model from {self.ctx.resolve_model(self.cfg.model)} on {len(dataset)} pairs "
                f"({len(self.held_out)} held out), {length}")

    def summary(self, trainer: Any, result: Any, train: Any) -> dict[str, Any]:
        ctx, held_out, tokenizer = self.ctx, self.held_out, self.tokenizer
        metrics: dict[str, Any] = {} if self.judge_examples is None else {"judge_examples": self.judge_examples}
        metrics.update({"pairs": len(train), "eval_pairs": len(held_out)})
        model = trainer.accelerator.unwrap_model(trainer.model).eval()
        measured = held_out if len(held_out) else train.select(range(min(STATS_SAMPLE, len(train))))
        chosen, rejected = _score_pairs(model, tokenizer, measured, self.args.per_device_eval_batch_size)
        if len(held_out):
            metrics.update(pairwise_metrics(chosen, rejected, list(held_out["rejected_reason"])
                                            if "rejected_reason" in held_out.column_names else None))
            logged = {row.get("step") for row in trainer.state.log_history if "eval_accuracy" in row}
            if result.global_step not in logged:  # the curve ends at the final model
                ctx.append_metrics({"step": result.global_step, "eval_loss": metrics["eval_loss"],
                                    "eval_accuracy": metrics["pairwise_accuracy"],
                                    "eval_margin": metrics["reward_margin"]})
            ctx.log.info("held-out pairwise accuracy %.3f on %d pairs (margin %.3f)", metrics["pairwise_accuracy"],
                         len(held_out), metrics["reward_margin"])
        self.stats = {"mean": statistics.fmean(chosen + rejected), "std": statistics.pstdev(chosen + rejected) or 1.0,
                      "pairs": len(measured), "measured_on": "held_out" if len(held_out) else "train"}
        return metrics

    def run(self) -> StageResult:
        result = super().run()
        if self.ctx.is_main_process:
            from rewards.reward_model import STATS_FILE

            (self.ctx.stage_dir / MODEL_DIR / STATS_FILE).write_text(json.dumps(self.stats, indent=2))
        return result


def run(ctx: StageContext) -> StageResult:
    return RewardModelStage(ctx).run()


def pairwise_metrics(chosen: list[float], rejected: list[float],
                     reasons: list[Any] | None = None) -> dict[str, Any]:
    """Accuracy (chosen scored higher), mean margin and Bradley-Terry loss; accuracy per rejection reason if known.

    >>> pairwise_metrics([2.0, 0.0], [1.0, 1.0])["pairwise_accuracy"]
    0.5
    """
    n = len(chosen)
    diffs = [c - r for c, r in zip(chosen, rejected, strict=True)]
    out: dict[str, Any] = {
        "pairwise_accuracy": round(sum(d > 0 for d in diffs) / n, 4),
        "reward_margin": round(statistics.fmean(diffs), 4),
        "eval_loss": round(statistics.fmean(_softplus(-d) for d in diffs), 5),
    }
    if reasons is not None and len(set(reasons)) > 1:
        by: dict[str, list[float]] = {}
        for reason, d in zip(reasons, diffs, strict=True):
            by.setdefault(str(reason), []).append(d)
        out["pairwise_accuracy_by_reason"] = {k: round(sum(d > 0 for d in v) / len(v), 4)
                                              for k, v in sorted(by.items())}
    return out


def _softplus(x: float) -> float:
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def _score_pairs(model: Any, tokenizer: Any, dataset: Any, batch_size: int) -> tuple[list[float], list[float]]:
    from rewards.reward_model import score_texts

    n = len(dataset)
    prompts = list(dataset["prompt"]) if "prompt" in dataset.column_names else [""] * n
    scores = score_texts(model, tokenizer, prompts * 2, list(dataset["chosen"]) + list(dataset["rejected"]),
                         batch_size)
    return scores[:n], scores[n:]


def split_by_prompt(dataset: Any, eval_fraction: float, seed: int) -> tuple[Any, Any]:
    """(train, held out): a stable hash of (seed, prompt) decides, so pairs of one prompt never straddle the split."""
    if eval_fraction <= 0 or len(dataset) < 2:
        return dataset, dataset.select([])
    column = "prompt" if "prompt" in dataset.column_names else "chosen"
    keys = [json.dumps(p, sort_keys=True) for p in dataset[column]]

    def held(key: str) -> bool:
        digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < eval_fraction

    flags = [held(k) for k in keys]
    if not any(flags):  # a few prompts only: hold out the last one rather than measure nothing
        flags = [k == keys[-1] for k in keys]
    if all(flags):
        flags = [k != keys[0] for k in keys]
    return (dataset.select([i for i, f in enumerate(flags) if not f]),
            dataset.select([i for i, f in enumerate(flags) if f]))


def _write_judge_data(ctx: StageContext, spec: JudgeDataSpec, train: Any) -> int:
    from data_pipelines.judge_data import pair_rows, write_judge_examples

    path = ctx.stage_dir / JUDGE_DATA_FILE
    if not ctx.is_main_process:
        return 0
    count = write_judge_examples(pair_rows(train.to_list()), path, verifiers=ctx.build_rewards(spec.verifiers),
                                 template=spec.template,
                                 use_reference=spec.reference, scale=spec.scale, max_examples=spec.max_examples,
                                 seed=ctx.seed)
    ctx.log.info("wrote %d judged examples to %s", count, path)
    return count


# --------------------------------------------------------------------------------------------------
# The report's section on this kind (posttrain.report finds these hooks on this module)

#: What TRL's RewardTrainer logs besides the loss, with panel titles.
