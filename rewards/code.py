"""Code correctness by running it: the last fenced code block of the answer, in the sandbox, against tests.

DeepSeek-V3 rewards code with compiler and test feedback. A row is one of two kinds (TRL columns):

- `tests`: `[{"input": ..., "output": ...}, ...]` (or its JSON text, or `{"inputs": [...], "outputs": [...]}`):
  the program reads `input` on stdin and its stdout must equal `output` token by token (whitespace
  is trimmed and collapsed). Reward = fraction of tests passed.
- `test` + `entry_point`, HumanEval style: `test` defines `check(candidate)`; the reward is 1.0 if
  `check(<entry_point>)` returns, else 0.0. Exiting early (`sys.exit(0)`, `os._exit(0)`) is not a pass.

Column `language` (python | c | cpp, default python) picks the compiler. The code is the last fenced
block after `</think>`. No block, a compile error, a timeout, a crash or a hostile program score 0.0
with the reason as the row's error; a wrong answer scores 0.0 without one; a malformed row (no tests,
unknown language) scores None with an error. Rows run in parallel on `workers` threads (the protocol's
pool, see `rewards.protocol`), each row compiled once and its tests run in one sandbox (kept by each
thread for its next rows, see `rewards.sandbox`); identical programs on the same tests (common among
GRPO's completions of one prompt, whatever prose surrounds the code) run once (`CodeReward.row_key`).
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Sequence
from typing import Any

from posttrain.core.errors import DataError, PluginError
from rewards.answer import answer_text, last_code_block
from rewards.protocol import Scored, Verifier, default_workers
from rewards.sandbox import Limits, RunResult, Sandbox, normalize_language

Job = tuple[str, str, str, str]  # kind ("tests" | "check"), language, code, payload (JSON of tests, or test+entry)


def parse_tests(value: Any) -> list[tuple[str, str]]:
    """(input, expected output) pairs from a `tests` cell; DataError when it is not a list of {input, output}.

    >>> parse_tests('[{"input": "1 2", "output": "3"}]'), parse_tests({"inputs": ["x"], "outputs": ["y"]})
    ([('1 2', '3')], [('x', 'y')])
    """
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise DataError(f"column `tests`: not valid JSON ({exc})") from None
    if isinstance(value, dict) and ("inputs" in value or "input" in value):
        inputs, outputs = value.get("inputs", value.get("input")), value.get("outputs", value.get("output"))
        if not isinstance(inputs, list) or not isinstance(outputs, list) or len(inputs) != len(outputs):
            raise DataError("column `tests`: {inputs, outputs} must be two lists of the same length")
        value = [{"input": i, "output": o} for i, o in zip(inputs, outputs, strict=True)]
    if not isinstance(value, list | tuple) or not value:
        raise DataError(f"column `tests`: expected a non-empty list of {{input, output}}, got {str(value)[:100]!r}")
    pairs = []
    for i, case in enumerate(value):
        if not isinstance(case, dict) or "input" not in case or "output" not in case:
            raise DataError(f"column `tests`, test {i}: expected {{\"input\": ..., \"output\": ...}}, got "
                            f"{str(case)[:100]!r}")
        pairs.append((_text(case["input"]), _text(case["output"])))
    return pairs


def _text(value: Any) -> str:
    if isinstance(value, list):  # some datasets store lines
        return "\n".join(map(str, value))
    return "" if value is None else str(value)


def same_output(got: str, expected: str) -> bool:
    """Token-wise equality after trimming whitespace: what stdin/stdout judges accept.

    >>> same_output("1 2\\n3  \\n", "1 2 3"), same_output("12", "1 2")
    (True, False)
    """
    return got.split() == expected.split()


def extract_code(completion: Any) -> str | None:
    """The last fenced code block of the answer (after `</think>`), or None."""
    block = last_code_block(answer_text(completion))
    if block is None or not block[1].strip():
        return None
    return block[1]


def score_tests(compile_result: RunResult | None, results: list[RunResult],
                expected: Sequence[str]) -> tuple[float, str | None]:
    """(fraction passed, reason or None) of a stdin/stdout row; the reason names the first test that did not run."""
    if compile_result is not None and compile_result.status != "ok":
        return 0.0, f"compile_error: {_tail(compile_result.stderr)}"
    passed = sum(r.ok and same_output(r.stdout, e) for r, e in zip(results, expected, strict=True))
    bad = [(i, r) for i, r in enumerate(results) if not r.ok]
    if not bad:
        return passed / len(expected), None
    i, r = bad[0]
    return passed / len(expected), f"{passed}/{len(expected)} tests passed; test {i}: {r.reason()}"


def score_check(result: RunResult) -> tuple[float, str | None]:
    """(1.0 or 0.0, reason or None) of a HumanEval-style row; a failed assertion is a wrong answer, not an error."""
    if result.passed:
        return 1.0, None
    if result.status == "runtime_error" and _tail(result.stderr).startswith("AssertionError"):
        return 0.0, None
    if result.status == "ok":
        return 0.0, "the program ended before check() returned (sys.exit / os._exit?)"
    return 0.0, result.reason()


def _tail(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


class CodeReward(Verifier):
    """Code tests in a sandbox: fraction of stdin/stdout `tests` passed, or 1.0/0.0 for HumanEval `test`+`entry_point`.

    Options: `workers` (rows run at once; default the cores), `timeout_s` and `memory_mb` per test run,
    `compile_timeout_s`, `total_timeout_s` (all tests of a row; default timeout_s each),
    `max_output_bytes`, `language` (when there is no column), `python` (interpreter inside the sandbox),
    `allow_unsandboxed` (run WITHOUT isolation if bubblewrap cannot; logged loudly). Creating the
    reward checks the sandbox and raises SandboxUnavailable naming the fix if there is none.

    >>> reward = CodeReward(workers=1)  # doctest: +SKIP
    >>> reward(["<think>add</think>```python\\nprint(sum(map(int, input().split())))\\n```"],  # doctest: +SKIP
    ...        tests=[[{"input": "1 2", "output": "3"}, {"input": "2 2", "output": "5"}]])
    [0.5]
    """

    def __init__(self, workers: int | None = None, timeout_s: float = 5.0, memory_mb: int = 512,
                 compile_timeout_s: float = 30.0, total_timeout_s: float | None = None,
                 max_output_bytes: int = 1 << 20, language: str = "python", python: str | None = None,
                 allow_unsandboxed: bool = False):
        try:
            limits = Limits(timeout_s=float(timeout_s), memory_mb=int(memory_mb),
                            compile_timeout_s=float(compile_timeout_s),
                            total_timeout_s=None if total_timeout_s is None else float(total_timeout_s),
                            max_output_bytes=int(max_output_bytes)).check()
            self.language = normalize_language(language)
        except (DataError, TypeError, ValueError) as exc:
            raise PluginError(f"code reward: bad option: {exc}") from None
        self.workers = default_workers() if workers is None else max(1, int(workers))
        self.allow_unsandboxed = bool(allow_unsandboxed)
        self.sandbox = Sandbox(limits, allow_unsandboxed=self.allow_unsandboxed, python=python).check()

    @property
    def threads(self) -> int:  # type: ignore[override]
        """Rows run at once: each waits on its sandbox, so threads are enough."""
        return self.workers

    def row_key(self, completion: Any, language: Any = None, tests: Any = None, test: Any = None,
                entry_point: Any = None, **row: Any) -> Hashable | None:
        """The program and its tests: rows that would run the same thing get the same score."""
        job = self._job(completion, language, tests, test, entry_point)
        return ("no code", job) if isinstance(job, str) else job

    def score_rows(self, completions: Sequence[Any], language: Sequence[Any] | None = None,
                   tests: Sequence[Any] | None = None, test: Sequence[Any] | None = None,
                   entry_point: Sequence[Any] | None = None, **kwargs: Any) -> list[Scored]:
        n = len(completions)
        for name, column in (("language", language), ("tests", tests), ("test", test), ("entry_point", entry_point)):
            if column is not None and len(column) != n:
                raise DataError(f"code reward: column `{name}` has {len(column)} values for {n} completions")
        if tests is None and test is None:
            raise DataError("the code reward needs a `tests` column ([{input, output}]) or `test` + `entry_point` "
                            "columns (HumanEval style)")
        out = []
        for i, completion in enumerate(completions):
            try:
                job = self._job(completion, language[i] if language is not None else None,
                                tests[i] if tests is not None else None, test[i] if test is not None else None,
                                entry_point[i] if entry_point is not None else None)
            except DataError as exc:
                out.append(Scored(None, str(exc)))
                continue
            out.append(Scored(0.0, job) if isinstance(job, str) else Scored(*self._run_one(job)))
        return out

    def _job(self, completion: Any, language: Any, tests: Any, test: Any, entry_point: Any) -> Job | str:
        """The work for one row, or a reason string when there is no code to run."""
        lang = normalize_language(language) if language is not None else self.language
        has_tests = tests is not None and not (isinstance(tests, list | tuple | str) and len(tests) == 0)
        if has_tests:
            payload = json.dumps(parse_tests(tests))
            kind = "tests"
        elif test is not None:
            if lang != "python":
                raise DataError(f"HumanEval-style rows (`test` + `entry_point`) are Python only, got language {lang!r}")
            if not isinstance(test, str) or "def check" not in test:
                raise DataError("column `test` must be Python source defining check(candidate)")
            if not isinstance(entry_point, str) or not entry_point.isidentifier():
                raise DataError(f"column `entry_point` must name the function to check, got {entry_point!r}")
            payload = json.dumps([test, entry_point])
            kind = "check"
        else:
            raise DataError("row has neither `tests` nor `test` + `entry_point`")
        code = extract_code(completion)
        if code is None:
            return "no fenced code block in the answer"
        return kind, lang, code, payload

    def _run_one(self, job: Job) -> tuple[float | None, str | None]:
        kind, lang, code, payload = job
        try:
            if kind == "check":
                test, entry_point = json.loads(payload)
                return score_check(self.sandbox.run_check(code, test, entry_point))
            cases = json.loads(payload)
            compile_result, results = self.sandbox.run_tests(code, lang, [c[0] for c in cases])
            return score_tests(compile_result, results, [c[1] for c in cases])
        except DataError as exc:
            return None, str(exc)

    def close(self) -> None:
        """Stop the pool's threads and end the sandboxes they kept."""
        super().close()
        self.sandbox.close()

    def __repr__(self) -> str:
        lim = self.sandbox.limits
        return (f"CodeReward(workers={self.workers}, timeout_s={lim.timeout_s:g}, memory_mb={lim.memory_mb}, "
                f"isolated={self.sandbox.isolated})")


__all__ = ["CodeReward", "extract_code", "parse_tests", "same_output", "score_check", "score_tests"]
