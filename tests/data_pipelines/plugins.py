"""Teachers, rewards and prompt sources used by the data pipeline tests, written as a user would."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from data_pipelines.tasks.arithmetic import teacher as arithmetic_teacher
from rewards.answer import answer_text, completion_text, last_boxed, split_think


def boxed_answer(completions: list[Any], solution: list[str], **kwargs: Any) -> list[float]:
    """1.0 when the last \\boxed{} after </think> equals the `solution` column."""
    return [float(last_boxed(answer_text(c)) == s) for c, s in zip(completions, solution, strict=True)]


def think_format(completions: list[Any], **kwargs: Any) -> list[float]:
    """1.0 for `<think>...</think>` followed by an answer."""
    out = []
    for c in completions:
        text = completion_text(c)
        reasoning, answer = split_think(text)
        out.append(float(text.startswith("<think>") and reasoning is not None and bool(answer.strip())))
    return out


def slow_teacher(prompts: list[Any], n: int, sampling: Any, delay_s: float = 0.0, **kwargs: Any) -> list[list[str]]:
    """The arithmetic teacher, `delay_s` seconds per call (to interrupt a run mid-way)."""
    time.sleep(delay_s)
    return arithmetic_teacher(prompts, n, sampling, **kwargs)


def flaky_teacher(prompts: list[Any], n: int, sampling: Any, state_dir: str = "", **kwargs: Any) -> list[list[str]]:
    """Fails the first attempt at any prompt containing 7 (a transient error); 'Compute 0+0.' always fails."""
    out = []
    for p in prompts:
        if p == "Compute 0+0.":
            raise RuntimeError("teacher crashed on 0+0")
        marker = Path(state_dir) / (p.replace(" ", "_") + ".tried")
        if "7" in p and not marker.exists():
            marker.write_text("1")
            raise ConnectionError(f"transient failure on {p!r}")
        out.append(arithmetic_teacher([p], n, sampling, **kwargs)[0])
    return out


def fixed_teacher(prompts: list[Any], n: int, sampling: Any, answers: dict[str, list[str]] | None = None,
                  path: str | None = None) -> list[list[str]]:
    """Returns canned completions per prompt (from `answers` or a JSON file at `path`)."""
    table = answers if answers is not None else json.loads(Path(path or "").read_text())
    return [list(table[p])[:n] for p in prompts]


def few_prompts(n: int = 3, offset: int = 0) -> list[dict[str, Any]]:
    """Rows for a `function:` source."""
    return [{"question": f"Compute {i}+{i + 1}.", "answer": str(2 * i + 1), "difficulty": i % 2, "uid": f"q{i}"}
            for i in range(offset, offset + n)]


def environment_variable(completions: list[Any], **kwargs: Any) -> list[float]:
    """Proof that a reward ran in this process: the value of POSTTRAIN_TEST_REWARD (as a float)."""
    return [float(os.environ.get("POSTTRAIN_TEST_REWARD", "0"))] * len(completions)


def verifying_teacher(prompts: list[Any], n: int, sampling: Any, **kwargs: Any) -> list[list[str]]:
    """The arithmetic teacher; asked (by a system message) to verify, it ends its reasoning with a check, as
    DeepSeek-V3's R1-based expert reflects and verifies. A chat prompt's last user message is the problem."""
    from data_pipelines.tasks.arithmetic import parse_prompt

    out = arithmetic_teacher(prompts, n, sampling, **kwargs)
    for i, p in enumerate(prompts):
        system = " ".join(m["content"] for m in p if m["role"] == "system") if isinstance(p, list) else ""
        if "verify" in system.lower():
            a, b = parse_prompt(p)
            out[i] = [c.replace("</think>", f"; check: {a + b}-{b}={a}</think>") for c in out[i]]
    return out


def direct_teacher(prompts: list[Any], n: int, sampling: Any, **kwargs: Any) -> list[list[str]]:
    """A non-reasoning expert (V3's 'original response'): the answer alone, no <think> block."""
    from data_pipelines.tasks.arithmetic import parse_prompt

    return [[f"The answer is \\boxed{{{sum(parse_prompt(p))}}}."] * n for p in prompts]


def domain_prompts(n: int = 12) -> list[dict[str, Any]]:
    """Addition prompts labelled by domain (`small`: one-digit operands, `large`: two-digit); every fourth is
    marked non-reasoning (`reasoning: false`)."""
    rows = []
    for i in range(n):
        a, b = (i // 2, i // 2 + 3) if i % 2 else (10 + i, 20 + i)
        rows.append({"id": f"d{i}", "prompt": f"Compute {a}+{b}.", "solution": str(a + b),
                     "domain": "small" if i % 2 else "large", "reasoning": i % 4 != 0})
    return rows


def is_small(row: dict[str, Any]) -> bool:
    """A prompt predicate (`select: module:function`): the one-digit problems."""
    return row.get("domain") == "small"


def chatty_tool_teacher(prompts: list[Any], n: int, sampling: Any = None, tools: Any = None,
                        **kwargs: Any) -> list[list[Any]]:
    """Multiplies with the python tool, whose program also prints a paragraph in Chinese; sample 1 runs another
    program to the same answer, sample 2 answers in Chinese itself (a mixed-language answer), sample 3 repeats
    sample 0 word for word."""
    from data_pipelines.tasks.multiplication import parse_prompt

    out = []
    for chat in prompts:
        a, b = parse_prompt(chat)
        if chat[-1]["role"] == "tool":
            product = chat[-1]["content"].split()[0]
            text = chat[-2]["content"]
            mixed = "这是答案，我们计算了乘积并得到结果" * 3 if "中文" in text else ""
            out.append([f"{mixed}The answer is \\boxed{{{product}}}."] * n)
            continue
        programs = [f"print({a}*{b}); print('这是工具的输出，不是模型写的文字。' * 5)", f"print({b}*{a})",
                    f"print({a}*{b})", f"print({a}*{b}); print('这是工具的输出，不是模型写的文字。' * 5)"]
        thoughts = ["<think>Run it.</think>", "<think>Run it.</think>", "<think>Run it 中文.</think>",
                    "<think>Run it.</think>"]
        out.append([{"role": "assistant", "content": thoughts[i % 4], "tool_calls": [
            {"type": "function", "function": {"name": "python", "arguments": {"code": programs[i % 4]}}}]}
            for i in range(n)])
    return out
