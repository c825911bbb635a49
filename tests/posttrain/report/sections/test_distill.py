"""The report's section on a distill stage (posttrain/report/sections/distill.py)."""

from __future__ import annotations

from tests.posttrain.conftest import BuiltReport
from tests.posttrain.report.fake_run import STATS, png_info, stage_sections


def test_acceptance_rate_and_every_rejection_reason(full_report: BuiltReport) -> None:
    sec = stage_sections(full_report.md)
    # Distill: acceptance rate and every rejection reason with its count and share.
    assert "Sampled 8000 completions for 2000 prompts" in sec["distill"]
    assert "**acceptance rate: 23.8 %**" in sec["distill"]
    assert "samples that passed the rewards: 63.0 %" in sec["distill"]
    assert "prompts with at least one kept answer: 95.0 %" in sec["distill"]
    total = sum(STATS["rejected"].values())
    for reason, count in STATS["rejected"].items():
        assert f"| {reason} | {count} | {100 * count / total:.1f} % |" in sec["distill"]

    distill = png_info(full_report.run / "plots" / "distill_distill.png")["data"]
    assert distill["bars"]["kept"] == 1900 and distill["bars"]["rejected: format"] == 300
    assert list(distill["histogram"]) == ["0/4", "1/4", "2/4", "3/4", "4/4"]  # in pass-rate order
    assert distill["histogram"] == STATS["pass_rate_histogram"]
