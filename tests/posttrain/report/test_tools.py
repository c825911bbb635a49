"""The report on a run that used tools: GRPO's tool curves over its steps, each eval's tool figures."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from posttrain.report import write_report
from posttrain.stages import KINDS
from tests.posttrain.report.fake_run import png_info, stage_sections, write_jsonl

STEPS = list(range(5, 105, 5))


def tool_rows() -> list[dict]:
    rows = []
    for i, step in enumerate(STEPS):
        used = 0.5 + 0.5 * i / (len(STEPS) - 1)
        rows.append({"step": step, "loss": 0.01, "reward": used, "rewards/math/mean": used, "step_time": 2.0,
                     "tools/used": round(used, 4), "tools/calls_per_completion": round(used, 4),
                     "tools/turns": 1 + used, "tools/error_rate": 0.02, "tools/accuracy_with_call": 0.95,
                     "tools/accuracy_without_call": 0.05, "tools/seconds": 0.1})
    return rows


def test_the_report_shows_how_the_tools_were_used(tmp_path: Path) -> None:
    run = tmp_path / "tiny-tool"
    stages = [{"name": "grpo", "kind": "grpo", "model": "sft", "rewards": [{"name": "math"}],
               "tools": [{"name": "python"}]},
              {"name": "eval_grpo", "kind": "eval", "model": "grpo", "tools": [{"name": "python"}]}]
    run.mkdir()
    (run / "resolved_recipe.yaml").write_text(yaml.safe_dump({"output_dir": str(run), "stages": stages}))
    evaluation = {"accuracy": 0.9, "pass@1": 0.88, "tools/used": 0.97, "tools/calls_per_completion": 0.97,
                  "tools/turns": 1.97, "tools/error_rate": 0.01, "tools/accuracy_with_call": 0.9,
                  "tools/accuracy_without_call": 0.1}
    report = {"stages": {"grpo": {"kind": "grpo", "status": "done", "seconds": 100.0, "metrics": {"steps": 100}},
                         "eval_grpo": {"kind": "eval", "status": "done", "seconds": 10.0, "metrics": evaluation}}}
    (run / "report.json").write_text(json.dumps(report))
    write_jsonl(run / "grpo" / "metrics.jsonl", tool_rows())
    sec = stage_sections(write_report(run, kinds=KINDS).read_text())
    assert "completions that called a tool: 0.5 (step 5) → 1 (step 100)" in sec["grpo"]
    assert "accuracy without a call: 0.05 (step 5) → 0.05 (step 100)" in sec["grpo"]
    assert "time inside tool calls: 5.0 % of a step on average" in sec["grpo"]
    plot = png_info(run / "plots" / "grpo_tools.png")["data"]["series"]
    assert plot == {k: len(STEPS) for k in ("tools/used", "tools/calls_per_completion", "tools/error_rate",
                                            "tools/accuracy_with_call", "tools/accuracy_without_call")}
    assert "completions that called a tool: 97.0 %; tool calls per completion 0.97, turns 1.97" in sec["eval_grpo"]
    assert "sampled accuracy: 90.0 % with a tool call, 10.0 % without" in sec["eval_grpo"]
