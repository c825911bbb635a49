"""Experiment tracking: TRL's `report_to` in trainer stages and the runner's final metrics, read back from the
TensorBoard event files they write."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from data_pipelines.tasks.arithmetic import eval_prompts, solution_text, train_prompts
from posttrain.core.errors import MissingDependencyError, RecipeError
from posttrain.recipe import parse_recipe
from posttrain.run.runner import run_recipe
from posttrain.stages import KINDS
from posttrain.training import tracking

RECIPE = """\
output_dir: {out}
seed: 0
model: {{name_or_path: {base}}}
{report_to}
stages:
  - name: sft
    kind: sft
    data: {train}
    trl: {{max_steps: 4, per_device_train_batch_size: 8, logging_steps: 2, save_steps: 100, max_length: 48{trl}}}
  - name: eval_sft
    kind: eval
    model: sft
    data: {held_out}
    samples: 2
    sampling: {{max_new_tokens: 8}}
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("tracking")
    train, held_out = root / "train.jsonl", root / "eval.jsonl"
    train.write_text("".join(json.dumps({"prompt": r["prompt"], "completion": solution_text(r["a"], r["b"])}) + "\n"
                             for r in train_prompts(32, seed=1)))
    held_out.write_text("".join(json.dumps(r) + "\n" for r in eval_prompts(4, seed=3)))
    return train, held_out


def events(folder: Path) -> EventAccumulator:
    """The one invocation's events under `folder` (runs/<time>_<host>/), loaded."""
    (run,) = [p for p in folder.iterdir() if p.is_dir()]
    assert list(run.glob("events.out.tfevents.*"))
    acc = EventAccumulator(str(run))
    acc.Reload()
    return acc


def scalars(acc: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in acc.Scalars(tag)]


@pytest.mark.slow
def test_recipe_report_to_logs_training_curves_and_every_stages_final_metrics(
    tmp_path: Path, tiny_base: Path, data: tuple[Path, Path]
) -> None:
    train, held_out = data
    text = RECIPE.format(out=tmp_path, base=tiny_base, train=train, held_out=held_out,
                         report_to="report_to: [tensorboard]", trl="")
    report = run_recipe(parse_recipe(text, kinds=KINDS))
    assert [e["status"] for e in report["stages"].values()] == ["done", "done"]
    # TRL's TensorBoard callback, pointed at DIR/sft/runs/<time>_<host>/ (not inside checkpoints/).
    curves = events(tmp_path / "sft" / "runs")
    assert [step for step, _ in scalars(curves, "train/loss")] == [2, 4]
    rows = [json.loads(line) for line in (tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert scalars(curves, "train/loss")[-1][1] == pytest.approx(next(r["loss"] for r in rows if r["step"] == 4))
    assert not (tmp_path / "sft" / "checkpoints" / "runs").exists()
    # The runner's final metrics: <stage>/<metric> at the stage's position, eval stages also under eval/.
    final = events(tmp_path / "runs")
    eval_metrics = report["stages"]["eval_sft"]["metrics"]
    assert scalars(final, "eval/accuracy") == [(2, pytest.approx(eval_metrics["accuracy"]))]
    assert scalars(final, "eval_sft/response_length") == [(2, pytest.approx(eval_metrics["response_length"]))]
    assert scalars(final, "sft/train_loss") == [(1, pytest.approx(report["stages"]["sft"]["metrics"]["train_loss"]))]
    assert "TENSORBOARD_LOGGING_DIR" not in os.environ  # set while training only


@pytest.mark.slow
def test_a_stages_own_report_to_needs_no_recipe_setting(tmp_path: Path, tiny_base: Path,
                                                          data: tuple[Path, Path]) -> None:
    train, held_out = data
    text = RECIPE.format(out=tmp_path, base=tiny_base, train=train, held_out=held_out, report_to="",
                         trl=", report_to: [tensorboard]")
    run_recipe(parse_recipe(text, kinds=KINDS), only=["sft"])
    assert [step for step, _ in scalars(events(tmp_path / "sft" / "runs"), "train/loss")] == [2, 4]
    assert not (tmp_path / "runs").exists()  # no recipe-level trackers: no final metrics logged


def test_a_missing_tracker_stops_the_run_before_any_stage(tmp_path: Path, tiny_base: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(tracking.TRACKERS, "wandb", "no_such_tracker_module")
    text = f"output_dir: {tmp_path}\nmodel: {{name_or_path: {tiny_base}}}\nreport_to: [wandb]\n" \
           "stages: [{name: e, kind: eval, data: org/heldout}]\n"
    with pytest.raises(MissingDependencyError, match=r"posttrain\[tracking\]"):
        run_recipe(parse_recipe(text, kinds=KINDS))
    assert not (tmp_path / "e").exists()
    with pytest.raises(RecipeError, match="report_to"):
        parse_recipe(text.replace("[wandb]", "[mlflow]"), kinds=KINDS)


def test_names_and_the_environment_are_restored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert tracking.names("none") == [] and tracking.names("tensorboard") == ["tensorboard"]
    assert "tensorboard" in tracking.names("all")
    monkeypatch.setenv("WANDB_PROJECT", "mine")
    monkeypatch.delenv("WANDB_DIR", raising=False)
    with tracking.training_env(tmp_path / "sft", ["wandb", "tensorboard"]):
        assert os.environ["WANDB_PROJECT"] == "mine" and os.environ["WANDB_DIR"] == str(tmp_path)
        assert Path(os.environ["TENSORBOARD_LOGGING_DIR"]).parent == tmp_path / "sft" / "runs"
    assert "WANDB_DIR" not in os.environ and os.environ["WANDB_PROJECT"] == "mine"
