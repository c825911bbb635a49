from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_pipelines.judge_data import (
    default_verifiers,
    judged_examples,
    pair_rows,
    reference_answer,
    scripted_judgement,
    verdict_score,
    write_judge_examples,
)
from data_pipelines.tasks.arithmetic import solution_text
from rewards.genrm import GenRMReward, parse_score, render
from rewards.mix import RewardMix
from rewards.registry import get_reward

GOOD = solution_text(619, 35)  # ... \boxed{654}
SLIPPED = "<think>9+5=13; 1+3+1=5; 6+0=6</think>\nThe answer is \\boxed{653}."
UNBOXED = "<think>9+5=14; 1+3+1=5; 6+0=6</think>\nThe answer is 654."
UNCLOSED = "<think>9+5=14; 1+3+1=5; 6+0=6\nThe answer is \\boxed{654}."
PAIRS = [
    {"prompt": "Compute 619+35.", "chosen": GOOD, "rejected": SLIPPED, "rejected_reason": "reward_math"},
    {"prompt": "Compute 619+35.", "chosen": GOOD, "rejected": UNBOXED, "rejected_reason": "reward_format"},
    {"prompt": "Compute 619+35.", "chosen": GOOD, "rejected": UNCLOSED, "rejected_reason": "reward_format"},
]


def test_the_reference_is_the_solution_else_the_chosen_boxed_answer() -> None:
    assert reference_answer({"chosen": GOOD, "solution": "654"}) == "654"
    assert reference_answer({"chosen": GOOD}) == "654"
    assert reference_answer({"chosen": "no box here"}) is None
    rows = pair_rows(PAIRS[:1])
    assert [(r["completion"], r["solution"], r["source"]) for r in rows] == [(GOOD, "654", "chosen"),
                                                                             (SLIPPED, "654", "rejected")]


def test_verifiers_label_every_completion() -> None:
    rows = pair_rows(PAIRS)
    scored = RewardMix(default_verifiers()).score([r["completion"] for r in rows], {
        "prompts": [r["prompt"] for r in rows], "solution": [r["solution"] for r in rows]})
    scores, errors = [scored.row(i) for i in range(len(rows))], [scored.row_errors(i) for i in range(len(rows))]
    assert errors == [{}] * len(rows)
    assert scores[0] == {"math": 1.0, "format": 1.0}
    assert scores[1] == {"math": 0.0, "format": 1.0}  # slipped a digit
    assert scores[3]["format"] == 0.0  # unboxed: the strict format wants a box
    assert scores[5] == {"math": 0.0, "format": 0.0}  # <think> never closed: no answer at all


def test_verdict_score_is_the_weighted_mean_of_the_verifiers_that_judged() -> None:
    weights = {"math": 0.8, "format": 0.2}
    assert verdict_score({"math": 1.0, "format": 1.0}, weights, 10) == 10
    assert verdict_score({"math": 0.0, "format": 1.0}, weights, 10) == 2
    assert verdict_score({"math": 1.0, "format": 0.0}, weights, 5) == 4
    assert verdict_score({"math": None, "format": 1.0}, weights, 10) == 10  # math could not judge: format alone
    assert verdict_score({"math": None, "format": None}, weights, 10) is None
    assert verdict_score({"other": 1.0}, weights, 10) is None  # unweighted findings do not vote


@pytest.mark.parametrize(("completion", "scores", "reasoning", "verdict"), [
    (GOOD, {"math": 1.0, "format": 1.0}, "Answer 654, reference 654: 4:4= 5:5= 6:6= correct. Format correct.",
     "10/10"),
    (SLIPPED, {"math": 0.0, "format": 1.0}, "Answer 653, reference 654: 3:4! 5:5= 6:6= incorrect.", "2/10"),
    (UNBOXED, {"math": 1.0, "format": 0.0}, "No boxed answer, reference 654: correct.", "8/10"),
    (UNCLOSED, {"math": 0.0, "format": 0.0}, "No final answer (the reasoning never ends)", "0/10"),
])
def test_the_scripted_judge_explains_its_verdict(completion: str, scores: dict, reasoning: str, verdict: str) -> None:
    text = scripted_judgement(completion, "654", scores, {"math": 0.8, "format": 0.2})
    assert text.startswith(reasoning)
    assert text.endswith(f"\nVerdict: Score: {verdict}")
    assert parse_score(text) == pytest.approx(int(verdict.split("/")[0]) / 10)  # the genrm reward reads it back


def test_without_a_reference_the_judge_states_the_finding_alone() -> None:
    text = scripted_judgement(SLIPPED, "654", {"math": 0.0, "format": 1.0}, {"math": 0.8, "format": 0.2},
                              use_reference=False)
    assert text.startswith("Answer 653: incorrect. Format correct.") and "654" not in text  # no digit check
    with pytest.raises(ValueError, match="no verifier"):
        scripted_judgement(GOOD, None, {"math": None}, {"math": 1.0})


def test_examples_use_the_judge_prompt_the_genrm_reward_renders() -> None:
    examples = judged_examples(pair_rows(PAIRS[:1]), default_verifiers(), template="compact")
    assert [e["score"] for e in examples] == [1.0, 0.2]
    reward = GenRMReward(backend="openai", model="j", base_url="http://127.0.0.1:9/v1", template="compact")
    ((prompt, _),) = reward.judge_prompts("Compute 619+35.", SLIPPED, reference="654")
    assert examples[1]["prompt"] == prompt  # trained on exactly what it will be shown when scoring
    assert examples[1]["completion"].startswith(" Answer 653, reference 654: 3:4!")
    assert examples[1]["prompt"] == render("compact", prompt="Compute 619+35.", completion=SLIPPED,
                                           reference="654", scale="10")


def test_custom_verifiers_and_rows_no_verifier_can_judge(tmp_path: Path) -> None:
    math_only = [("math", get_reward("math", workers=0), 1.0)]
    rows = [{"prompt": "Compute 1+1.", "completion": "<think>1+1=2</think> \\boxed{2}", "solution": "2"},
            {"prompt": "Compute 1+2.", "completion": "<think>1+2=3</think> \\boxed{3}", "solution": None}]
    path = tmp_path / "j.jsonl"
    assert write_judge_examples(rows, path, verifiers=math_only, scale=5) == 1  # no solution: math cannot judge
    (example,) = [json.loads(line) for line in path.read_text().splitlines()]
    assert example["completion"] == " Answer 2, reference 2: 2:2= correct.\nVerdict: Score: 5/5"


def test_the_file_is_deterministic_capped_and_written_atomically(tmp_path: Path) -> None:
    rows = pair_rows(PAIRS * 4)
    a, b, c = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "c.jsonl"
    assert write_judge_examples(rows, a, seed=1) == 24
    write_judge_examples(rows, b, seed=1)
    write_judge_examples(rows, c, seed=2, max_examples=5)
    assert a.read_text() == b.read_text()
    assert len(c.read_text().splitlines()) == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl", "b.jsonl", "c.jsonl"]  # no .tmp left
    scores = [json.loads(line)["score"] for line in a.read_text().splitlines()]
    assert sorted(set(scores)) == [0.0, 0.2, 0.8, 1.0]
