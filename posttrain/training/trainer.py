"""The trainer-stage base: what `sft`, `reward_model` and `grpo` (and any new TRL stage) share.

A trainer stage is a `TrainerConfig` subclass (its own options on top of the shared model, data,
LoRA, MoE balancing and `trl:` pass-through) and a `TrainerStage` subclass that says only what is
its own: the TRL trainer class, how its rows are prepared, extra TRL settings and its summary. The
skeleton in `TrainerStage.run` resolves the model, loads it, builds the TRL config, trains
resumably, saves (LoRA merged) and adds the balance summary.

Ctrl-C / SIGTERM during training asks the trainer to save a checkpoint at the end of the current
step and stop; the stage then raises KeyboardInterrupt, and the next run resumes from that
checkpoint. A second signal stops at once (the last periodic checkpoint is used). Checkpoints and
the final model are written under temporary names and renamed when complete (checkpoints.py), so
whatever stops a run, the next one resumes from the newest complete checkpoint, and a run stopped
after its last step only saves.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import Field
from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from posttrain.core.errors import DataError, StageError
from posttrain.core.identity import ADDED
from posttrain.core.run_folder import (
    CHECKPOINT_DIR,
    DATA_FILE,
    LOSS,
    MAX_VIOLATION,
    METRICS_FILE,
    MODEL_DIR,
    MTP_LOSS,
    REWARD,
    STEP,
    TRAIN_SECONDS,
    trim_jsonl,
)
from posttrain.recipe import StageConfig, trl_fields
from posttrain.stages.base import StageContext, StageResult
from posttrain.training.checkpoints import (
    checkpoint_step,
    finished_state,
    last_complete_checkpoint,
    load_train_result,
    save_train_result,
)
from posttrain.training.data_mix import DataSource, source_refs
from posttrain.training.lora import LoraSpec
from posttrain.training.moe_balance import MoEBalanceConfig
from posttrain.training.mtp import MTPConfig
from posttrain.training.saving import is_sharded, save_final
from posttrain.training.step_clock import StepClock
from posttrain.training.tracking import trainer_settings, training_env

log = logging.getLogger("posttrain.training")


class TrainerConfig(StageConfig):
    """Options every trainer stage has; a stage's own `Config` adds what is its own."""

    #: Model to train: an earlier stage (its `model/`), a path or a hub name (default: the recipe's base model).
    model: str | None = None
    #: Training rows: an earlier stage (its `data_file`), a jsonl/parquet file, or a hub data set; or a weighted
    #: mix of such sources, `[{source: distill, weight: 0.7}, {source: extra.jsonl, weight: 0.3}]`.
    data: str | list[DataSource] = Field(union_mode="left_to_right")
    data_file: str = DATA_FILE
    #: Split of a hub data set (ignored for stage outputs and local files).
    split: str = "train"
    max_samples: int | None = Field(None, ge=1)
    #: Rows in a weighted mix (default: the sources' sizes summed).
    mix_size: Annotated[int | None, ADDED] = Field(None, ge=1)
    lora: LoraSpec | None = None
    moe_balance: MoEBalanceConfig = Field(default_factory=MoEBalanceConfig)
    #: Multi-token prediction loss weight (models with DeepSeek-V3's MTP module only).
    mtp: Annotated[MTPConfig, ADDED] = Field(default_factory=MTPConfig)

    ref_fields: ClassVar[tuple[str, ...]] = ("model", "data")
    required_outputs: ClassVar[tuple[str, ...]] = (f"{MODEL_DIR}/config.json",)

    def data_refs(self) -> list[str]:
        return source_refs(self.data)


class TrainerStage:
    """One run of a trainer stage. Subclasses set `trainer_class` and override the hooks they need."""

    #: Padding side of the tokenizer the trainer gets (right for training, left for generation).
    padding_side: ClassVar[str] = "right"
    #: Keys shown in the one-line log per logging step.
    log_keys: ClassVar[tuple[str, ...]] = (LOSS, REWARD, MAX_VIOLATION, MTP_LOSS)

    def __init__(self, ctx: StageContext):
        self.ctx = ctx
        self.cfg: Any = ctx.config
        #: Rows taken from each source of a weighted mix (None for a single source).
        self.mix_counts: dict[str, int] | None = None

    # -- what a stage says of itself ---------------------------------------------------------------
    def trainer_class(self) -> type:
        """The trainer class: one of `posttrain.training.trainers` (or `grpo_trainer`), TRL's with posttrain's
        additions declared once (imported here, not at module level: `posttrain validate` stays fast)."""
        raise NotImplementedError

    def load_data(self) -> Any:
        """The stage's rows: its one source, or the weighted mix of its sources (`posttrain.training.data_mix`)."""
        from posttrain.training.data_mix import mix

        ctx, cfg = self.ctx, self.cfg
        if isinstance(cfg.data, str):
            return ctx.load_dataset(cfg.data, cfg.data_file, cfg.split)
        parts = [(s.source, ctx.load_dataset(s.source, s.data_file or cfg.data_file, s.split or cfg.split))
                 for s in cfg.data]
        if len(parts) == 1:
            return parts[0][1]
        mixed, counts = mix(parts, [s.weight for s in cfg.data], ctx.seed, cfg.mix_size)
        ctx.log.info("data mix of %d rows: %s", len(mixed), ", ".join(
            f"{name}: {n} of {len(ds)} (weight {s.weight:g})"
            for (name, ds), s, n in zip(parts, cfg.data, counts, strict=True)))
        self.mix_counts = {}
        for (name, _), n in zip(parts, counts, strict=True):
            self.mix_counts[name] = self.mix_counts.get(name, 0) + n
        return mixed

    def prepare_data(self, dataset: Any) -> Any:
        """The rows the trainer needs, named as TRL expects; a missing column is a `DataError`."""
        return dataset

    def trl_overrides(self) -> dict[str, Any]:
        """Settings posttrain adds to the stage's `trl:` options (the user's own win where they overlap)."""
        return {}

    def load_model(self, path: str) -> Any:
        """The model the trainer gets: loaded with the recipe's options when it is the base, LoRA applied."""
        from posttrain.core.models import load_causal_lm
        from posttrain.training.lora import apply_lora

        spec = self.ctx.recipe.model
        if self.cfg.model in (None, "base"):
            model = load_causal_lm(path, spec)
        else:  # an earlier stage's model keeps the base's architecture (and its remote code, if that was used)
            model = load_causal_lm(path, trust_remote_code=spec.trust_remote_code)
        return apply_lora(model, self.cfg.lora) if self.cfg.lora is not None else model

    def trainer_kwargs(self, dataset: Any) -> dict[str, Any]:
        """Keyword arguments of the trainer besides model, args and processing_class."""
        return {"train_dataset": dataset}

    def after_init(self, trainer: Any, dataset: Any) -> None:
        """Set-up that needs the built trainer."""

    def describe(self, args: Any, dataset: Any) -> str:
        """The log line that opens training."""
        return f"{self.cfg.kind} on {len(dataset)} rows from {', '.join(self.cfg.data_refs())}, {_length(args)}"

    def summary(self, trainer: Any, result: Any, dataset: Any) -> dict[str, Any]:
        """Metrics of this stage for report.json besides loss, steps, model and the balance summary (called after
        training, before the model is saved: a LoRA adapter is still separate)."""
        return {}

    # -- the skeleton ------------------------------------------------------------------------------
    def run(self) -> StageResult:
        from posttrain.core.models import load_tokenizer, without_router_logits
        from posttrain.recipe import build_trl_config

        ctx, cfg = self.ctx, self.cfg
        model_path = ctx.resolve_model(cfg.model)
        self.tokenizer = load_tokenizer(model_path, padding_side=self.padding_side,
                                        trust_remote_code=ctx.recipe.model.trust_remote_code)
        dataset = self.prepare_data(self.load_data())
        if cfg.max_samples is not None:
            dataset = dataset.select(range(min(cfg.max_samples, len(dataset))))
        extra = {**trainer_settings(ctx.recipe, cfg), **self.trl_overrides(),
                 **({} if "seed" in cfg.trl else {"seed": ctx.seed})}
        if ctx.recipe.model.trust_remote_code and "trust_remote_code" in trl_fields(cfg):
            extra.setdefault("trust_remote_code", True)  # TRL's own loads: GRPO's colocated vLLM (config, tokenizer)
        self.args = build_trl_config(cfg, checkpoint_dir(ctx), **{k: v for k, v in extra.items() if k not in cfg.trl})
        model = self.load_model(model_path)
        _log_partitioned(model, ctx)
        trainer_cls = self.trainer_class()
        with training_env(ctx.stage_dir, self.args.report_to):  # trackers log under DIR/<stage>/
            trainer = trainer_cls(model=model, args=self.args, processing_class=self.tokenizer,
                                  **self.trainer_kwargs(dataset))
            tracker = trainer.setup_moe_balance(cfg.moe_balance) if hasattr(trainer, "setup_moe_balance") else None
            if tracker is not None and tracker.enabled and cfg.moe_balance.bias_update_speed > 0:
                trainer.add_callback(Fp32RouterBiases())
            if hasattr(trainer, "setup_mtp"):
                trainer.setup_mtp(cfg.mtp)
            self.clock = StepClock()
            trainer.add_callback(self.clock)
            self.after_init(trainer, dataset)
            prepare_trainer(trainer, ctx, self.log_keys)
            ctx.log.info(self.describe(self.args, dataset))
            result = train_resumably(trainer, ctx)
        # TRL's SFTTrainer turns `output_router_logits` on in the config; saved so, the model crashes `generate`.
        without_router_logits(trainer.accelerator.unwrap_model(trainer.model))
        if not self.clock.started:  # training had finished earlier: its checkpoint holds the count
            self.clock.restore(trainer.state)
        metrics: dict[str, Any] = {"train_loss": round(result.training_loss, 5), "steps": result.global_step,
                                   TRAIN_SECONDS: round(self.clock.seconds, 2)}
        metrics.update(self.summary(trainer, result, dataset))  # before saving, which merges a LoRA adapter away
        out = save_final(trainer, self.tokenizer, ctx, base=model_path)
        if self.mix_counts:
            metrics["data_mix"] = self.mix_counts
        metrics["model"] = str(out)
        metrics.update(balance_summary(ctx))
        if tracker is not None and ctx.num_processes > 1:
            metrics["bias_sync_max_diff"] = trainer.moe_callback.bias_sync_max_diff
        return StageResult(metrics=metrics, outputs={"model": str(out)})


def _log_partitioned(model: Any, ctx: StageContext) -> None:
    """Say so when ZeRO-3 loaded the model partitioned (the TRL config, built first, switched that on)."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    if not is_deepspeed_zero3_enabled():
        return
    params = list(model.parameters())
    sharded = sum(p.ds_numel for p in params if hasattr(p, "ds_id"))
    whole = sum(p.ds_numel if hasattr(p, "ds_id") else p.numel() for p in params)
    ctx.log.info("ZeRO-3 loaded the model partitioned: %d of its %d parameters sharded over %d process(es)", sharded,
                 whole, ctx.num_processes)


def require_columns(dataset: Any, columns: list[str], stage: StageConfig, what: str, hint: str) -> None:
    """A `DataError` naming the missing columns, the ones there are, and what to set."""
    missing = [c for c in columns if c not in dataset.column_names]
    if missing:
        raise DataError(f"{what} for stage {stage.name!r} has no column(s) {missing}; it has "
                        f"{dataset.column_names} ({hint})")


def _length(args: Any) -> str:
    return f"{args.max_steps} steps" if args.max_steps > 0 else f"{args.num_train_epochs:g} epochs"


class MetricsFileCallback(TrainerCallback):
    """One flat JSON line per logging step in DIR/<stage>/metrics.jsonl, plus a readable log line."""

    def __init__(self, ctx: StageContext, keys: tuple[str, ...] = (LOSS, REWARD, MAX_VIOLATION)):
        self.ctx = ctx
        self.keys = keys

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
        if not logs or not state.is_world_process_zero:
            return
        row = {STEP: state.global_step, **{k: _jsonable(v) for k, v in logs.items()}}
        self.ctx.append_metrics(row)
        shown = [f"{k}={row[k]:.4g}" for k in self.keys if isinstance(row.get(k), float | int)]
        if shown:
            self.ctx.log.info("step %d/%d %s", state.global_step, state.max_steps, " ".join(shown))


class Fp32RouterBiases(TrainerCallback):
    """Stops a run whose router biases the distributed engine cast below float32: bf16 keeps 8 significant bits, so
    from a bias of 0.25 on its neighbours are 0.002 apart (from 1.0 on, 0.008) and γ = 0.001 steps round away:
    balancing would stop without a word."""

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        import torch

        from posttrain.training.moe_balance import find_routers

        biases = [r.e_score_correction_bias for _, r in find_routers(model) if hasattr(r, "e_score_correction_bias")]
        low = sorted({str(b.dtype) for b in biases} - {str(torch.float32)})
        if low:
            raise StageError(
                f"the MoE router biases (e_score_correction_bias) are {', '.join(low)} after the trainer set up its "
                "engine, too coarse for the aux-loss-free bias update. DeepSpeed keeps them float32 from 0.19.8 on "
                "(pip install 'posttrain[deepspeed]'); FSDP1's mixed precision casts buffers: use FSDP2 "
                "(recipes/accelerate/fsdp.yaml); or set moe_balance.bias_update_speed: 0")


class _Loaded(Exception):
    """The trainer has built its engine and loaded the checkpoint: nothing is left to train."""


class _StopOnceLoaded(TrainerCallback):
    """Ends `train()` before its first step (it would train one past `max_steps`), after the checkpoint is loaded."""

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        raise _Loaded


class GracefulStop(TrainerCallback):
    """Turns the first Ctrl-C/SIGTERM into 'save a checkpoint at the end of this step, then stop'."""

    def __init__(self) -> None:
        self.requested = False

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.requested:
            control.should_save = True
            control.should_training_stop = True


@contextlib.contextmanager
def graceful_stop(trainer: Any) -> Iterator[GracefulStop]:
    stopper = GracefulStop()
    trainer.add_callback(stopper)

    def handler(signum: int, frame: object) -> None:
        if stopper.requested:
            raise KeyboardInterrupt
        stopper.requested = True
        log.warning("stop requested: saving a checkpoint at the end of this step (signal again to stop now)")

    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for s in previous:
            signal.signal(s, handler)
    except ValueError:  # not the main thread: keep the default behaviour
        previous = {}
    try:
        yield stopper
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    if stopper.requested:
        raise KeyboardInterrupt


class _ProgressBar(ProgressCallback):
    """transformers' progress bar without its dump of every log dict (MetricsFileCallback logs a readable line)."""

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        pass


def prepare_trainer(trainer: Any, ctx: StageContext, keys: tuple[str, ...] = (LOSS, REWARD, MAX_VIOLATION)) -> None:
    """Readable logging: a progress bar, one log line per logging step, metrics.jsonl."""
    trainer.remove_callback(PrinterCallback)
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(_ProgressBar())
    trainer.add_callback(MetricsFileCallback(ctx, keys))


def train_resumably(trainer: Any, ctx: StageContext) -> Any:
    """`trainer.train()`, resuming from the stage's newest complete checkpoint if there is one; when that checkpoint
    is the last step, training is over and it is only loaded (the caller saves)."""
    main = trainer.accelerator.is_main_process
    last = last_complete_checkpoint(Path(trainer.args.output_dir), main)
    step = checkpoint_step(last) if last else 0
    if main:  # rows logged after the checkpoint are logged again; a torn last line goes
        dropped = trim_jsonl(ctx.stage_dir / METRICS_FILE,
                             lambda r: not isinstance(r.get(STEP), int) or r[STEP] <= step)
        if dropped:
            ctx.log.info("metrics.jsonl: dropped %d rows logged after step %d (they are logged again)", dropped, step)
    trainer.accelerator.wait_for_everyone()
    done = finished_state(last) if last else None
    if last and done is not None:
        ctx.log.info("training finished earlier (step %d of %d): loading %s to save the model", done.global_step,
                     done.max_steps, last)
        if is_sharded(trainer):  # only the engine DeepSpeed/FSDP build in train() can load their sharded checkpoint
            trainer.add_callback(_StopOnceLoaded())
            with contextlib.suppress(_Loaded):
                trainer.train(resume_from_checkpoint=str(last))
        else:
            trainer._load_from_checkpoint(str(last))
            restore_model_weights(trainer.model, str(last))
        trainer.state = done
        return load_train_result(ctx.stage_dir, done)
    if last:
        ctx.log.info("resuming from %s", last)
        if not is_sharded(trainer):  # a sharded checkpoint is in the engine's own layout, which it loads itself
            restore_model_weights(trainer.model, str(last))
    with graceful_stop(trainer):
        result = trainer.train(resume_from_checkpoint=str(last) if last else None)
        if main:
            save_train_result(ctx.stage_dir, result)
    return result


def restore_model_weights(model: Any, checkpoint: str) -> None:
    """Load a checkpoint's weights through `from_pretrained` before Trainer's own resume.

    transformers 5 saves fused MoE experts (DeepSeek-V3's `experts.gate_up_proj`) in the hub's per-expert
    layout, but `Trainer` resumes by loading that file raw: the fused keys are "missing" and the experts
    silently keep their *initial* weights. `from_pretrained` converts them back. (peft adapters are
    loaded by peft, which converts on its own.)
    """
    if hasattr(model, "peft_config") or not (Path(checkpoint) / "config.json").exists():
        return
    from posttrain.core.mtp import quiet_mtp_keys, restore_mtp

    with quiet_mtp_keys(model.config):
        loaded = type(model).from_pretrained(checkpoint, dtype=next(model.parameters()).dtype)
    restore_mtp(loaded, checkpoint)  # the MTP layers, which from_pretrained drops
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    if missing or unexpected:
        log.warning("checkpoint %s: %d missing, %d unexpected keys", checkpoint, len(missing), len(unexpected))


def checkpoint_dir(ctx: StageContext) -> Path:
    return ctx.stage_dir / CHECKPOINT_DIR


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item"):
        return value.item()
    return value


def balance_summary(ctx: StageContext) -> dict[str, Any]:
    """Mean MaxVio over the last third of logged steps (the figure DeepSeek-V3's balancing is judged by)."""
    rows = ctx.logged(MAX_VIOLATION)
    if not rows:
        return {}
    last_step = rows[-1][STEP]
    tail = [r[MAX_VIOLATION] for r in rows if r[STEP] > last_step * 2 / 3] or [rows[-1][MAX_VIOLATION]]
    return {"max_violation_last_third": round(sum(tail) / len(tail), 4),
            "max_violation_first": rows[0][MAX_VIOLATION]}
