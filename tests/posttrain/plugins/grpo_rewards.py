"""Reward plugins for the GRPO tests: cheap, deterministic, and varied on a random model's output."""

from __future__ import annotations

from typing import Any

from rewards.protocol import Scored, Verifier


def length(completions: list[Any], **kwargs: Any) -> list[float]:
    """Characters in the completion: differs between a random model's samples, so groups carry signal."""
    return [float(len(c)) for c in completions]


def digits(completions: list[Any], **kwargs: Any) -> list[float]:
    """Digits in the completion."""
    return [float(sum(ch.isdigit() for ch in c)) for c in completions]


def flat_for_marked(completions: list[Any], prompts: list[Any], **kwargs: Any) -> list[float]:
    """The same reward for every completion of a prompt starting with 'Flat' (a zero-variance group)."""
    return [0.5 if str(p).startswith("Flat") else float(len(c)) for c, p in zip(completions, prompts, strict=True)]


def judge_down(completions: list[Any], **kwargs: Any) -> list[float]:
    """Fails on every row, as a judge whose server went away."""
    raise ConnectionError("judge at http://127.0.0.1:9/v1 refused the connection")


class FirstRowFails(Verifier):
    """Fails on the first row of every call (1 of 8 in the tests' GRPO batches), scores the others by length."""

    dedupe = False

    def score_rows(self, completions: list[Any], **kwargs: Any) -> list[Scored]:
        return [Scored(None, "the first row of the batch is bad") if i == 0 else Scored(float(len(c)))
                for i, c in enumerate(completions)]
