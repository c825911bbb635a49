"""The on-policy distillation reproduction (recipes/tiny-opd.yaml): its arms are what the comparison says they are,
and, CI-sized, every stage runs after `tiny-r1.yaml --quick` has built the teacher, as the recipe tells a user to."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from posttrain.core.tiny import TINY_DEFAULTS
from posttrain.recipe import load_recipe
from posttrain.stages import KINDS

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "tiny-opd.yaml"
R1 = ROOT / "recipes" / "tiny-r1.yaml"
#: tiny-r1's stages the teacher needs (its GRPO stage reads the reward model and the pass-rate filter).
TEACHER_STAGES = "distill,sft,reward_model,pass_rate,grpo"
EVALS = ["eval_teacher", "eval_sft_half", "eval_sft", "eval_opd_half", "eval_opd", "eval_sft_opd", "eval_sft_grpo",
         "eval_more_sft", "eval_more_opd", "eval_more_grpo"]


@pytest.mark.parametrize("quick", [False, True])
def test_the_teacher_is_tiny_r1s_grpo_model_and_the_student_a_smaller_v3_on_its_tokenizer(quick: bool) -> None:
    opd, r1 = load_recipe(RECIPE, quick=quick, kinds=KINDS), load_recipe(R1, quick=quick, kinds=KINDS)
    teacher = f"{r1.output_dir}/grpo/model"  # both relative to where they run
    assert opd.tokenizer.name_or_path == teacher and opd.model.tiny is not None
    assert opd.stage("distill").teacher.model == opd.stage("eval_teacher").model == teacher  # type: ignore[union-attr]
    for name in ("opd_half", "opd", "sft_opd", "more_opd"):
        assert opd.stage(name).teacher == teacher
    assert opd.model.tiny["num_hidden_layers"] < TINY_DEFAULTS["num_hidden_layers"]
    assert opd.model.tiny["n_routed_experts"] < TINY_DEFAULTS["n_routed_experts"]


def test_every_arm_trains_in_two_halves_and_is_measured_alike() -> None:
    opd = load_recipe(RECIPE, kinds=KINDS)
    trainers = ("sft_half", "sft", "opd_half", "opd", "sft_opd", "sft_grpo", "more_sft", "more_opd", "more_grpo")
    assert {name: opd.stage(name).model for name in trainers} == {
        "sft_half": None, "sft": "sft_half", "opd_half": None, "opd": "opd_half", "sft_opd": "sft_half",
        "sft_grpo": "sft_half", "more_sft": "sft", "more_opd": "sft", "more_grpo": "sft"}
    assert opd.stage("sft").trl == opd.stage("sft_half").trl == opd.stage("more_sft").trl  # one half's budget
    assert opd.stage("opd").trl == opd.stage("opd_half").trl == opd.stage("sft_opd").trl == opd.stage("more_opd").trl
    assert opd.stage("more_grpo").trl == opd.stage("sft_grpo").trl
    assert opd.stage("sft_half").trl["lr_scheduler_type"] == "constant_with_warmup"  # halves of one schedule
    r1_eval = load_recipe(R1, kinds=KINDS).stage("eval_grpo").model_dump(exclude={"name", "model"})
    for name in EVALS:  # tiny-r1's held-out prompts, sampled and scored as tiny-r1's evals are
        assert opd.stage(name).model_dump(exclude={"name", "model"}) == r1_eval, name


@pytest.mark.slow
def test_every_stage_runs_end_to_end_after_tiny_r1_quick(tmp_path: Path, python: str) -> None:
    teacher = subprocess.run([python, "-m", "posttrain.cli", "run", str(R1), "--quick", "--stages", TEACHER_STAGES],
                             cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert teacher.returncode == 0, teacher.stderr[-4000:]
    proc = subprocess.run([python, "-m", "posttrain.cli", "run", str(RECIPE), "--quick"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = tmp_path / "runs" / "tiny-opd-quick"
    stages = json.loads((out / "report.json").read_text())["stages"]
    assert list(stages) == load_recipe(RECIPE, kinds=KINDS).stage_names()
    assert {e["status"] for e in stages.values()} == {"done"}, {n: e["status"] for n, e in stages.items()}
    for name in EVALS:
        assert 0 <= stages[name]["metrics"]["pass@1"] <= 1 and stages[name]["metrics"]["prompts"] == 16
    for name in ("opd_half", "opd", "sft_opd", "more_opd"):
        m = stages[name]["metrics"]
        assert m["steps"] == 2 and 0 < m["student_seconds"] < m["train_seconds"]
        assert 0 <= m["heldout_agreement_last"] <= 1 and m["heldout_reverse_kl_last"] > 0
    assert stages["sft"]["metrics"]["steps"] == stages["sft_half"]["metrics"]["steps"] == 4
    text = (out / "report.md").read_text()
    assert "## Accuracy against training seconds" in text and "| eval_sft_opd | sft_half → sft_opd | 6 |" in text
    assert (out / "plots" / "accuracy_vs_seconds.png").exists()
