"""The report's section on a grpo stage (posttrain/report/sections/grpo.py)."""

from __future__ import annotations

from tests.posttrain.conftest import BuiltReport
from tests.posttrain.report.fake_run import GRPO_STEPS, grpo_rows, png_info, stage_sections


def test_reward_per_component_and_training_dynamics(full_report: BuiltReport) -> None:
    sec = stage_sections(full_report.md)
    rows = grpo_rows()
    assert f"reward `math`: {rows[0]['rewards/math/mean']:.4g} (step 5)" in sec["grpo"]
    assert f"→ {rows[-1]['rewards/format/mean']:.4g} (step 180)" in sec["grpo"]
    dropped = sum(r["dynamic_sampling/groups_dropped"] for r in rows)
    assert f"groups dropped by dynamic sampling: {dropped} in total over {len(rows)}" in sec["grpo"]
    assert "KL to the reference: 0 (step 5)" in sec["grpo"]
    assert "mean completion length (tokens): 31 (step 5)" in sec["grpo"]

    rewards = png_info(full_report.run / "plots" / "grpo_rewards.png")["data"]["series"]
    assert rewards == {"format": len(GRPO_STEPS), "math": len(GRPO_STEPS), "reward (weighted sum)": len(GRPO_STEPS)}
