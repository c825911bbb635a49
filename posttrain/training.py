"""Plumbing every trainer stage shares: metrics.jsonl, graceful stop, resume, and the final save.

Ctrl-C / SIGTERM during training asks the trainer to save a checkpoint at the end of the current
step and stop; the stage then raises KeyboardInterrupt, and the next run resumes from that
checkpoint. A second signal stops at once (the last periodic checkpoint is used).
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback
from transformers.trainer_utils import get_last_checkpoint

from posttrain.stages.base import METRICS_FILE, MODEL_DIR, StageContext, read_jsonl

log = logging.getLogger("posttrain.training")

CHECKPOINT_DIR = "checkpoints"


class MetricsFileCallback(TrainerCallback):
    """One flat JSON line per logging step in DIR/<stage>/metrics.jsonl, plus a readable log line."""

    def __init__(self, ctx: StageContext, keys: tuple[str, ...] = ("loss", "reward", "moe/max_violation")):
        self.ctx = ctx
        self.keys = keys

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
        if not logs or not state.is_world_process_zero:
            return
        row = {"step": state.global_step, **{k: _jsonable(v) for k, v in logs.items()}}
        self.ctx.append_metrics(row)
        shown = [f"{k}={row[k]:.4g}" for k in self.keys if isinstance(row.get(k), float | int)]
        if shown:
            self.ctx.log.info("step %d/%d %s", state.global_step, state.max_steps, " ".join(shown))


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


def prepare_trainer(trainer: Any, ctx: StageContext) -> None:
    """Readable logging: a progress bar, one log line per logging step, metrics.jsonl."""
    trainer.remove_callback(PrinterCallback)
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(_ProgressBar())
    trainer.add_callback(MetricsFileCallback(ctx))


def train_resumably(trainer: Any, ctx: StageContext) -> Any:
    """`trainer.train()`, resuming from the stage's last checkpoint if there is one."""
    ckpt_dir = Path(trainer.args.output_dir)
    last = get_last_checkpoint(str(ckpt_dir)) if ckpt_dir.exists() else None
    if last:
        ctx.log.info("resuming from %s", last)
        restore_model_weights(trainer.model, last)
    with graceful_stop(trainer):
        return trainer.train(resume_from_checkpoint=last)


def restore_model_weights(model: Any, checkpoint: str) -> None:
    """Load a checkpoint's weights through `from_pretrained` before Trainer's own resume.

    transformers 5 saves fused MoE experts (DeepSeek-V3's `experts.gate_up_proj`) in the hub's per-expert
    layout, but `Trainer` resumes by loading that file raw: the fused keys are "missing" and the experts
    silently keep their *initial* weights. `from_pretrained` converts them back. (peft adapters are
    loaded by peft, which converts on its own.)
    """
    if hasattr(model, "peft_config") or not (Path(checkpoint) / "config.json").exists():
        return
    loaded = type(model).from_pretrained(checkpoint, dtype=next(model.parameters()).dtype)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    if missing or unexpected:
        log.warning("checkpoint %s: %d missing, %d unexpected keys", checkpoint, len(missing), len(unexpected))


def save_final(trainer: Any, tokenizer: Any, ctx: StageContext) -> Path:
    """Save the trained model (LoRA merged in) and its tokenizer to DIR/<stage>/model/."""
    out = ctx.stage_dir / MODEL_DIR
    model = trainer.accelerator.unwrap_model(trainer.model)
    if hasattr(model, "merge_and_unload"):
        model.save_pretrained(ctx.stage_dir / "adapter")
        model = model.merge_and_unload()
    model.config.use_cache = True  # trainers switch the KV cache off; generation from this model needs it
    if trainer.accelerator.is_main_process:
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
    trainer.accelerator.wait_for_everyone()
    return out


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
    path = ctx.stage_dir / METRICS_FILE
    rows = [r for r in read_jsonl(path) if isinstance(r.get("moe/max_violation"), float | int)] if path.exists() else []
    if not rows:
        return {}
    last_step = rows[-1]["step"]
    tail = [r["moe/max_violation"] for r in rows if r["step"] > last_step * 2 / 3] or [rows[-1]["moe/max_violation"]]
    return {"max_violation_last_third": round(sum(tail) / len(tail), 4),
            "max_violation_first": rows[0]["moe/max_violation"]}
