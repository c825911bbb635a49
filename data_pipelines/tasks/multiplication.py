"""Multiplying multi-digit numbers: a task a tiny model cannot do in its head, and can with a Python tool.

Prompt ``Compute 314*271.``, solution ``85094`` (3-digit operands by default; `min_digits`/`max_digits` choose).
The tool-integrated recipe (`recipes/tiny-tool.yaml`) teaches the model to run ``print(314*271)`` and copy the
printed product into its answer, which a ~1M-parameter model learns in minutes; the product itself it cannot
compute in one pass.

`teacher` is a scripted R1-style expert for it (backend `scripted`, run by the distill stage's tool loop). Given a
tool, it calls it on a share `tool_rate` of its answers and computes in its head on the others, as a teacher that
does not always reach for the tool does; without one it always answers in its head. It is never wrong itself
(its head is Python): what the student learns from its head answers is an answer it cannot give. A tool answer:

    assistant: <think>Too long to do in my head: run it.</think>  + call python(code="print(314*271)")
    tool:      85094
    assistant: The answer is \\boxed{85094}.

A head answer: ``<think>314*271 in my head.</think>\\nThe answer is \\boxed{85094}.``. Train and eval prompts
come from disjoint operand pairs (a stable hash decides), so the held-out set never leaks into training.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Iterator
from typing import Any

#: Share of operand pairs reserved for evaluation.
EVAL_FRACTION = 0.1
TOOL = "python"
TOOL_THOUGHT = "Too long to do in my head: run it."

_PROMPT = re.compile(r"Compute\s+(\d+)\s*\*\s*(\d+)")


def prompt_text(a: int, b: int) -> str:
    return f"Compute {a}*{b}."


def program(a: int, b: int) -> str:
    return f"print({a}*{b})"


def head_answer(a: int, b: int, product: int | None = None) -> str:
    """The answer written without the tool (`product`: a wrong one, for tests and slips)."""
    return f"<think>{a}*{b} in my head.</think>\nThe answer is \\boxed{{{a * b if product is None else product}}}."


def tool_call_turn(a: int, b: int) -> dict[str, Any]:
    """The turn that calls the tool."""
    return {"role": "assistant", "content": f"<think>{TOOL_THOUGHT}</think>",
            "tool_calls": [{"type": "function", "function": {"name": TOOL, "arguments": {"code": program(a, b)}}}]}


def final_turn(output: str) -> str:
    """The turn after the tool's output: its first number is the answer; an output without one is said so."""
    found = re.search(r"-?\d+", output or "")
    if found is None or "[tool error" in (output or ""):
        return "The program failed, so I have no answer."
    return f"The answer is \\boxed{{{found.group(0)}}}."


def is_eval_pair(a: int, b: int) -> bool:
    digest = hashlib.sha256(f"{a}*{b}".encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 < EVAL_FRACTION


def _rows(split: str, n: int, seed: int, min_digits: int, max_digits: int) -> list[dict[str, Any]]:
    want_eval = split == "eval"
    rng = random.Random(f"multiplication-{split}-{seed}")
    rows: list[dict[str, Any]] = []
    seen: set[tuple[int, int]] = set()
    attempts = 0
    while len(rows) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise ValueError(f"only {len(rows)} distinct {split} problems found for these digit counts")
        da, db = rng.randint(min_digits, max_digits), rng.randint(min_digits, max_digits)
        a, b = rng.randint(10 ** (da - 1), 10**da - 1), rng.randint(10 ** (db - 1), 10**db - 1)
        if (a, b) in seen or is_eval_pair(a, b) != want_eval:
            continue
        seen.add((a, b))
        rows.append({"id": f"mul-{split}-{a}-{b}", "prompt": prompt_text(a, b), "solution": str(a * b)})
    return rows


def train_prompts(n: int = 4000, seed: int = 0, min_digits: int = 3, max_digits: int = 3) -> list[dict[str, Any]]:
    """Training prompts (columns `id`, `prompt`, `solution`), disjoint from `eval_prompts`."""
    return _rows("train", n, seed, min_digits, max_digits)


def eval_prompts(n: int = 500, seed: int = 0, min_digits: int = 3, max_digits: int = 3) -> list[dict[str, Any]]:
    """Held-out prompts: operand pairs `train_prompts` never uses."""
    return _rows("eval", n, seed, min_digits, max_digits)


def corpus(n: int = 2000, seed: int = 0) -> Iterator[str]:
    """Text the tiny tokenizer is trained on: prompts, both kinds of answer, and a tool call's JSON as the chat
    template writes it (so that BPE learns `{"code": "print(` and the like)."""
    for row in train_prompts(n, seed, 1, 4):
        a, b = parse_prompt(row["prompt"])
        call = tool_call_turn(a, b)["tool_calls"][0]["function"]
        yield (row["prompt"] + f"<think>{TOOL_THOUGHT}</think>function{TOOL}\n```json\n"
               + json.dumps(call["arguments"]) + f"\n```{a * b}\n" + final_turn(str(a * b)))
        yield row["prompt"] + head_answer(a, b)
    yield "The answer is \\boxed{}. The program failed, so I have no answer."


def parse_prompt(prompt: Any) -> tuple[int, int]:
    """The operands of `Compute A*B.` (a string, or a chat whose first user message is one)."""
    if isinstance(prompt, list):
        users = [m.get("content", "") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
        prompt = users[0] if users else ""
    match = _PROMPT.search(str(prompt))
    if match is None:
        raise ValueError(f"not a multiplication prompt: {str(prompt)[:80]!r} (expected 'Compute A*B.')")
    return int(match.group(1)), int(match.group(2))


def teacher(prompts: list[Any], n: int, sampling: Any = None, tools: list[dict[str, Any]] | None = None,
            tool_rate: float = 0.5, head_slip: float = 0.0, seed: int | None = None) -> list[list[Any]]:
    """Scripted teacher (backend `scripted`): n turns per prompt or chat.

    A prompt (or a chat whose last message is the user's) gets its first turn: a tool call with probability
    `tool_rate` when a `python` tool is offered, else a head answer, off by one with probability `head_slip`. A
    chat that ends with the tool's output gets the answer read from it. Deterministic given (seed, chat, sample).
    """
    from posttrain.core.generation import sample_rng

    seed = seed if seed is not None else (None if sampling is None else sampling.seed)
    offered = any((t.get("function") or t).get("name") == TOOL for t in tools or [])
    out: list[list[Any]] = []
    for prompt in prompts:
        a, b = parse_prompt(prompt)
        last = prompt[-1] if isinstance(prompt, list) and prompt else {}
        if last.get("role") == "tool":
            out.append([final_turn(str(last.get("content", "")))] * n)
            continue
        row: list[Any] = []
        for i in range(n):
            rng = sample_rng(seed, prompt, i)
            use = offered and rng.random() < tool_rate
            slip = rng.random() < head_slip
            row.append(tool_call_turn(a, b) if use else head_answer(a, b, a * b + 1 if slip else None))
        out.append(row)
    return out
