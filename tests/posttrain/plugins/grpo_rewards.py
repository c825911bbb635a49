"""Reward plugins for the GRPO tests: cheap, deterministic, and varied on a random model's output."""

from __future__ import annotations

from typing import Any


def length(completions: list[Any], **kwargs: Any) -> list[float]:
    """Characters in the completion: differs between a random model's samples, so groups carry signal."""
    return [float(len(c)) for c in completions]


def digits(completions: list[Any], **kwargs: Any) -> list[float]:
    """Digits in the completion."""
    return [float(sum(ch.isdigit() for ch in c)) for c in completions]


def flat_for_marked(completions: list[Any], prompts: list[Any], **kwargs: Any) -> list[float]:
    """The same reward for every completion of a prompt starting with 'Flat' (a zero-variance group)."""
    return [0.5 if str(p).startswith("Flat") else float(len(c)) for c, p in zip(completions, prompts, strict=True)]
