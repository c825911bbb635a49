"""Math presets, scored by the `math` reward (the final `\\boxed{}` answer after `</think>` against `solution`).

- `math500`: MATH-500 (`HuggingFaceH4/MATH-500`, split test: `problem`, `answer`, `unique_id`).
- `aime24`: AIME 2024 (`HuggingFaceH4/aime_2024`, split train: `problem`, `answer`, `id`; the
  `Maxwell-Jia/AIME_2024` spelling `Problem`, `Answer`, `ID` is read too).
- `gsm8k`: GSM8K (`openai/gsm8k`, config main, split test: `question`, `answer` whose final number
  follows `####`).

The prompt is DeepSeek-R1's recommended one: the problem, then "Please reason step by step, and put
your final answer within \\boxed{}."
"""

from __future__ import annotations

from typing import Any

from posttrain.eval_presets import Benchmark, field

#: DeepSeek-R1's usage recommendation for math problems.
MATH_PROMPT = "{problem}\nPlease reason step by step, and put your final answer within \\boxed{{}}."


def math_row(row_id: Any, problem: Any, answer: Any) -> dict[str, Any]:
    return {"id": str(row_id), "prompt": MATH_PROMPT.format(problem=str(problem).strip()),
            "solution": str(answer).strip()}


class _MathBenchmark(Benchmark):
    def rewards(self) -> list[dict[str, Any]]:
        return [{"name": "math"}]


class Math500(_MathBenchmark):
    name = "math500"
    title = "MATH-500"
    source = "HuggingFaceH4/MATH-500"

    def convert(self, row: dict[str, Any], index: int) -> dict[str, Any]:
        return math_row(row.get("unique_id") or f"math500-{index}", field(row, "problem"), field(row, "answer"))


class AIME24(_MathBenchmark):
    name = "aime24"
    title = "AIME 2024"
    source = "HuggingFaceH4/aime_2024"
    split = "train"

    def convert(self, row: dict[str, Any], index: int) -> dict[str, Any]:
        row_id = row.get("id", row.get("ID", f"aime24-{index}"))
        return math_row(row_id, field(row, "problem", "Problem"), field(row, "answer", "Answer"))


class GSM8K(_MathBenchmark):
    name = "gsm8k"
    title = "GSM8K"
    source = "openai/gsm8k"
    config = "main"

    def convert(self, row: dict[str, Any], index: int) -> dict[str, Any]:
        return math_row(f"gsm8k-{index}", field(row, "question"), gsm8k_answer(field(row, "answer")))


def gsm8k_answer(solution: str) -> str:
    """The final answer of a GSM8K solution: the number after `####`, thousands separators dropped.

    >>> gsm8k_answer("She pays 2 * 1,500 = <<2*1500=3000>>3000.\\n#### 3,000")
    '3000'
    """
    if "####" not in solution:
        raise ValueError("GSM8K answer without '####'")
    return solution.rpartition("####")[2].strip().replace(",", "").rstrip(".")
