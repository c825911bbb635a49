"""Reward plugins used by the tests, as a user would write them in their own module."""

from __future__ import annotations

from typing import Any


def length_reward(completions: list[Any], **kwargs: Any) -> list[float]:
    """Length of each completion in characters."""
    return [float(len(c)) for c in completions]


def scaled_length(completions: list[Any], scale: float = 1.0, **kwargs: Any) -> list[float]:
    """Length times `scale` (a bound option)."""
    return [scale * len(c) for c in completions]


def picky_reward(completions: list[Any], **kwargs: Any) -> list[float | None]:
    """Raises on completions containing 'boom'; None where it has nothing to say."""
    out: list[float | None] = []
    for c in completions:
        if "boom" in c:
            raise RuntimeError(f"cannot score {c!r}")
        out.append(None if c == "" else 1.0)
    return out


def column_reward(completions: list[Any], solution: list[str], **kwargs: Any) -> list[float]:
    """1.0 where the completion equals the `solution` column."""
    return [float(c == s) for c, s in zip(completions, solution, strict=True)]
