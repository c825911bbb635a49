"""The `make demo` wall-time benchmark: from a recorded run, and from a fresh (small) run."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.demo import BUDGET_S, run
from tests.mini_recipes import distill_only


def _stage(run_dir: Path, name: str, status: str, seconds: float) -> None:
    (run_dir / name).mkdir(parents=True)
    (run_dir / name / "stage.json").write_text(json.dumps({"kind": "x", "status": status, "seconds": seconds}))


def test_recorded_run_sums_the_time_each_stage_took(tmp_path: Path) -> None:
    run_dir = tmp_path / "tiny-r1"
    # The last invocation skipped distill and sft (done earlier), ran grpo, and failed eval.
    _stage(run_dir, "distill", "done", 2.5)
    _stage(run_dir, "sft", "done", 180.0)
    _stage(run_dir, "grpo", "done", 250.5)
    _stage(run_dir, "eval", "failed", 4.0)
    (run_dir / "report.json").write_text(json.dumps({"stages": {
        "distill": {"kind": "distill", "status": "skipped", "seconds": 0.0, "metrics": {}},
        "sft": {"kind": "sft", "status": "skipped", "seconds": 0.0, "metrics": {}},
        "grpo": {"kind": "grpo", "status": "done", "seconds": 250.5, "metrics": {}},
        "eval": {"kind": "eval", "status": "failed", "seconds": 4.0, "metrics": {"error": "x"}},
    }}))
    result = run(run_dir=str(run_dir))
    (row,) = result["rows"]
    assert row["ours"] == 433.0 and row["reference"] == BUDGET_S and row["unit"] == "s"
    assert row["higher_is_better"] is False
    assert "unfinished: eval (failed)" in row["note"] and "slowest: grpo 250 s, sft 180 s, distill 2 s" in row["note"]
    assert result["details"]["stage_seconds"] == {"distill": 2.5, "sft": 180.0, "grpo": 250.5}


def test_no_recorded_run_is_skipped_with_a_reason(tmp_path: Path) -> None:
    result = run(run_dir=str(tmp_path / "nothing"))
    assert "rows" not in result and "run `make demo` first" in result["skipped"]


def test_fresh_run_times_the_whole_command(tmp_path: Path) -> None:
    recipe = tmp_path / "mini.yaml"
    recipe.write_text(distill_only(tmp_path / "unused", prompts=30, samples=2))
    result = run(fresh=True, recipe=str(recipe))
    (row,) = result["rows"]
    stages = result["details"]["stage_seconds"]
    assert list(stages) == ["distill"]
    # Wall time covers set-up (tokenizer, base model) as well as the stage.
    assert row["ours"] >= stages["distill"] > 0
    assert "fresh `posttrain run" in row["note"]
    assert not (tmp_path / "unused").exists()  # ran in a temporary folder, not the recipe's output_dir
