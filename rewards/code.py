"""Code correctness by running it: the last fenced code block of the answer, in the sandbox, against tests.

DeepSeek-V3 rewards code with compiler and test feedback. A row's tests come in the shape of its
data set (`rewards.code_tests` reads them all): stdin/stdout tests (`tests` [{input, output}],
CodeContests-style), call-based tests (`fn_name` + inputs/outputs: APPS/TACO's `input_output`,
LiveCodeBench's functional `public_test_cases`/`private_test_cases` + `metadata`), assert-based tests
(MBPP's list of asserts, KodCode's test program) and HumanEval's `test` + `entry_point`. The
reward is the fraction of tests passed. A stdin/stdout test passes when stdout equals the expected
output token by token (whitespace trimmed and collapsed); a call passes when its result equals the
expected JSON value; an assert-based or check() test when it runs to its end. Call-, assert- and
check-style tests run in a harness that decides pass/fail itself, in a process the candidate's
code never runs in (see `rewards.sandbox.harness`): neither the exit code nor the candidate decide.

Column `language` (python, c, cpp, javascript, java, go, rust, bash; default python) picks the
toolchain; call-, assert- and check-style tests are Python only. The code is the last fenced block
after `</think>`. No block, a compile error, a timeout, a crash or a hostile program score 0.0 with
the reason as the row's error; a wrong answer scores 0.0 without one; a malformed row (no tests, an
empty list, a null expected output, an unknown key, an unknown language, a language whose
toolchain is not installed) scores None with an error. Rows run in parallel on `workers` threads
(the protocol's pool, see `rewards.protocol`), each row compiled once and its tests run in one
sandbox (kept by each thread for its next rows, see `rewards.sandbox`); identical programs on the
same tests (common among GRPO's completions of one prompt, whatever prose surrounds the code) run
once (`CodeReward.row_key`).
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Sequence
from typing import Any

from posttrain.core.errors import DataError, PluginError
from rewards.answer import answer_text, last_code_block
from rewards.code_tests import TEST_COLUMNS, Case, call_passed, parse_tests, row_cases
from rewards.protocol import Scored, Verifier, default_workers
from rewards.sandbox import Limits, RunResult, Sandbox, normalize_language
from rewards.sandbox.languages import missing_toolchain

#: (language, code, the row's tests): what one row runs; rows with equal jobs get equal scores.
Job = tuple[str, str, tuple[Case, ...]]


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


def judge(case: Case, result: RunResult) -> tuple[bool, str | None]:
    """(passed, reason or None) of one test: a wrong answer (a different output or value, a failed
    assertion) has no reason; a test that did not run through (crash, timeout, …) has one."""
    if case.kind == "stdin":
        return (result.ok and same_output(result.stdout, case.expected or "")), (None if result.ok else result.reason())
    if result.passed:
        return (call_passed(result.stdout, case) if case.kind == "call" else True), None
    if result.status == "runtime_error" and _tail(result.stderr).startswith("AssertionError"):
        return False, None
    return False, result.reason()


def _tail(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


class CodeReward(Verifier):
    """Code tests in a sandbox: the fraction passed of a row's tests (stdin/stdout, calls, asserts, HumanEval check).

    Options: `workers` (rows run at once; default the cores), `timeout_s` and `memory_mb` per test run,
    `compile_timeout_s`, `total_timeout_s` (all tests of a row; default timeout_s each),
    `max_output_bytes`, `max_tests` (run at most the first N tests of a row: for sets with hundreds),
    `language` (when there is no column), `python` (interpreter inside the sandbox),
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
                 allow_unsandboxed: bool = False, max_tests: int | None = None):
        try:
            limits = Limits(timeout_s=float(timeout_s), memory_mb=int(memory_mb),
                            compile_timeout_s=float(compile_timeout_s),
                            total_timeout_s=None if total_timeout_s is None else float(total_timeout_s),
                            max_output_bytes=int(max_output_bytes)).check()
            self.language = normalize_language(language)
            if max_tests is not None and int(max_tests) < 1:
                raise ValueError(f"max_tests must be >= 1, got {max_tests!r}")
        except (DataError, TypeError, ValueError) as exc:
            raise PluginError(f"code reward: bad option: {exc}") from None
        self.max_tests = None if max_tests is None else int(max_tests)
        self.workers = default_workers() if workers is None else max(1, int(workers))
        self.allow_unsandboxed = bool(allow_unsandboxed)
        self.sandbox = Sandbox(limits, allow_unsandboxed=self.allow_unsandboxed, python=python).check()

    @property
    def threads(self) -> int:  # type: ignore[override]
        """Rows run at once: each waits on its sandbox, so threads are enough."""
        return self.workers

    def row_key(self, completion: Any, language: Any = None, **row: Any) -> Hashable | None:
        """The program and its tests: rows that would run the same thing get the same score."""
        job = self._job(completion, language, {k: v for k, v in row.items() if k in TEST_COLUMNS})
        return ("no code", job) if isinstance(job, str) else job

    def score_rows(self, completions: Sequence[Any], language: Sequence[Any] | None = None,
                   **kwargs: Any) -> list[Scored]:
        n = len(completions)
        columns = {k: kwargs[k] for k in TEST_COLUMNS if kwargs.get(k) is not None}
        for name, column in (("language", language), *columns.items()):
            if column is not None and (not isinstance(column, list | tuple) or len(column) != n):
                raise DataError(f"code reward: column `{name}` must have one value per completion ({n})")
        if not set(columns) - {"entry_point", "metadata", "fn_name", "test_imports", "test_setup_code"}:
            raise DataError("the code reward needs a `tests` column ([{input, output}] or another test format: "
                            "`input_output`, `public_test_cases`, `test_list`) or `test` (+ `entry_point`)")
        out = []
        for i, completion in enumerate(completions):
            try:
                job = self._job(completion, language[i] if language is not None else None,
                                {k: v[i] for k, v in columns.items()})
                if not isinstance(job, str) and (why := missing_toolchain(job[0])) is not None:
                    raise DataError(why)
            except DataError as exc:
                out.append(Scored(None, str(exc)))
                continue
            out.append(Scored(0.0, job) if isinstance(job, str) else Scored(*self._run_one(job)))
        return out

    def _job(self, completion: Any, language: Any, row: dict[str, Any]) -> Job | str:
        """The work for one row, or a reason string when there is no code to run."""
        lang = normalize_language(language) if language is not None else self.language
        cases = row_cases(lang, **row)
        if self.max_tests is not None:
            cases = cases[: self.max_tests]
        code = extract_code(completion)
        if code is None:
            return "no fenced code block in the answer"
        return lang, code, tuple(cases)

    def _run_one(self, job: Job) -> tuple[float | None, str | None]:
        """(fraction passed, the reason of the first test that did not run through, or None)."""
        lang, code, cases = job
        outcomes: list[tuple[bool, str | None]] = [(False, None)] * len(cases)
        for harness in (False, True):
            batch = [(i, c) for i, c in enumerate(cases) if (c.kind != "stdin") == harness]
            if not batch:
                continue
            try:
                if harness:
                    compiled, results = self.sandbox.run_harness(code, [json.loads(c.payload) for _, c in batch])
                else:
                    compiled, results = self.sandbox.run_tests(code, lang, [c.payload for _, c in batch])
            except DataError as exc:
                return None, str(exc)
            if compiled is not None and compiled.status != "ok":
                return 0.0, f"compile_error: {_tail(compiled.stderr)}"
            for (i, case), result in zip(batch, results, strict=True):
                outcomes[i] = judge(case, result)
        passed = sum(ok for ok, _ in outcomes)
        bad = next(((i, why) for i, (_, why) in enumerate(outcomes) if why is not None), None)
        if bad is None:
            return passed / len(cases), None
        return passed / len(cases), f"{passed}/{len(cases)} tests passed; test {bad[0]}: {bad[1]}"

    def close(self) -> None:
        """Stop the pool's threads and end the sandboxes they kept."""
        super().close()
        self.sandbox.close()

    def __repr__(self) -> str:
        lim = self.sandbox.limits
        return (f"CodeReward(workers={self.workers}, timeout_s={lim.timeout_s:g}, memory_mb={lim.memory_mb}, "
                f"isolated={self.sandbox.isolated})")


__all__ = ["CodeReward", "extract_code", "judge", "parse_tests", "same_output"]
