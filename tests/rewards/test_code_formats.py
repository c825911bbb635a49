"""The `code` reward on rows shaped like the public code sets (our own rows): APPS, TACO, LiveCodeBench,
MBPP, KodCode, CodeContests, HumanEval. Through the real sandbox and the real harness.

Each format is scored right for a correct, a wrong and a hostile program; and each malformed row
(null expected output, unknown key, empty list) has no score and an error naming what is wrong,
never a silent 0 nor a free 1.0.
"""

from __future__ import annotations

import base64
import json
import pickle
import subprocess
import zlib
from collections.abc import Iterator

import pytest

from posttrain.core.errors import DataError
from rewards.code import CodeReward
from rewards.code_tests import row_cases

pytestmark = pytest.mark.skipif(
    subprocess.run(["sh", "-c", "command -v bwrap && bwrap --unshare-all --unshare-user --ro-bind / / true"],
                   capture_output=True).returncode != 0,
    reason="bubblewrap missing or unable to create namespaces here (make setup installs it)")


def answer(code: str, lang: str = "python") -> str:
    return f"<think>Let me write it.</think>\nHere it is:\n```{lang}\n{code}\n```"


@pytest.fixture(scope="module")
def reward() -> Iterator[CodeReward]:
    fn = CodeReward(workers=2, timeout_s=5.0, memory_mb=256)
    yield fn
    fn.close()


def score(reward: CodeReward, programs: list[str], **columns: object) -> tuple[list[float | None], list[str | None]]:
    """Every program against the same row's columns."""
    n = len(programs)
    return reward.score_with_errors([answer(p) for p in programs], **{k: [v] * n for k, v in columns.items()})


# ---------------------------------------------------------------- a null expected output is not "print nothing"


def test_null_expected_output_is_an_error_not_a_free_pass(reward: CodeReward) -> None:
    silent = "pass"
    for tests in ([{"input": "1", "output": None}], {"inputs": ["1"], "outputs": [None]},
                  {"fn_name": "f", "inputs": [[1]], "outputs": [None]}):
        scores, errors = score(reward, [silent], tests=tests)
        assert scores == [None], tests
        assert errors[0] is not None and "null" in errors[0] and "test 0" in errors[0]
    scores, errors = score(reward, [silent], input_output=json.dumps({"inputs": ["1\n"], "outputs": [None]}))
    assert scores == [None] and "column `input_output`, test 0" in (errors[0] or "")


def test_a_null_or_absent_input_is_empty_stdin(reward: CodeReward) -> None:
    """A program that reads nothing (verl's sandbox tests pass `None` as stdin): an ordinary test, not a hack."""
    echo = "import sys\nprint(f\"You said '{sys.stdin.readline().strip()}'\")"
    outputs = ["You said ''", "You said ''", "You said 'hello'"]
    for tests in ({"inputs": [None, "", "hello"], "outputs": outputs},
                  [{"input": None, "output": outputs[0]}, {"input": "", "output": outputs[1]},
                   {"input": "hello", "output": outputs[2]}],
                  [{"output": outputs[0]}, {"input": "hello", "output": outputs[2]}]):
        scores, errors = score(reward, [echo, "print('no')"], tests=tests)
        assert scores == [1.0, 0.0] and errors == [None, None], (tests, errors)
    scores, errors = score(reward, [echo], input_output=json.dumps({"inputs": [None], "outputs": ["You said ''"]}))
    assert (scores, errors) == ([1.0], [None])
    # A call with a null input calls with no arguments; a null expected value is still refused.
    scores, errors = score(reward, ["def f():\n    return 7"], tests={"fn_name": "f", "inputs": [None], "outputs": [7]})
    assert (scores, errors) == ([1.0], [None])


def test_call_tests_with_one_json_argument_per_line(reward: CodeReward) -> None:
    """verl's sandbox format: `{fn_name, inputs, outputs}` whose inputs are LiveCodeBench's text, one JSON
    argument per line, and whose outputs are JSON text."""
    solution = ("class Solution:\n    def occurrencesOfElement(self, nums: List[int], queries: List[int], x: int)"
                " -> List[int]:\n        at = [i for i, v in enumerate(nums) if v == x]\n"
                "        return [at[k - 1] if k <= len(at) else -1 for k in queries]\n")
    tests = {"fn_name": "occurrencesOfElement", "inputs": ["[1, 3, 1, 7]\n[1, 3, 2, 4]\n1", "[1, 2, 3]\n[10]\n5"],
             "outputs": ["[0, -1, 2, -1]", "[-1]"]}
    scores, errors = score(reward, [solution, solution.replace("k <= len(at)", "k < len(at)")], tests=tests)
    assert scores == [1.0, 0.5] and errors == [None, None], errors


@pytest.mark.parametrize(("columns", "message"), [
    ({"tests": [{"input": "1", "expected_output": "1"}]}, "test 0: expected {\"input\""),
    ({"tests": [{"input": "1", "output": "1", "weight": 2}]}, "unknown key(s) ['weight']"),
    ({"tests": {"inputs": ["1"], "outputs": ["1"], "fn": "f"}}, "unknown key(s) ['fn']"),
    ({"tests": []}, "test list is empty"),
    ({"input_output": '{"inputs": [], "outputs": []}'}, "test list is empty"),
    ({"public_test_cases": "[]", "private_test_cases": ""}, "test list is empty"),
    ({"tests": [{"input": "[1]", "output": "1", "testtype": "functional"}]}, "needs the function's name"),
    ({"tests": [{"input": "1", "output": "1", "testtype": "interactive"}]}, "unknown testtype"),
    ({"input_output": "{not json"}, "not valid JSON"),
    ({"tests": ["print(1)"]}, "expected an assert statement"),
    ({"private_test_cases": "bm90IGNvbXByZXNzZWQ="}, "neither JSON nor LiveCodeBench's compressed"),
])
def test_malformed_rows_have_no_score_and_say_why(reward: CodeReward, columns: dict, message: str) -> None:
    scores, errors = score(reward, ["print(1)"], **columns)
    assert scores == [None]
    assert errors[0] is not None and message in errors[0], errors[0]


# ---------------------------------------------------------------- call-based: APPS, TACO, LiveCodeBench


def test_apps_and_taco_call_based_rows(reward: CodeReward) -> None:
    """APPS/TACO `input_output` with fn_name: arguments as a JSON list, results as JSON values; APPS wraps
    an expected x as [x], both are accepted."""
    io = json.dumps({"fn_name": "add_lists", "inputs": [[[1, 2], [3]], [[], []], [[5], [6, 7]]],
                     "outputs": [[[1, 2, 3]], [[]], [[5, 6, 7]]]})
    right = "def add_lists(a, b):\n    return a + b"
    tuples = "def add_lists(a, b):\n    return tuple(a + b)"  # tuples are lists in JSON, as the reference harness sees
    wrong = "def add_lists(a, b):\n    return b + a"
    crash = "def add_lists(a, b):\n    return a[0] + b[0]"
    scores, errors = score(reward, [right, tuples, wrong, crash], input_output=io)
    assert scores == [1.0, 1.0, pytest.approx(1 / 3), 0.0], errors
    assert errors[:3] == [None, None, None]
    assert errors[3] is not None and "IndexError" in errors[3]
    taco = {"fn_name": "solve", "inputs": [[3], [10]], "outputs": [9, 100]}
    scores, _ = score(reward, ["def solve(n):\n    return n * n", "def solve(n):\n    return n * n * 1.0",
                               "def solve(n):\n    return str(n * n)"], tests=taco)
    assert scores == [1.0, 1.0, 0.0]  # 9.0 == 9 as JSON numbers; "9" is not 9


LEETCODE = """from typing import List
class Solution:
    def twoSum(self, nums: List[int], target: int) -> List[int]:
        seen = {}
        for i, x in enumerate(nums):
            if target - x in seen:
                return [seen[target - x], i]
            seen[x] = i
"""


def lcb_compress(cases: list[dict]) -> str:
    """LiveCodeBench's private_test_cases: base64(zlib(pickle(JSON text)))."""
    return base64.b64encode(zlib.compress(pickle.dumps(json.dumps(cases)))).decode()


def test_livecodebench_functional_rows(reward: CodeReward) -> None:
    """Solution class, `List` without an import (LiveCodeBench's harness provides typing), one JSON argument
    per line, the private cases compressed."""
    public = json.dumps([{"input": "[2,7,11,15]\n9", "output": "[0, 1]", "testtype": "functional"}])
    private = lcb_compress([{"input": "[3,2,4]\n6", "output": "[1, 2]", "testtype": "functional"},
                            {"input": "[3,3]\n6", "output": "[0, 1]", "testtype": "functional"}])
    metadata = json.dumps({"func_name": "twoSum"})
    no_import = LEETCODE.replace("from typing import List\n", "")
    first_only = "class Solution:\n    def twoSum(self, nums, target):\n        return [0, 1]"
    forged = "print('[1, 2]')\nimport os\nos._exit(0)"  # prints the answer and leaves: the harness is not fooled
    scores, errors = score(reward, [LEETCODE, no_import, first_only, forged],
                           public_test_cases=public, private_test_cases=private, metadata=metadata)
    assert scores == [1.0, 1.0, pytest.approx(2 / 3), 0.0], errors
    assert errors[3] is not None and "candidate's process ended" in errors[3]


def test_livecodebench_stdin_rows_and_max_tests() -> None:
    cases = [{"input": f"{n}\n", "output": f"{n * 2}\n", "testtype": "stdin"} for n in range(1, 9)]
    row = {"public_test_cases": json.dumps(cases[:2]), "private_test_cases": lcb_compress(cases[2:])}
    fn = CodeReward(workers=1, max_tests=3)
    try:
        double_but_4 = "n = int(input())\nprint(n * 2 if n != 4 else 0)"
        scores, _ = fn.score_with_errors([answer(double_but_4)], **{k: [v] for k, v in row.items()})
        assert scores == [1.0]  # only the first 3 tests run: n = 4 is the 4th
        assert len(row_cases("python", **row)) == 8
    finally:
        fn.close()


# ---------------------------------------------------------------- assert-based: MBPP, KodCode


def test_mbpp_rows(reward: CodeReward) -> None:
    tests = ["assert similar_elements((3, 4, 5, 6), (5, 7, 4, 10)) == (4, 5)",
             "assert similar_elements((1, 2, 3, 4), (5, 4, 3, 7)) == (3, 4)",
             "assert math.isclose(mean([1, 2]), 1.5)"]
    right = ("def similar_elements(a, b):\n    return tuple(sorted(set(a) & set(b)))\n"
             "def mean(xs):\n    return sum(xs) / len(xs)")
    half = "def similar_elements(a, b):\n    return (4, 5)\ndef mean(xs):\n    return 1.5"
    always_equal = ("class Eq:\n    def __eq__(self, other):\n        return True\n"
                    "def similar_elements(a, b):\n    return Eq()\ndef mean(xs):\n    return Eq()")
    scores, errors = score(reward, [right, half, always_equal], test_list=tests, test_imports=["import math"])
    assert scores == [1.0, pytest.approx(2 / 3), 0.0], errors
    assert errors[:2] == [None, None]
    assert score(reward, [right, half], tests=tests[:2])[0] == [1.0, 0.5]  # a `tests` list of asserts


KODCODE_TEST = """from solution import LRUCache, merge
import pytest

def test_cache():
    cache = LRUCache(2)
    cache.put(1, 1)
    cache.put(2, 2)
    assert cache.get(1) == 1
    cache.put(3, 3)
    assert cache.get(2) == -1
    assert cache.size == 2

@pytest.mark.parametrize("a, b, out", [([1, 3], [2], [1, 2, 3]), ([], [1], [1])])
def test_merge(a, b, out):
    assert merge(a, b) == out

def test_merge_rejects_none():
    with pytest.raises(TypeError):
        merge(None, [1])
"""
KODCODE_RIGHT = """from collections import OrderedDict
class LRUCache:
    def __init__(self, capacity):
        self.capacity, self.data = capacity, OrderedDict()
    @property
    def size(self):
        return len(self.data)
    def get(self, key):
        if key not in self.data:
            return -1
        self.data.move_to_end(key)
        return self.data[key]
    def put(self, key, value):
        self.data[key] = value
        self.data.move_to_end(key)
        if len(self.data) > self.capacity:
            self.data.popitem(last=False)
def merge(a, b):
    return sorted(a + b)
"""


def test_kodcode_test_program_rows(reward: CodeReward) -> None:
    """pytest-style test functions importing from `solution`; objects of the candidate's classes stay in its
    process and are used through handles."""
    no_eviction = KODCODE_RIGHT.replace("            self.data.popitem(last=False)", "            pass")
    scores, errors = score(reward, [KODCODE_RIGHT, no_eviction, "def merge(a, b):\n    return a"], test=KODCODE_TEST)
    assert scores == [1.0, pytest.approx(2 / 3), 0.0], errors
    assert errors[1] is None  # a failed assertion is a wrong answer
    assert errors[2] is not None and "LRUCache" in errors[2]  # the import failed: said, not silent


# ---------------------------------------------------------------- stdin/stdout and HumanEval stay as they were


def test_codecontests_and_humaneval_rows(reward: CodeReward) -> None:
    contests = {"inputs": ["3\n1 2 3\n", "1\n5\n"], "outputs": ["6\n", "5\n"]}
    scores, _ = score(reward, ["input()\nprint(sum(map(int, input().split())))", "print(6)"], tests=contests)
    assert scores == [1.0, 0.5]
    check = "def check(candidate):\n    assert candidate([1, 2]) == 3\n    assert candidate([]) == 0\n"
    scores, _ = score(reward, ["def total(xs):\n    return sum(xs)", "def total(xs):\n    return 3"],
                      test=check, entry_point="total")
    assert scores == [1.0, 0.0]


def test_call_and_assert_tests_are_python_only(reward: CodeReward) -> None:
    scores, errors = reward.score_with_errors([answer("int f(int x) { return x; }", "c")], language=["c"],
                                              tests=[{"fn_name": "f", "inputs": [[1]], "outputs": [1]}])
    assert scores == [None] and "Python only" in (errors[0] or "")
    with pytest.raises(DataError, match="no tests"):
        row_cases("python")
