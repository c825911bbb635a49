"""The tool-integrated recipe, CI-sized (`--quick`): every stage runs, tools run in the sandbox, the report shows it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from posttrain.recipe import load_recipe
from posttrain.stages import KINDS

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "tiny-tool.yaml"
WITH_TOOLS = ("distill", "eval_sft", "grpo", "eval_grpo")


def test_the_quick_variant_only_shrinks_the_run() -> None:
    full, quick = load_recipe(RECIPE, kinds=KINDS), load_recipe(RECIPE, quick=True, kinds=KINDS)
    assert full.stage_names() == quick.stage_names() and quick.output_dir != full.output_dir
    for name in ("eval_plain", "eval_sft_off", "eval_sft", "eval_grpo"):
        assert quick.stage(name).model_dump() == full.stage(name).model_dump()
    # The same tool everywhere it is used, and nowhere else: the plain model and the tool model's unrun calls.
    tools = {name: full.stage(name).tools for name in full.stage_names() if getattr(full.stage(name), "tools", None)}
    assert set(tools) == set(WITH_TOOLS) and len({json.dumps([t.model_dump() for t in v]) for v in tools.values()}) == 1
    assert full.tokenizer.train is not None and full.tokenizer.train.tool_calls
    # The two SFT stages differ only in their data: the same-sized model, trained the same way, with and without.
    sft, plain = full.stage("sft").model_dump(), full.stage("sft_plain").model_dump()
    assert {k for k in sft if sft[k] != plain[k]} == {"name", "data"}
    # Every eval scores the same held-out prompts.
    assert {full.stage(n).data for n in ("eval_plain", "eval_sft_off", "eval_sft", "eval_grpo")} == {"distill"}


@pytest.mark.slow
def test_every_stage_of_the_tool_recipe_runs_end_to_end(tmp_path: Path, python: str) -> None:
    out = tmp_path / "run"
    proc = subprocess.run([python, "-m", "posttrain.cli", "run", str(RECIPE), "--quick", "--output-dir", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    stages = json.loads((out / "report.json").read_text())["stages"]
    assert list(stages) == load_recipe(RECIPE, kinds=KINDS).stage_names()
    assert {e["status"] for e in stages.values()} == {"done"}, {n: e["status"] for n, e in stages.items()}
    assert stages["distill"]["metrics"]["tools"]["used"] > 0  # the teacher's calls ran in the sandbox
    rows = [json.loads(line) for line in (out / "distill" / "data.jsonl").read_text().splitlines()]
    used = [r for r in rows if len(r["completion"]) == 3]
    assert used and used[0]["completion"][1]["role"] == "tool"
    for name in ("eval_plain", "eval_sft_off", "eval_sft", "eval_grpo"):
        metrics = stages[name]["metrics"]
        assert 0 <= metrics["accuracy"] <= 1 and 0 <= metrics["pass@1"] <= 1 and metrics["prompts"] == 16
    for name in ("eval_sft", "eval_grpo"):
        assert "tools/used" in stages[name]["metrics"]
    assert stages["grpo"]["metrics"]["steps"] == 2
    logged = [json.loads(line) for line in (out / "grpo" / "metrics.jsonl").read_text().splitlines()]
    assert any("tools/used" in row for row in logged)
    text = (out / "report.md").read_text()
    assert "completions that called a tool" in text and (out / "plots" / "grpo_tools.png").exists()
