"""Multiple-choice presets (GPQA-Diamond, MMLU) and the answer-letter scorer, on local rows in the hub shapes."""

from __future__ import annotations

import doctest
from pathlib import Path

import pytest

import posttrain.eval_presets.choice
from posttrain.eval_presets import get_benchmark
from posttrain.eval_presets.choice import ChoiceReward, extract_letter, render_choices, shuffled_order
from rewards.registry import get_reward
from tests.posttrain.eval_presets.helpers import run_preset, write_rows


def gpqa_row(i: int) -> dict[str, str]:
    """A row as Idavidrein/gpqa (gpqa_diamond) has it: answers with stray whitespace, as in the hub set."""
    return {"Record ID": f"rec{i}", "Question": f"Which particle is number {i}?", "Correct Answer": f" right {i}\n",
            "Incorrect Answer 1": f"wrong {i}a", "Incorrect Answer 2": f"wrong {i}b ",
            "Incorrect Answer 3": f"wrong {i}c", "High-level domain": "Physics"}


@pytest.mark.parametrize(("text", "letter"), [
    ("Let me think.\nAnswer: C", "C"),
    ("answer: (b)", None),  # a lower-case letter is a word, not an option
    ("The correct answer is (B).", "B"),
    ("**Answer:** $D$", "D"),
    ("so the answer is \\boxed{A}", "A"),
    ("Final: $\\boxed{\\text{C}}$", "C"),
    ("Answer: A ... wait, no. Answer: D", "D"),
    ("<think>Answer: B</think>\nAnswer: C", "C"),  # only the answer after </think> counts
    ("<think>Answer: B</think> I cannot decide.", None),
    ("B", "B"),
    ("(C)", "C"),
    ("Answer: E", None),  # not one of ABCD
    ("The answer is a number between 1 and 3.", None),
    ("Answer: I think it is B", None),
    ("", None),
])
def test_extract_letter(text: str, letter: str | None) -> None:
    assert extract_letter(text) == letter


def test_extract_letter_takes_the_rows_letters() -> None:
    assert extract_letter("Answer: F", "ABCDEFGHIJ") == "F"
    assert extract_letter("Answer: F") is None


def test_choice_reward_has_trls_signature_and_says_why() -> None:
    reward = get_reward("posttrain.eval_presets.choice:ChoiceReward")
    completions = ["Answer: B", "Answer: C", "I give up", "Answer: A"]
    columns = {"answer": ["B", "B", "B", "Z"], "letters": ["ABCD"] * 4, "prompts": ["q"] * 4}
    assert reward(completions, **columns) == [1.0, 0.0, 0.0, None]
    scores, errors = reward.score_with_errors(completions, **columns)
    assert scores == [1.0, 0.0, 0.0, None] and errors[:2] == [None, None]
    assert "no answer letter" in errors[2] and "not one of the letters" in errors[3]
    assert ChoiceReward()(["(A)"], answer=["A"]) == [1.0]
    assert doctest.testmod(posttrain.eval_presets.choice).failed == 0


def test_gpqa_shuffles_each_question_the_same_way_every_time(tmp_path: Path) -> None:
    data = write_rows(tmp_path / "gpqa.jsonl", [gpqa_row(i) for i in range(8)])
    rows = get_benchmark("gpqa").rows(data)
    assert rows == get_benchmark("gpqa").rows(data)  # deterministic
    for i, row in enumerate(rows):
        lines = row["prompt"].splitlines()
        assert f"{row['answer']}) right {i}" in lines  # the gold letter's line holds the correct answer, stripped
        assert [line[:2] for line in lines[-4:]] == ["A)", "B)", "C)", "D)"]
        assert row["letters"] == "ABCD" and row["id"] == f"rec{i}"
        assert "'Answer: $LETTER'" in row["prompt"]
    assert len({r["answer"] for r in rows}) > 1  # not always A
    other = get_benchmark("gpqa", {"shuffle_seed": 1}).rows(data)
    assert [r["answer"] for r in other] != [r["answer"] for r in rows]
    assert shuffled_order(4, 0, "rec1") == shuffled_order(4, 0, "rec1") and sorted(shuffled_order(4, 5, "x")) == [
        0, 1, 2, 3]


def test_gpqa_end_to_end_scores_the_letter(tmp_path: Path, tiny_base: Path) -> None:
    data = write_rows(tmp_path / "gpqa.jsonl", [gpqa_row(i) for i in range(4)])

    def answer(row: dict) -> str:  # right on the first two, a wrong letter on the others
        right = row["id"] in ("rec0", "rec1")
        letter = row["answer"] if right else next(x for x in "ABCD" if x != row["answer"])
        return f"<think>Elimination.</think>\nAnswer: {letter}"

    entry, samples = run_preset(tmp_path, tiny_base, "gpqa", data, answer)
    assert entry["status"] == "done", entry
    assert (entry["metrics"]["accuracy"], entry["metrics"]["pass@1"]) == (0.5, 0.5)
    assert [s["greedy_score"] for s in samples] == [1.0, 1.0, 0.0, 0.0]


def test_mmlu_reads_an_index_or_a_letter(tmp_path: Path) -> None:
    rows = [{"question": "2+2?", "subject": "elementary_mathematics", "choices": ["3", "4", "5", "6"], "answer": 1},
            {"question": "Capital of France?", "subject": "geography", "choices": ["Paris", "Rome", "Oslo", "Bern"],
             "answer": "A"}]
    out = get_benchmark("mmlu").rows(write_rows(tmp_path / "mmlu.jsonl", rows))
    assert [(r["id"], r["answer"]) for r in out] == [("mmlu-elementary_mathematics-0", "B"), ("mmlu-geography-1", "A")]
    assert out[0]["prompt"].endswith("2+2?\n\nA) 3\nB) 4\nC) 5\nD) 6")
    assert get_benchmark("mmlu", {"subject": "anatomy"}).hub_config() == "anatomy"
    prompt, letters = render_choices("Pick one.", [str(i) for i in range(10)])
    assert letters == "ABCDEFGHIJ" and prompt.endswith("J) 9") and "one of ABCDEFGHIJ" in prompt
