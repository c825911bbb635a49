"""The GRPO-step and thread-layout benchmarks, quick, on the models of the session's quick demo run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import grpo_step, thread_layout
from benchmarks.run import normalise


def test_the_phase_clock_counts_the_outermost_call_of_a_phase_once() -> None:
    clock = grpo_step.PhaseClock()
    with clock.phase("generation"), clock.phase("generation"):  # an override calling TRL's own
        pass
    with clock.phase("backward"):
        pass
    assert [name for name, _, _ in clock.intervals] == ["generation", "backward"]
    start, end = clock.intervals[0][1] - 1.0, clock.intervals[-1][2] + 1.0
    split = clock.split(start, end)
    assert split["other"] == pytest.approx((end - start) - split["generation"] - split["backward"])
    assert set(split) == set(grpo_step.PHASES)


def test_quick_grpo_step_returns_a_row_per_phase(quick_demo: Path) -> None:
    import torch

    threads = torch.get_num_threads()
    result = grpo_step.run(quick=True, run_dir=str(quick_demo / "runs" / "tiny-r1-quick"))
    json.dumps(result)
    rows = {r["name"]: r for r in normalise("grpo_step", result)["rows"]}
    step = rows["GRPO step: our stage vs raw TRL GRPOTrainer"]
    assert step["ours"] > 0 and step["reference"] > 0 and step["unit"] == "s/step"
    phases = [rows[f"GRPO step, {p}"] for p in grpo_step.PHASES]
    for side in ("ours", "reference"):
        assert sum(r[side] for r in phases) == pytest.approx(step[side], abs=1e-3)
    for phase in ("generation", "reward scoring", "reference forward", "training forward", "backward", "optimizer"):
        assert rows[f"GRPO step, {phase}"]["ours"] > 0 and rows[f"GRPO step, {phase}"]["reference"] > 0, phase
    speed = rows["hf backend vs generate, SFT model's GRPO rollouts"]
    assert speed["ours"] > 0 and speed["reference"] > 0 and speed["unit"] == "tokens/s"
    assert torch.get_num_threads() == threads


def test_quick_thread_layout_measures_every_layout(quick_demo: Path) -> None:
    import torch

    threads = torch.get_num_threads()
    result = thread_layout.run(quick=True, run_dir=str(quick_demo / "runs" / "tiny-r1-quick"))
    rows = normalise("thread_layout", result)["rows"]
    assert [r["name"] for r in rows] == [f"GRPO step work, {name}" for name in thread_layout.LAYOUTS]
    assert all(r["ours"] > 0 and r["unit"] == "s/step" for r in rows)
    assert result["details"]["fastest"] in thread_layout.LAYOUTS
    assert torch.get_num_threads() == threads
