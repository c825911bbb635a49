from __future__ import annotations

import json

from benchmarks.math_reward import PROBLEMS, make_rows, run
from rewards.math import verify_answer


def test_rows_are_grpo_shaped_and_their_truth_is_right() -> None:
    rows = make_rows(prompts=len(PROBLEMS), group=4, seed=3)
    assert len(rows) == 4 * len(PROBLEMS)
    assert 0.3 < sum(r.correct for r in rows) / len(rows) < 0.8  # mixed correct and wrong
    assert any("</think>" not in r.completion for r in rows)  # some cut off inside the reasoning
    assert any("\\boxed" not in r.completion.rpartition("</think>")[2] for r in rows if "</think>" in r.completion)
    import random

    rng = random.Random(0)
    for make in PROBLEMS:  # the equivalent forms are equal and the wrong ones are not, per math-verify
        gold, right, wrong = make(rng)
        assert all(verify_answer(gold, form, True) == 1.0 for form in right), (gold, right)
        assert all(verify_answer(gold, form, True) == 0.0 for form in wrong), (gold, wrong)


def test_run_returns_the_benchmark_result_shape() -> None:
    result = run(quick=True, prompts=4, group=4, prompts_per_step=2)
    json.dumps(result)
    names = [row["name"] for row in result["rows"]]
    assert names[0] == "math reward vs plain math-verify loop"
    for row in result["rows"]:
        assert row["ours"] > 0 and row["reference"] > 0 and row["unit"] in ("rows/s", "fraction")
    accuracy = result["details"]["accuracy"]
    assert accuracy["ours"] == 1.0 and accuracy["ours"] >= accuracy["plain"]
    assert result["params"]["rows"] == 16
