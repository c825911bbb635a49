"""Sections about several stages: accuracy by stage and MaxVio across stages."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from posttrain.report import write_report
from posttrain.stages import KINDS
from tests.posttrain.conftest import BuiltReport
from tests.posttrain.report.fake_run import SFT_STEPS, last_third_mean, png_info, sections, sft_rows, write_jsonl


def test_accuracy_by_stage(full_report: BuiltReport) -> None:
    run, md = full_report.run, full_report.md
    # Accuracy table: percentages and differences against the first eval stage, from the inputs.
    assert "| eval_sft | `x/sft/model` | 58.4 % (+58.4 pts) | 25.9 % (+25.9 pts) | 61.0 % |" in md
    assert "| eval_grpo | `x/grpo/model` | 57.8 % (+57.8 pts) | 33.2 % (+33.2 pts) | 66.0 % |" in md
    assert "over k = 4 samples" in md
    acc = png_info(run / "plots" / "accuracy_by_stage.png")["data"]
    assert acc["stages"] == ["eval_base", "eval_sft", "eval_grpo"]
    assert acc["bars"] == {"greedy accuracy": 3, "sampled pass@1": 3, "pass@k": 2}


def test_maxvio_across_stages(full_report: BuiltReport) -> None:
    comparison = png_info(full_report.run / "plots" / "maxvio_comparison.png")
    assert set(comparison["data"]["series"]) == {"sft (γ = 0.001)", "grpo (γ = 0.001)"}
    assert comparison["title"] == "MaxVio across stages" and "MoE load balancing across stages" in sections(
        full_report.md)


def test_two_sft_stages_are_compared(tmp_path: Path) -> None:
    run = tmp_path / "ablation"
    stages = [{"name": "sft_gamma0", "kind": "sft", "moe_balance": {"bias_update_speed": 0.0}},
              {"name": "sft", "kind": "sft", "moe_balance": {"bias_update_speed": 0.001}}]
    run.mkdir()
    (run / "resolved_recipe.yaml").write_text(yaml.safe_dump({"stages": stages}))
    (run / "report.json").write_text(json.dumps({"stages": {
        s["name"]: {"kind": "sft", "status": "done", "seconds": 1.0, "metrics": {}} for s in stages}}))
    write_jsonl(run / "sft_gamma0" / "metrics.jsonl", sft_rows(0.0))
    write_jsonl(run / "sft" / "metrics.jsonl", sft_rows(0.001))
    md = write_report(run, kinds=KINDS).read_text()
    assert "with the router-bias update off (γ = 0)" in md
    assert "No accuracy-by-stage plot: no eval stage in this recipe" in md
    info = png_info(run / "plots" / "maxvio_comparison.png")
    assert info["title"] == "MaxVio with and without balancing"
    assert info["data"]["series"] == {"sft_gamma0 (γ = 0)": len(SFT_STEPS), "sft (γ = 0.001)": len(SFT_STEPS)}
    comparison = sections(md)["MoE load balancing with and without the bias update"]
    assert f"sft_gamma0 (γ = 0): mean MaxVio over the last third of steps " \
           f"{last_third_mean(sft_rows(0.0), 'moe/max_violation'):.4g}" in comparison
