"""Multi-digit addition: a task a few-million-parameter model learns on CPU in minutes, checkable by rule.

`teacher` is a scripted R1-style expert for it, used by the tiny recipe's distill stage: it writes
the digit-by-digit trace but slips and breaks the format some of the time, so that rejection
sampling has real work to do.

Prompt ``Compute 365+75.``; R1-style completion
``<think>5+5=10; 6+7+1=14; 3+0+1=4</think>\\nThe answer is \\boxed{440}.`` (digit by digit, carries
written out). Train and eval prompts come from disjoint sets of operand pairs (a stable hash decides
which pair belongs to which), so the held-out set never leaks into training data.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Iterator
from typing import Any

#: Share of operand pairs reserved for evaluation.
EVAL_FRACTION = 0.1


def prompt_text(a: int, b: int) -> str:
    return f"Compute {a}+{b}."


def steps(a: int, b: int) -> list[tuple[int, int, int, int]]:
    """Column steps from the right: (digit of a, digit of b, carry in, column sum)."""
    da, db = str(a)[::-1], str(b)[::-1]
    out, carry = [], 0
    for i in range(max(len(da), len(db))):
        x = int(da[i]) if i < len(da) else 0
        y = int(db[i]) if i < len(db) else 0
        s = x + y + carry
        out.append((x, y, carry, s))
        carry = s // 10
    return out


def format_step(x: int, y: int, carry: int, s: int) -> str:
    return f"{x}+{y}+1={s}" if carry else f"{x}+{y}={s}"


def solution_text(a: int, b: int) -> str:
    """The reference R1-style completion."""
    think = "; ".join(format_step(*st) for st in steps(a, b))
    return f"<think>{think}</think>\nThe answer is \\boxed{{{a + b}}}."


def is_eval_pair(a: int, b: int) -> bool:
    digest = hashlib.sha256(f"{a}+{b}".encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 < EVAL_FRACTION


def _operand(rng: random.Random, min_digits: int, max_digits: int) -> int:
    digits = rng.randint(min_digits, max_digits)
    return rng.randint(10 ** (digits - 1) if digits > 1 else 0, 10**digits - 1)


def _rows(split: str, n: int, seed: int, min_digits: int, max_digits: int) -> list[dict[str, Any]]:
    want_eval = split == "eval"
    rng = random.Random(f"arithmetic-{split}-{seed}")
    rows: list[dict[str, Any]] = []
    seen: set[tuple[int, int]] = set()
    capacity = (10**max_digits) ** 2
    while len(rows) < n:
        if len(seen) >= capacity:
            raise ValueError(f"only {len(rows)} distinct {split} problems exist for these digit counts")
        a, b = _operand(rng, min_digits, max_digits), _operand(rng, min_digits, max_digits)
        if (a, b) in seen:
            continue
        seen.add((a, b))
        if is_eval_pair(a, b) != want_eval:
            continue
        rows.append({"id": f"add-{split}-{a}-{b}", "prompt": prompt_text(a, b), "solution": str(a + b),
                     "a": a, "b": b})
    return rows


def train_prompts(n: int = 4000, seed: int = 0, min_digits: int = 2, max_digits: int = 3) -> list[dict[str, Any]]:
    """Training prompts (columns `id`, `prompt`, `solution`), disjoint from `eval_prompts`."""
    return _rows("train", n, seed, min_digits, max_digits)


def eval_prompts(n: int = 500, seed: int = 0, min_digits: int = 2, max_digits: int = 3) -> list[dict[str, Any]]:
    """Held-out prompts: operand pairs `train_prompts` never uses."""
    return _rows("eval", n, seed, min_digits, max_digits)


def corpus(n: int = 2000, seed: int = 0) -> Iterator[str]:
    """Text the tiny tokenizer is trained on: prompts and reference completions."""
    for row in train_prompts(n, seed, 1, 4):
        yield row["prompt"] + solution_text(row["a"], row["b"])
    yield "The answer is \\boxed{}. Compute Score: Reasoning: Verdict: correct incorrect"


_PROMPT = re.compile(r"Compute\s+(\d+)\s*\+\s*(\d+)")


def parse_prompt(prompt: Any) -> tuple[int, int]:
    """The operands of `Compute A+B.` (a string, or a chat whose last user message is one)."""
    if isinstance(prompt, list):
        users = [m.get("content", "") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
        prompt = users[-1] if users else ""
    match = _PROMPT.search(str(prompt))
    if match is None:
        raise ValueError(f"not an addition prompt: {str(prompt)[:80]!r} (expected 'Compute A+B.')")
    return int(match.group(1)), int(match.group(2))


def sampled_solution(a: int, b: int, rng: random.Random, slip: float = 0.15, malformed: float = 0.05) -> str:
    """One R1-style attempt: each column sum is off by one with probability `slip` (the carries and the
    final answer then follow the wrong sum, as a real model's would); with probability `malformed` the
    format breaks (no `</think>`, no `<think>`, or no box)."""
    parts, digits, carry = [], [], 0
    for x, y, _, _ in steps(a, b):
        s = x + y + carry
        if rng.random() < slip:
            s = s + 1 if s == 0 or rng.random() < 0.5 else s - 1
        parts.append(format_step(x, y, carry, s))
        digits.append(s % 10)
        carry = s // 10
    answer = int(("1" if carry else "") + "".join(str(d) for d in reversed(digits)))
    think = "; ".join(parts)
    if rng.random() < malformed:
        kind = rng.randrange(3)
        if kind == 0:
            return f"<think>{think}\nThe answer is \\boxed{{{answer}}}."
        if kind == 1:
            return f"{think}</think>\nThe answer is \\boxed{{{answer}}}."
        return f"<think>{think}</think>\nThe answer is {answer}."
    return f"<think>{think}</think>\nThe answer is \\boxed{{{answer}}}."


def teacher(
    prompts: list[Any],
    n: int,
    sampling: Any = None,
    slip: float = 0.15,
    malformed: float = 0.05,
    seed: int | None = None,
) -> list[list[str]]:
    """Scripted teacher (backend `scripted`): n attempts per prompt.

    Deterministic given (seed, prompt, sample index), so batching and resuming change nothing. The
    error rates scale with the sampling temperature (T = 0 is always right; T = 1 uses them as given).
    An unparseable prompt raises, as a failing teacher would.
    """
    from posttrain.core.generation import sample_rng

    temperature = 1.0 if sampling is None else float(sampling.temperature)
    seed = seed if seed is not None else (None if sampling is None else sampling.seed)
    p_slip, p_bad = min(1.0, slip * temperature), min(1.0, malformed * temperature)
    out = []
    for prompt in prompts:
        a, b = parse_prompt(prompt)
        out.append([sampled_solution(a, b, sample_rng(seed, prompt, i), p_slip, p_bad) for i in range(n)])
    return out
