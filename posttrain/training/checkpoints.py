"""Trainer checkpoints that always resume.

A checkpoint is written under `checkpoints/incomplete/checkpoint-N` and renamed to
`checkpoints/checkpoint-N` once every process has written its part, so a checkpoint under its
final name is complete; a save cut off by SIGKILL or a full disk leaves only the staging folder,
which the next run drops. On resume the newest *complete* checkpoint is used (an incomplete one
left by older code is dropped with a warning), the stage's metrics.jsonl loses the rows logged
after it (they are logged again) and any torn last line, and a checkpoint at the final step means
training is over: the rerun only saves the model, it never trains a step past `max_steps`.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

from posttrain.core.run_folder import CHECKPOINT_STAGING, TRAIN_RESULT_FILE, write_json_atomic

log = logging.getLogger("posttrain.training")

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
TRAINER_STATE = "trainer_state.json"


class AtomicCheckpointMixin:
    """Put first in a trainer's bases: its checkpoints appear under their final name only when complete."""

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

        trainer: Any = self
        run_dir = Path(trainer._get_output_dir(trial=trial))
        staging = run_dir / CHECKPOINT_STAGING
        name = f"{PREFIX_CHECKPOINT_DIR}-{trainer.state.global_step}"
        if trainer.args.should_save:
            shutil.rmtree(staging / name, ignore_errors=True)
        trainer.accelerator.wait_for_everyone()
        # Everything Trainer (and TRL) writes for this checkpoint goes to the staging folder.
        trainer._get_output_dir = lambda trial=None: str(staging)
        try:
            super()._save_checkpoint(model, trial)  # type: ignore[misc]
        finally:
            del trainer._get_output_dir
        trainer.accelerator.wait_for_everyone()
        if trainer.args.should_save:
            final = run_dir / name
            shutil.rmtree(final, ignore_errors=True)
            (staging / name).rename(final)
            best = trainer.state.best_model_checkpoint
            if best and Path(best).parent == staging:
                trainer.state.best_model_checkpoint = str(run_dir / Path(best).name)
            rotate_checkpoints(output_dir=str(run_dir), save_total_limit=trainer.args.save_total_limit,
                               best_model_checkpoint=trainer.state.best_model_checkpoint, use_mtime=False)
        trainer.accelerator.wait_for_everyone()


def checkpoint_step(path: Path) -> int:
    m = _CHECKPOINT.match(path.name)
    return int(m.group(1)) if m else -1


def checkpoint_problem(path: Path) -> str | None:
    """Why a checkpoint folder cannot be resumed from, or None when it is complete."""
    try:
        json.loads((path / TRAINER_STATE).read_text())
    except (OSError, ValueError):
        return f"no readable {TRAINER_STATE}"
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")) and not any(path.glob("global_step*")):
        return "no model weights"
    return None


def last_complete_checkpoint(ckpt_dir: Path, is_main: bool = True) -> Path | None:
    """The newest complete checkpoint in `ckpt_dir`; incomplete ones are dropped (main process) with a warning."""
    if not ckpt_dir.is_dir():
        return None
    staging = ckpt_dir / CHECKPOINT_STAGING
    if staging.is_dir():
        for left in sorted(staging.iterdir()):
            log.warning("dropping %s: its save was cut off (killed, or the disk was full)", left)
        if is_main:
            shutil.rmtree(staging, ignore_errors=True)
    found = sorted((p for p in ckpt_dir.iterdir() if p.is_dir() and checkpoint_step(p) >= 0), key=checkpoint_step,
                   reverse=True)
    for path in found:
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        log.warning("dropping %s: it is incomplete (%s); resuming from an earlier checkpoint", path, problem)
        if is_main:
            shutil.rmtree(path, ignore_errors=True)
    return None


def finished_state(checkpoint: Path) -> Any | None:
    """The checkpoint's TrainerState when it was saved at the last step of training, else None."""
    from transformers import TrainerState

    state = TrainerState.load_from_json(str(checkpoint / TRAINER_STATE))
    return state if state.max_steps > 0 and state.global_step >= state.max_steps else None


def save_train_result(stage_dir: Path, result: Any) -> None:
    """What `trainer.train()` returned, so that a rerun that only saves the model reports the same figures."""
    write_json_atomic(stage_dir / TRAIN_RESULT_FILE, {"global_step": result.global_step,
                                                       "training_loss": result.training_loss,
                                                       "metrics": result.metrics})


def load_train_result(stage_dir: Path, state: Any) -> Any:
    """The recorded result of the training that ended at `state`, or one rebuilt from its logged losses."""
    from transformers.trainer_utils import TrainOutput

    try:
        raw = json.loads((stage_dir / TRAIN_RESULT_FILE).read_text())
        if raw["global_step"] == state.global_step:
            return TrainOutput(raw["global_step"], raw["training_loss"], raw["metrics"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    losses = [row["loss"] for row in state.log_history if isinstance(row.get("loss"), int | float)]
    return TrainOutput(state.global_step, sum(losses) / len(losses) if losses else float("nan"), {})
