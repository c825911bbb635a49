"""Experiment tracking: training curves and every stage's final figures in TensorBoard, Weights & Biases or trackio.

Training curves go through TRL/transformers' own integrations (`report_to`); posttrain only points them at
the run folder and names the run. The runner adds what those integrations do not know: each stage's final
metrics (report.json: accuracy, pass@1, response length, reward-model accuracy, ...), logged once per
invocation with step = the stage's position in the recipe, so a tracker shows accuracy across stages.

    report_to: [tensorboard]          # recipe level: every trainer stage's curves, and the final metrics
    stages: [{..., trl: {report_to: [wandb]}}]   # one trainer stage's curves (wins over the recipe's)

TensorBoard writes `DIR/<stage>/runs/<time>_<host>/` (curves) and `DIR/runs/<time>_<host>/` (final
metrics): `tensorboard --logdir DIR` shows them all. W&B writes under `DIR/wandb/` (project `WANDB_PROJECT`,
default posttrain); trackio uses project `posttrain` unless `trl: {project: ...}` (or `TRACKIO_PROJECT` for
the final metrics) says otherwise. Install them with the `tracking` extra.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import socket
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from posttrain.core.errors import MissingDependencyError
from posttrain.core.run_folder import TRACKING_DIR

if TYPE_CHECKING:
    from posttrain.core.run_folder import RunReport
    from posttrain.recipe import Recipe, StageConfig

log = logging.getLogger("posttrain.training.tracking")

#: Trackers a recipe may name, with the module each needs.
TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio"}
PROJECT = "posttrain"


def names(report_to: Any) -> list[str]:
    """TRL's spellings of `report_to` ("none", "all", a name, a list) as a list of tracker names."""
    if report_to in (None, "none", ["none"]):
        return []
    if report_to in ("all", ["all"]):
        return [n for n, module in TRACKERS.items() if importlib.util.find_spec(module) is not None]
    return [report_to] if isinstance(report_to, str) else list(report_to)


def check_installed(report_to: list[str]) -> None:
    """Fail before any stage runs when a named tracker is missing, saying how to install it."""
    missing = [n for n in report_to if n in TRACKERS and importlib.util.find_spec(TRACKERS[n]) is None]
    if missing:
        raise MissingDependencyError(f"report_to: {', '.join(missing)} not installed: pip install "
                                     f"'posttrain[tracking]' (or {' '.join(TRACKERS[n] for n in missing)})")


def invocation_dir(parent: Path) -> Path:
    """`parent/runs/<time>_<host>`: transformers' (and PyTorch's) own naming, one folder per invocation."""
    return parent / TRACKING_DIR / f"{datetime.now():%b%d_%H-%M-%S}_{socket.gethostname()}"


# --------------------------------------------------------------------------------------------------
# Trainer stages


def trainer_settings(recipe: Recipe, stage: StageConfig) -> dict[str, Any]:
    """TRL options a trainer stage gets from the recipe (its own `trl:` options win): the recipe's trackers, a run
    name (`<run folder>/<stage>`) and trackio's project."""
    from posttrain.recipe import trl_fields

    settings: dict[str, Any] = {"run_name": f"{Path(recipe.output_dir).name}/{stage.name}"}
    if recipe.report_to:
        settings["report_to"] = list(recipe.report_to)
    # `project` (trackio's) is a TRL option since transformers 5.x
    if "trackio" in names(stage.trl.get("report_to", recipe.report_to)) and "project" in trl_fields(stage):
        settings["project"] = os.environ.get("TRACKIO_PROJECT", PROJECT)
    return settings


@contextlib.contextmanager
def training_env(stage_dir: Path, report_to: Any) -> Iterator[None]:
    """While a trainer is built and trains: TensorBoard logs to DIR/<stage>/runs/<time>_<host> (transformers 5 reads
    `TENSORBOARD_LOGGING_DIR`; it has no `logging_dir` option any more), W&B under DIR/ in project posttrain.
    Variables the user set are left alone; the rest are restored afterwards."""
    trackers = names(report_to)
    wanted: dict[str, str] = {}
    if "tensorboard" in trackers:
        wanted["TENSORBOARD_LOGGING_DIR"] = str(invocation_dir(stage_dir))
    if "wandb" in trackers:
        wanted.update(WANDB_DIR=str(stage_dir.parent), WANDB_PROJECT=PROJECT)
    added = {k: v for k, v in wanted.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


# --------------------------------------------------------------------------------------------------
# The runner: every stage's final metrics


def log_final_metrics(recipe: Recipe, report: RunReport) -> None:
    """Log each finished stage's scalar metrics with the recipe's trackers: `<stage>/<metric>` at step = the stage's
    position in the recipe, and for eval stages also `eval/<metric>` (one curve across the eval stages)."""
    if not recipe.report_to:
        return
    order = recipe.stage_names()
    steps = []
    for name, entry in report.stages.items():
        if entry.status in ("done", "skipped") and name in order:
            scalars = {k: float(v) for k, v in entry.metrics.items()
                       if isinstance(v, int | float) and not isinstance(v, bool)}
            steps.append((order.index(name) + 1, name, entry.kind, scalars))
    if not steps:
        return
    run_dir = Path(recipe.output_dir)
    for tracker in names(recipe.report_to):
        try:
            _LOGGERS[tracker](run_dir, sorted(steps))
        except Exception:  # tracking is a view of the run; never lose a run over it
            log.exception("could not log the final metrics to %s", tracker)


Steps = list[tuple[int, str, str, dict[str, float]]]


def _tagged(step: tuple[int, str, str, dict[str, float]]) -> dict[str, float]:
    _, name, kind, scalars = step
    tags = {f"{name}/{k}": v for k, v in scalars.items()}
    if kind == "eval":
        tags.update({f"eval/{k}": v for k, v in scalars.items()})
    return tags


def _tensorboard(run_dir: Path, steps: Steps) -> None:
    from torch.utils.tensorboard import SummaryWriter

    path = invocation_dir(run_dir)
    writer = SummaryWriter(log_dir=str(path))
    try:
        writer.add_text("stages", "  \n".join(f"{i}. {name} ({kind})" for i, name, kind, _ in steps))
        for step in steps:
            for tag, value in _tagged(step).items():
                writer.add_scalar(tag, value, step[0])
    finally:
        writer.close()
    log.info("final metrics of %d stages logged to TensorBoard in %s", len(steps), path)


def _wandb(run_dir: Path, steps: Steps) -> None:
    import wandb

    run = wandb.init(project=os.environ.get("WANDB_PROJECT", PROJECT), name=f"{run_dir.name}/stages",
                     dir=os.environ.get("WANDB_DIR", str(run_dir)), job_type="stages")
    try:
        for step in steps:
            run.log(_tagged(step), step=step[0])
    finally:
        run.finish()


def _trackio(run_dir: Path, steps: Steps) -> None:
    import trackio

    trackio.init(project=os.environ.get("TRACKIO_PROJECT", PROJECT), name=f"{run_dir.name}/stages")
    try:
        for step in steps:
            trackio.log(_tagged(step), step=step[0])
    finally:
        trackio.finish()


_LOGGERS = {"tensorboard": _tensorboard, "wandb": _wandb, "trackio": _trackio}
