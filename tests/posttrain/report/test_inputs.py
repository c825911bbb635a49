"""Reading a run folder: every optional input may be missing or broken, and the report still gets written."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from posttrain.report import write_report
from posttrain.report.inputs import NOT_RUN, load_stages, read_metrics
from posttrain.stages import KINDS
from tests.posttrain.report.fake_run import png_info, sections


def test_missing_and_broken_inputs_do_not_crash(tmp_path: Path) -> None:
    run = tmp_path / "partial"
    run.mkdir()
    report = {"stages": {
        "distill": {"kind": "distill", "status": "done", "seconds": 2.0, "metrics": {}},
        "sft": {"kind": "sft", "status": "done", "seconds": 9.0, "metrics": {"baseline_metrics_file": "nowhere.jsonl"}},
        "grpo": {"kind": "grpo", "status": "failed", "seconds": 3.0, "metrics": {"error": "StageError: no model"}},
        "eval_x": {"kind": "eval", "status": "skipped", "seconds": 0.0, "metrics": {}},
        "custom": {"kind": "my_plugin", "status": "done", "seconds": 1.0, "metrics": {"widgets": 7}},
    }}
    (run / "report.json").write_text(json.dumps(report))
    (run / "distill").mkdir()
    (run / "distill" / "stats.json").write_text("{not json")
    # A run killed mid-write: a truncated last line, a non-numeric value, a NaN, loads of uneven length.
    (run / "sft").mkdir()
    (run / "sft" / "metrics.jsonl").write_text(
        json.dumps({"step": 10, "loss": 2.0, "moe/max_violation": 0.5, "moe/load/layer_1": [0.5, 0.5],
                    "moe/load/layer_2": [0.2, 0.3, 0.5]}) + "\n"
        + json.dumps({"step": 20, "loss": "oops", "moe/max_violation": float("nan")}) + "\n"
        + json.dumps({"step": 30, "loss": 1.5}) + "\n"
        + '{"step": 40, "lo'
    )
    md = write_report(run, kinds=KINDS).read_text()
    sec = {h.split(" ")[1]: text for h, text in sections(md).items() if h[0].isdigit()}
    assert "No accuracy-by-stage plot: no eval stage has reported accuracy yet" in md
    assert "No acceptance figures: stats.json is unreadable" in sec["distill"]
    assert "1 line(s) of metrics.jsonl were not JSON and were skipped" in sec["sft"]
    assert "2 (step 10) → 1.5 (step 30)" in sec["sft"]
    assert "baseline γ = 0 (no balancing): no nowhere.jsonl" in sec["sft"]
    assert "**failed** after 3.0 s: `StageError: no model`" in sec["grpo"]
    assert "- no accuracy reported" in sec["eval_x"]
    assert "| widgets | 7 |" in sec["custom"] and "No curves" not in sec["custom"]  # a plugin need not log
    assert "Could not build" not in md
    heat = png_info(run / "plots" / "sft_expert_load.png")["data"]
    assert heat["shape"] == [[2, 3]]



def test_a_metrics_log_keeps_the_finite_numbers_of_its_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n[1, 2]\n\n{"loss": NaN}\n{"step": 3, "loss": "x", "moe/load/layer_4": '
                    '[0.25, 0.75], "moe/max_violation/layer_4": 0.5}\n{"step"')
    log = read_metrics(path)
    assert log.problem is None and log.bad_lines == 2 and len(log.rows) == 3
    assert log.series("loss") == ([1.0], [2.0])  # NaN and a string are not figures
    assert log.max_violation_layers() == [(4, "moe/max_violation/layer_4")]
    assert log.last_loads() == (3, {4: [0.25, 0.75]})
    assert read_metrics(tmp_path / "none.jsonl").problem == "no none.jsonl"
    path.write_text("\n")
    assert read_metrics(path).problem == "metrics.jsonl has no rows"


def test_stages_come_in_recipe_order_then_the_others_report_json_has(tmp_path: Path) -> None:
    stages = [{"name": "b", "kind": "sft"}, {"name": "a", "kind": "eval"}]
    (tmp_path / "resolved_recipe.yaml").write_text(yaml.safe_dump({"stages": stages}))
    (tmp_path / "report.json").write_text(json.dumps({"stages": {
        "extra": {"kind": "counting", "status": "done", "seconds": "?", "metrics": [1]},
        "b": {"kind": "sft", "status": "done", "seconds": 2}}}))
    views = load_stages(tmp_path)
    assert [(v.name, v.kind, v.status, v.seconds) for v in views] == [
        ("b", "sft", "done", 2.0), ("a", "eval", NOT_RUN, None), ("extra", "counting", "done", None)]
    assert views[2].metrics == {} and views[0].dir == tmp_path / "b" and views[0].recipe_stages == ("b", "a", "extra")
