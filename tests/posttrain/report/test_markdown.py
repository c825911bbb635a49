"""What every stage's section has: the status line and every metric the stage reported."""

from __future__ import annotations

from pathlib import Path

from posttrain.report.inputs import NOT_RUN, MetricsLog, StageView
from posttrain.report.markdown import num, short_path, status_line, trend
from tests.posttrain.conftest import BuiltReport
from tests.posttrain.report.fake_run import stage_sections


def test_breakdowns_in_report_json_metrics_are_listed_one_level_deep(full_report: BuiltReport) -> None:
    sec = stage_sections(full_report.md)
    assert "| balance_baseline.label | γ = 0 (no balancing) |" in sec["sft"]


def _view(status: str, metrics: dict[str, object]) -> StageView:
    return StageView(name="s", kind="sft", status=status, seconds=2.0, metrics=metrics, config={},
                     run_dir=Path("run"), log=MetricsLog(Path("run/s/metrics.jsonl")))


def test_status_lines() -> None:
    assert status_line(_view("done", {})) == "Status: done in 2.0 s."
    assert status_line(_view("failed", {"error": "boom"})) == "Status: **failed** after 2.0 s: `boom`"
    assert status_line(_view("failed", {})).endswith("`no error message recorded`")
    assert status_line(_view(NOT_RUN, {})).startswith("Status: not run")
    assert "skipped in this invocation" in status_line(_view("skipped", {}))


def test_formats() -> None:
    assert num(3.0) == "3" and num(0.123456) == "0.1235" and num(7) == "7"
    assert trend([10.0, 20.0], [2.0, 1.5]) == "2 (step 10) → 1.5 (step 20)" and trend([], []) == "—"
    assert short_path("runs/tiny/sft/model") == "tiny/sft/model"
