"""The default recipe, CI-sized (`--quick`): every stage of `make demo` runs and reports."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from posttrain.recipe import load_recipe
from posttrain.stages import KINDS

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "tiny-r1.yaml"


def test_the_quick_variant_only_shrinks_the_run() -> None:
    full, quick = load_recipe(RECIPE, kinds=KINDS), load_recipe(RECIPE, quick=True, kinds=KINDS)
    assert full.stage_names() == quick.stage_names()
    assert quick.stage("sft").trl["max_steps"] < full.stage("sft").trl["max_steps"]
    assert quick.output_dir != full.output_dir
    # What is measured stays the same: same rewards, same sampling, same seeds.
    for name in ("eval_base", "eval_sft", "eval_grpo"):
        assert quick.stage(name).model_dump() == full.stage(name).model_dump()
    assert quick.stage("grpo").rewards == full.stage("grpo").rewards
    # GRPO as DeepSeekMath runs it: k3 KL to the SFT model with β = 0.04, in the quick run too.
    assert full.stage("grpo").trl["beta"] == quick.stage("grpo").trl["beta"] == 0.04
    # GRPO trains on the prompts the SFT model solves sometimes, sampled as GRPO samples them.
    assert full.stage("grpo").data == quick.stage("grpo").data == "pass_rate"
    assert full.stage("pass_rate").model == "sft" and full.stage("pass_rate").keep.below == 1.0
    assert full.stage("pass_rate").sampling.temperature == full.stage("grpo").trl["temperature"]


@pytest.mark.slow
def test_every_stage_of_the_demo_runs_end_to_end(quick_demo: Path, python: str) -> None:
    """The README's `posttrain run recipes/tiny-r1.yaml --quick`, as a user types it (the shared `quick_demo`)."""
    out = quick_demo / load_recipe(RECIPE, quick=True, kinds=KINDS).output_dir
    report = json.loads((out / "report.json").read_text())
    stages = report["stages"]
    assert list(stages) == load_recipe(RECIPE, kinds=KINDS).stage_names()
    assert {e["status"] for e in stages.values()} == {"done"}, {n: e["status"] for n, e in stages.items()}
    for name in ("eval_base", "eval_sft", "eval_grpo"):
        metrics = stages[name]["metrics"]
        assert 0 <= metrics["accuracy"] <= 1 and 0 <= metrics["pass@1"] <= 1 and metrics["prompts"] == 24
    assert stages["grpo"]["metrics"]["steps"] == 2
    assert 0 < stages["pass_rate"]["metrics"]["kept"] <= stages["pass_rate"]["metrics"]["prompts"]
    assert (out / "grpo" / "model" / "config.json").exists()
    text = (out / "report.md").read_text()
    assert all(f"## {name}" in text or name in text for name in stages)
    assert "KL to the reference (β = 0.04, k3 estimator)" in text  # the report shows GRPO's KL
    assert (out / "plots").is_dir() and any((out / "plots").glob("*.png"))
    # A second run skips everything.
    again = subprocess.run([python, "-m", "posttrain.cli", "run", str(RECIPE), "--quick", "--output-dir", str(out)],
                           capture_output=True, text=True, timeout=300, cwd=quick_demo)
    assert again.returncode == 0, again.stderr[-2000:]
    assert {e["status"] for e in json.loads((out / "report.json").read_text())["stages"].values()} == {"skipped"}
