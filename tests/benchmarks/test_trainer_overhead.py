"""The trainer-overhead benchmark: our SFT/GRPO stages vs raw TRL trainers, on the real tiny model."""

from __future__ import annotations

import json

import pytest

from benchmarks.run import normalise
from benchmarks.trainer_overhead import QUICK, run, steady_step_times, step_clock


def test_steady_step_times_drop_the_warmup_steps() -> None:
    stamps = [10.0, 10.5, 11.25, 12.0, 13.0]  # ends of steps 1..5
    assert steady_step_times(stamps, warmup=2) == pytest.approx([0.75, 0.75, 1.0])  # steps 3, 4, 5
    assert steady_step_times(stamps, warmup=0) == pytest.approx([0.5, 0.75, 0.75, 1.0])  # step 1 has no start


def test_step_clock_restores_the_callback_handler() -> None:
    from transformers.trainer_callback import CallbackHandler

    original = CallbackHandler.on_step_end
    with step_clock() as stamps:
        assert CallbackHandler.on_step_end is not original
    assert CallbackHandler.on_step_end is original and stamps == []


def test_quick_run_returns_well_formed_rows() -> None:
    import torch

    threads = torch.get_num_threads()
    result = run(quick=True)
    json.dumps(result)
    table = normalise("trainer_overhead", result)
    assert [r["name"] for r in table["rows"]] == ["SFT step: our stage vs raw TRL SFTTrainer",
                                                  "GRPO step: our stage vs raw TRL GRPOTrainer"]
    for row in table["rows"]:
        assert row["ours"] > 0 and row["reference"] > 0 and row["unit"] == "s/step"
        assert not row["higher_is_better"] and row["ratio"] == pytest.approx(row["ours"] / row["reference"])
    for kind, timed in (("sft", QUICK.sft_timed), ("grpo", QUICK.grpo_timed)):
        measured = result["details"][kind]
        assert measured["ours"]["steps"] == measured["raw TRL"]["steps"] == timed * QUICK.repeats
        # Our stage really ran with its additions: metrics.jsonl rows with the MoE balancing figures.
        assert measured["ours"]["logged"]["metrics_rows"] >= 1 and measured["ours"]["logged"]["moe_max_violation"]
    assert torch.get_num_threads() == threads
