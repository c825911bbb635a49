"""Accuracy against training seconds (posttrain/report/compute.py): eval stages placed at the summed student seconds
of the trainer stages behind their models, ± standard errors over prompts, and the comparison of several runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from posttrain.report import write_report
from posttrain.report.compute import compare_runs, compute_points
from posttrain.report.inputs import load_stages
from posttrain.stages import KINDS
from tests.posttrain.report.fake_run import png_info, write_jsonl

#: Held-out prompts of the fake evals: greedy right on the first `greedy` prompts, `sampled` of 4 samples right on
#: every prompt.
PROMPTS = 10


def fake_run(root: Path, extra_seconds: float = 0.0, opd_greedy: int = 8) -> Path:
    trainers = {  # name: (model, metrics)
        "sft_half": ("base", {"steps": 50, "train_seconds": 100.0 + extra_seconds}),
        "sft": ("sft_half", {"steps": 50, "train_seconds": 110.0}),
        "opd": ("base", {"steps": 40, "train_seconds": 260.0, "teacher_seconds": 50.0, "student_seconds": 210.0}),
        "sft_opd": ("sft_half", {"steps": 20, "train_seconds": 130.0, "student_seconds": 105.0}),
    }
    evals = {"eval_teacher": ("/models/teacher", 9, 3), "eval_sft": ("sft", 6, 2), "eval_opd": ("opd", opd_greedy, 3),
             "eval_sft_opd": ("sft_opd", 9, 3), "eval_sft_half": ("sft_half", 3, 1)}
    stages, report = [], {}
    for name, (model, metrics) in trainers.items():
        kind = "on_policy_distill" if "opd" in name else "sft"
        stages.append({"name": name, "kind": kind, "model": model})
        report[name] = {"kind": kind, "status": "done", "seconds": 1.0, "metrics": metrics}
    for name, (model, greedy, sampled) in evals.items():
        stages.append({"name": name, "kind": "eval", "model": model, "threshold": 1.0})
        report[name] = {"kind": "eval", "status": "done", "seconds": 1.0, "metrics": {"accuracy": greedy / PROMPTS}}
        write_jsonl(root / name / "samples.jsonl", [
            {"id": f"p{i}", "greedy_score": float(i < greedy), "sample_scores": [1.0] * sampled + [0.0] * (4 - sampled)}
            for i in range(PROMPTS)])
    root.mkdir(parents=True, exist_ok=True)
    (root / "resolved_recipe.yaml").write_text(yaml.safe_dump({"stages": stages}))
    (root / "report.json").write_text(json.dumps({"stages": report}))
    return root


def test_each_eval_sits_at_the_student_seconds_of_the_stages_behind_its_model(tmp_path: Path) -> None:
    trained, references = compute_points(load_stages(fake_run(tmp_path)))
    by_name = {p.name: p for p in trained}
    assert [p.name for p in references] == ["eval_teacher"]
    assert by_name["eval_sft"].chain == ["sft_half", "sft"]
    assert (by_name["eval_sft"].steps, by_name["eval_sft"].seconds) == (100, 210.0)
    # A distillation stage counts its student's seconds, not its teacher's.
    assert by_name["eval_opd"].seconds == 210.0 and by_name["eval_sft_opd"].seconds == 205.0
    point = by_name["eval_sft"]
    assert point.score("accuracy") == pytest.approx(0.6) and point.score("pass@1") == pytest.approx(0.5)
    assert point.stderr("accuracy") == pytest.approx(math.sqrt(0.6 * 0.4 / (PROMPTS - 1)))
    assert point.stderr("pass@1") == 0.0  # every prompt scored alike


def test_the_report_plots_and_tables_them(tmp_path: Path) -> None:
    run = fake_run(tmp_path)
    md = write_report(run, kinds=KINDS).read_text()
    assert "## Accuracy against training seconds" in md
    assert "| eval_sft_opd | sft_half → sft_opd | 70 | 205 | 90.0 % ± 10.0 | 75.0 % ± 0.0 |" in md
    assert "| eval_teacher | — | 0 | 0 | 90.0 % ± 10.0 | 75.0 % ± 0.0 |" in md
    described = png_info(run / "plots" / "accuracy_vs_seconds.png")["data"]
    assert set(described["points"]) == {"eval_sft_half", "eval_sft", "eval_opd", "eval_sft_opd"}


def test_several_runs_give_means_over_runs_and_paired_differences_on_each(tmp_path: Path) -> None:
    runs = [fake_run(tmp_path / "s0"), fake_run(tmp_path / "s1", extra_seconds=20, opd_greedy=6)]
    table = compare_runs(runs, tmp_path / "plot.png", reference="eval_sft")
    rows = {line.split(" | ")[0].lstrip("| "): line for line in table.splitlines()[2:]}
    assert rows["eval_opd"].startswith("| eval_opd | opd | 40 | 210, 210 | 70.0 % ± 10.0 | 75.0 % ± 0.0 | ")
    # Greedy against eval_sft on each run: +2 and 0 of 10 prompts, each with its paired standard error.
    assert "+20.0 pts ± 13.3, +0.0 pts ± 0.0" in rows["eval_opd"]
    assert rows["eval_sft"].split(" | ")[3] == "210, 230" and rows["eval_sft"].endswith("| — | — |")
    assert png_info(tmp_path / "plot.png")["data"]["points"]["eval_opd"] == 2
