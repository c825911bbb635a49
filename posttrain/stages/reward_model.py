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

from posttrain.errors import DataError
from posttrain.recipe import RewardSpec, StageConfig, StrictModel
from posttrain.stages.base import StageContext, StageResult

PAIRS_FILE = "pairs.jsonl"
JUDGE_DATA_FILE = "judge_data.jsonl"
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


class Config(StageConfig):
    #: Model to start from: an earlier stage (e.g. `sft`), a path or a hub name (default: the base model).
    model: str | None = None
    #: Preference pairs: an earlier stage (its `data_file`), a jsonl/parquet file, or a hub data set.
    data: str
    data_file: str = PAIRS_FILE
    #: Split of a hub data set (ignored for stage outputs and local files).
    split: str = "train"
    #: Share of prompts held out to measure pairwise accuracy (pairs of one prompt stay on one side).
    eval_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    max_pairs: int | None = Field(None, ge=1)
    judge_data: JudgeDataSpec | None = None

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
    ref_fields: ClassVar[tuple[str, ...]] = ("model", "data")


def run(ctx: StageContext) -> StageResult:
    from trl import RewardTrainer

    from posttrain.models import load_tokenizer
    from posttrain.recipe import build_trl_config
    from posttrain.training import MetricsFileCallback, checkpoint_dir, prepare_trainer, save_final, train_resumably

    cfg = ctx.config
    assert isinstance(cfg, Config)
    model_path = ctx.resolve_model(cfg.model)
    pairs = _pairs(ctx.load_dataset(cfg.data, cfg.data_file, cfg.split), cfg)
    train, held_out = split_by_prompt(pairs, cfg.eval_fraction, ctx.seed)
    if len(train) == 0:
        raise DataError(f"stage {cfg.name!r}: no training pairs left after holding out {cfg.eval_fraction:.0%} "
                        "of the prompts; lower eval_fraction or give more pairs")
    metrics: dict[str, Any] = {}
    if cfg.judge_data is not None:
        metrics["judge_examples"] = _write_judge_data(ctx, cfg.judge_data, train)

    tokenizer = load_tokenizer(model_path, padding_side="right")
    extra: dict[str, Any] = {} if "seed" in cfg.trl else {"seed": ctx.seed}
    if len(held_out) == 0:
        extra["eval_strategy"] = "no"
    if cfg.model in (None, "base") and "model_init_kwargs" not in cfg.trl:
        spec = ctx.recipe.model
        extra["model_init_kwargs"] = {"dtype": spec.dtype, "revision": spec.revision,
                                      "trust_remote_code": spec.trust_remote_code}
    args = build_trl_config(cfg, checkpoint_dir(ctx), **extra)
    ctx.log.info("reward model from %s on %d pairs (%d held out), %s", model_path, len(train), len(held_out),
                 f"{args.max_steps} steps" if args.max_steps > 0 else f"{args.num_train_epochs:g} epochs")

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
                found = pairwise_metrics(*_score_pairs(model, tokenizer, held_out, args.per_device_eval_batch_size))
                logs = {f"{metric_key_prefix}_loss": found["eval_loss"],
                        f"{metric_key_prefix}_accuracy": found["pairwise_accuracy"],
                        f"{metric_key_prefix}_margin": found["reward_margin"]}
                self.log(logs)  # in eval mode, so RewardTrainer adds no training figures to this row
                self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, logs)
            finally:
                model.train(was_training)
            return logs

    trainer = Trainer(model=model_path, args=args, train_dataset=train,
                      eval_dataset=held_out if len(held_out) else None, processing_class=tokenizer)
    prepare_trainer(trainer, ctx)
    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, MetricsFileCallback):
            callback.keys = ("loss", "accuracy", "margin", "eval_accuracy")
    result = train_resumably(trainer, ctx)
    out = save_final(trainer, tokenizer, ctx)
    metrics.update({"train_loss": round(result.training_loss, 5), "steps": result.global_step,
                    "pairs": len(train), "eval_pairs": len(held_out), "model": str(out)})
    model = trainer.accelerator.unwrap_model(trainer.model).eval()
    measured = held_out if len(held_out) else train.select(range(min(STATS_SAMPLE, len(train))))
    chosen, rejected = _score_pairs(model, tokenizer, measured, args.per_device_eval_batch_size)
    if len(held_out):
        metrics.update(pairwise_metrics(chosen, rejected, list(held_out["rejected_reason"])
                                        if "rejected_reason" in held_out.column_names else None))
        logged = {row.get("step") for row in trainer.state.log_history if "eval_accuracy" in row}
        if result.global_step not in logged:  # the curve ends at the final model
            ctx.append_metrics({"step": result.global_step, "eval_loss": metrics["eval_loss"],
                                "eval_accuracy": metrics["pairwise_accuracy"], "eval_margin": metrics["reward_margin"]})
        ctx.log.info("held-out pairwise accuracy %.3f on %d pairs (margin %.3f)", metrics["pairwise_accuracy"],
                     len(held_out), metrics["reward_margin"])
    if ctx.is_main_process:
        from rewards.reward_model import STATS_FILE

        scores = chosen + rejected
        stats = {"mean": statistics.fmean(scores), "std": statistics.pstdev(scores) or 1.0, "pairs": len(measured),
                 "measured_on": "held_out" if len(held_out) else "train"}
        (out / STATS_FILE).write_text(json.dumps(stats, indent=2))
    return StageResult(metrics=metrics, outputs={"model": str(out)})


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


def _pairs(dataset: Any, cfg: Config) -> Any:
    """Keep prompt/chosen/rejected (and margin, solution, rejected_reason); a missing column names what is there."""
    missing = [c for c in ("chosen", "rejected") if c not in dataset.column_names]
    if missing:
        raise DataError(f"reward_model stage {cfg.name!r}: preference data {cfg.data!r} has no column(s) {missing}; "
                        f"it has {dataset.column_names} (expected prompt, chosen, rejected)")
    keep = [c for c in ("prompt", "chosen", "rejected", "margin", "solution", "rejected_reason")
            if c in dataset.column_names]
    dataset = dataset.select_columns(keep)
    if cfg.max_pairs is not None:
        dataset = dataset.select(range(min(cfg.max_pairs, len(dataset))))
    return dataset


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
    verifiers = [(s.label, fn, w) for s, (fn, w) in zip(spec.verifiers, ctx.build_rewards(spec.verifiers),
                                                          strict=True)]
    count = write_judge_examples(pair_rows(train.to_list()), path, verifiers=verifiers, template=spec.template,
                                 use_reference=spec.reference, scale=spec.scale, max_examples=spec.max_examples,
                                 seed=ctx.seed)
    ctx.log.info("wrote %d judged examples to %s", count, path)
    return count
