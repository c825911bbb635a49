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


def test_accuracy_against_response_length(tmp_path: Path) -> None:
    run = tmp_path / "lengths"
    run.mkdir()
    metrics = {
        "eval_base": {"accuracy": 0.0, "pass@1": 0.0, "response_length": 256.0, "response_length_wrong": 256.0,
                      "temperature": 0.6},
        "eval_sft": {"accuracy": 0.6, "pass@1": 0.5, "response_length": 80.5, "response_length_correct": 60.0,
                     "response_length_wrong": 101.0, "temperature": 0.6},
        "eval_old": {"accuracy": 0.7, "pass@1": 0.6},  # from before lengths were measured: left out
    }
    stages = [{"name": n, "kind": "eval"} for n in metrics]
    (run / "resolved_recipe.yaml").write_text(yaml.safe_dump({"stages": stages}))
    (run / "report.json").write_text(json.dumps({"stages": {
        n: {"kind": "eval", "status": "done", "seconds": 1.0, "metrics": m} for n, m in metrics.items()}}))
    mid_run = write_report(run, kinds=KINDS, plots=False).read_text()  # between stages: the table, no plot yet
    assert "| eval_sft | 50.0 % | 80.5 | 60 | 101 |" in mid_run and "Could not build" not in mid_run
    assert not (run / "plots").exists()
    md = write_report(run, kinds=KINDS).read_text()
    section = sections(md)["Accuracy against response length"]
    assert "| eval_sft | 50.0 % | 80.5 | 60 | 101 |" in section and "| eval_base | 0.0 % | 256 | — | 256 |" in section
    assert "eval_old" not in section and "at T = 0.6" in section
    info = png_info(run / "plots" / "accuracy_vs_length.png")
    assert info["data"]["points"] == {"eval_base": [256.0, 0.0], "eval_sft": [80.5, 0.5]}
    # The eval section's key figures carry the lengths too.
    assert "response length: 80.5 tokens on average (60 when correct, 101 when wrong)" in md


def test_no_lengths_no_section(full_report: BuiltReport) -> None:
    assert "Accuracy against response length" not in full_report.md
    assert not (full_report.run / "plots" / "accuracy_vs_length.png").exists()
