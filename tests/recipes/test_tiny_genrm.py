"""The model-based-rewards recipe: BT reward model + judge data -> GenRM by SFT -> GRPO with both, CI-sized."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from posttrain.recipe import load_recipe
from posttrain.stages import KINDS

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "tiny-genrm.yaml"


def test_the_recipe_wires_the_reward_models_into_grpo() -> None:
    recipe, quick = load_recipe(RECIPE, kinds=KINDS), load_recipe(RECIPE, quick=True, kinds=KINDS)
    assert recipe.stage_names() == quick.stage_names()
    genrm = recipe.stage("genrm")
    assert genrm.kind == "sft" and genrm.data == "reward_model" and genrm.data_file == "judge_data.jsonl"
    rewards = {r.name: r for r in recipe.stage("grpo").rewards}
    assert rewards["reward_model"].kwargs["model"] == "reward_model"
    assert rewards["genrm"].kwargs["model"] == "genrm"
    # The GenRM is asked with the template it was trained on.
    assert rewards["genrm"].kwargs["template"] == recipe.stage("reward_model").judge_data.template
    assert quick.stage("grpo").rewards == recipe.stage("grpo").rewards


@pytest.mark.slow
def test_every_stage_runs_end_to_end(tmp_path: Path, python: str) -> None:
    out = tmp_path / "run"
    proc = subprocess.run([python, "-m", "posttrain.cli", "run", str(RECIPE), "--quick", "--output-dir", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    stages = json.loads((out / "report.json").read_text())["stages"]
    assert {e["status"] for e in stages.values()} == {"done"}, {n: e["status"] for n, e in stages.items()}
    assert 0 <= stages["reward_model"]["metrics"]["pairwise_accuracy"] <= 1
    assert stages["reward_model"]["metrics"]["judge_examples"] == 200
    assert stages["genrm"]["metrics"]["rows"] == 200
    rows = [json.loads(line) for line in (out / "grpo" / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in rows if "reward" in r]
    assert logged and all("rewards/reward_model/mean" in r and "rewards/genrm/mean" in r for r in logged)
    assert "reward model" in (out / "report.md").read_text().lower()
