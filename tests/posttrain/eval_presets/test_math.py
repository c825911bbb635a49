"""Math presets (MATH-500, AIME 2024, GSM8K) on a few local rows in each hub set's shape, scored by `math`."""

from __future__ import annotations

from pathlib import Path

import pytest

from posttrain.core.errors import DataError
from posttrain.eval_presets import get_benchmark
from posttrain.eval_presets.math import MATH_PROMPT, gsm8k_answer
from tests.posttrain.eval_presets.helpers import run_preset, write_rows

#: Rows as HuggingFaceH4/MATH-500 has them (split test).
MATH500 = [
    {"problem": "What is $1+1$?", "solution": "We add: $1+1=\\boxed{2}$.", "answer": "2", "subject": "Prealgebra",
     "level": 1, "unique_id": "test/prealgebra/1.json"},
    {"problem": "Simplify $\\frac{2}{4}$.", "solution": "$\\frac{2}{4}=\\boxed{\\frac{1}{2}}$.",
     "answer": "\\frac{1}{2}", "subject": "Prealgebra", "level": 1, "unique_id": "test/prealgebra/2.json"},
    {"problem": "Solve $x+3=5$.", "solution": "$x=\\boxed{2}$.", "answer": "2", "subject": "Algebra", "level": 1,
     "unique_id": "test/algebra/3.json"},
]


def test_math500_rows_carry_r1s_prompt_and_the_answer_as_solution(tmp_path: Path) -> None:
    rows = get_benchmark("math500").rows(write_rows(tmp_path / "m.jsonl", MATH500), limit=2)
    assert [r["id"] for r in rows] == ["test/prealgebra/1.json", "test/prealgebra/2.json"]
    assert rows[1]["prompt"] == MATH_PROMPT.format(problem="Simplify $\\frac{2}{4}$.")
    assert rows[1]["prompt"].endswith("Please reason step by step, and put your final answer within \\boxed{}.")
    assert rows[1]["solution"] == "\\frac{1}{2}"


def test_math500_is_scored_by_the_math_reward_end_to_end(tmp_path: Path, tiny_base: Path) -> None:
    data = write_rows(tmp_path / "m.jsonl", MATH500)
    # Right on the first two (one as 0.5 for 1/2: math-verify's equivalence), wrong on the third.
    answers = {"test/prealgebra/1.json": "<think>1+1</think> \\boxed{2}",
               "test/prealgebra/2.json": "<think>half</think> \\boxed{0.5}",
               "test/algebra/3.json": "<think>5-3</think> \\boxed{3}"}
    entry, samples = run_preset(tmp_path, tiny_base, "math500", data, lambda r: answers[r["id"]])
    assert entry["status"] == "done", entry
    m = entry["metrics"]
    assert (m["accuracy"], m["pass@1"], m["prompts"], m["benchmark"]) == (pytest.approx(2 / 3, abs=1e-4),
                                                                         pytest.approx(2 / 3, abs=1e-4), 3, "math500")
    assert [s["greedy_score"] for s in samples] == [1.0, 1.0, 0.0]
    assert m["response_length_correct"] > 0 and m["response_length_wrong"] > 0


def test_aime24_reads_both_hub_spellings(tmp_path: Path) -> None:
    h4 = {"id": 60, "problem": "Find $x$.", "solution": "...", "answer": "204", "url": "u", "year": "2024"}
    maxwell = {"ID": "2024-I-2", "Problem": "Find $y$.", "Solution": "...", "Answer": 25}
    rows = get_benchmark("aime24").rows(write_rows(tmp_path / "a.jsonl", [h4, maxwell]))
    assert [(r["id"], r["solution"]) for r in rows] == [("60", "204"), ("2024-I-2", "25")]
    assert rows[1]["prompt"].startswith("Find $y$.\nPlease reason step by step")


def test_gsm8k_answer_is_the_number_after_the_hashes(tmp_path: Path) -> None:
    rows = [{"question": "Tom has 3 apples and buys 1,200 more. How many?",
             "answer": "3 + 1200 = <<3+1200=1203>>1203\n#### 1,203"},
            {"question": "Half of 10?", "answer": "10 / 2 = 5\n#### 5"}]
    out = get_benchmark("gsm8k").rows(write_rows(tmp_path / "g.jsonl", rows))
    assert [r["solution"] for r in out] == ["1203", "5"]
    assert [r["id"] for r in out] == ["gsm8k-0", "gsm8k-1"]
    assert gsm8k_answer("x\n#### -7.") == "-7"
    with pytest.raises(DataError, match="row 0 is not in the shape of 'openai/gsm8k'"):
        get_benchmark("gsm8k").rows(write_rows(tmp_path / "bad.jsonl", [{"question": "q", "answer": "no hashes"}]))


def test_without_the_network_the_hub_set_fails_with_what_to_do() -> None:
    with pytest.raises(DataError, match="set the eval stage's `data:` to a local"):
        get_benchmark("math500").rows()
