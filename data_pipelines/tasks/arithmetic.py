"""Multi-digit addition: a task a few-million-parameter model learns on CPU in minutes, checkable by rule.

Prompt ``Compute 365+75.``; R1-style completion
``<think>5+5=10; 6+7+1=14; 3+0+1=4</think>\\nThe answer is \\boxed{440}.`` (digit by digit, carries
written out). Train and eval prompts come from disjoint sets of operand pairs (a stable hash decides
which pair belongs to which), so the held-out set never leaks into training data.
"""

from __future__ import annotations

import hashlib
import random
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
