"""The tiny SFT + DPO recipe, CI-sized (`--quick`): distill -> SFT -> DPO -> eval runs and reports."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from posttrain.recipe import load_recipe
from posttrain.stages import KINDS

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "tiny-dpo.yaml"


def test_dpo_starts_from_the_very_sft_model_grpo_starts_from() -> None:
    """Same distill and SFT stages as tiny-r1 (a tiny-r1 run folder skips them), and the same measurement."""
    dpo, r1 = load_recipe(RECIPE, kinds=KINDS), load_recipe(ROOT / "recipes" / "tiny-r1.yaml", kinds=KINDS)
    for name in ("distill", "eval_base", "sft", "eval_sft"):
        assert dpo.stage(name).model_dump() == r1.stage(name).model_dump()
    assert dpo.model == r1.model and dpo.tokenizer == r1.tokenizer and dpo.seed == r1.seed
    assert dpo.stage("eval_dpo").model_dump(exclude={"name", "model"}) == \
        r1.stage("eval_grpo").model_dump(exclude={"name", "model"})
    assert dpo.stage("dpo").model == "sft" and dpo.stage("dpo").reference is None  # the reference: the SFT model


@pytest.mark.slow
def test_every_stage_of_the_dpo_recipe_runs_end_to_end(tmp_path: Path, python: str) -> None:
    out = tmp_path / "run"
    proc = subprocess.run([python, "-m", "posttrain.cli", "run", str(RECIPE), "--quick", "--output-dir", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    stages = json.loads((out / "report.json").read_text())["stages"]
    assert list(stages) == ["distill", "eval_base", "sft", "eval_sft", "dpo", "eval_dpo"]
    assert {e["status"] for e in stages.values()} == {"done"}, {n: e["status"] for n, e in stages.items()}
    dpo = stages["dpo"]["metrics"]
    assert dpo["steps"] == 4 and dpo["eval_pairs"] > 0 and 0 <= dpo["pairwise_accuracy"] <= 1
    for name in ("eval_sft", "eval_dpo"):
        assert 0 <= stages[name]["metrics"]["accuracy"] <= 1 and stages[name]["metrics"]["prompts"] == 24
    assert "## 5. dpo (`dpo`)" in (out / "report.md").read_text()
    assert (out / "plots" / "dpo_preferences.png").exists()
