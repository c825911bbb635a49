"""Reward plugins for the family matrix: what the rewards saw, made visible in the logged reward."""

from __future__ import annotations

from typing import Any

from rewards.answer import completion_text


def opens_think(completions: list[Any], **kwargs: Any) -> list[float]:
    """1.0 where the completion the reward sees starts with `<think>` (the template's opener included), else 0.0."""
    return [float(completion_text(c).startswith("<think>")) for c in completions]


def always(completions: list[Any], **kwargs: Any) -> list[float]:
    """1.0 for everything: lets a distill stage keep a random model's samples."""
    return [1.0] * len(completions)
