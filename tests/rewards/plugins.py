"""Reward plugins used by the tests, as a user would write them in their own module."""

from __future__ import annotations

import threading
from typing import Any

from rewards.protocol import Scored, Verifier


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


def picky_column_reward(completions: list[Any], solution: list[str], **kwargs: Any) -> list[float]:
    """1.0 where the completion equals its `solution`; a completion containing 'boom' makes the whole batch raise."""
    out = []
    for c, s in zip(completions, solution, strict=True):
        if "boom" in c:
            raise RuntimeError(f"cannot score {c!r}")
        out.append(float(c == s))
    return out


class PickyVerifier(Verifier):
    """1.0 where the completion equals its `solution`, raising on 'boom'; records the batches it was given."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    def score_rows(self, completions: list[Any], solution: list[str], **kwargs: Any) -> list[Scored]:
        self.batches.append(list(completions))
        if any("boom" in c for c in completions):
            raise RuntimeError("boom in the batch")
        return [Scored(float(c == s)) for c, s in zip(completions, solution, strict=True)]


class RendezvousVerifier(Verifier):
    """Rows starting with 'bad' fail with an error naming them; every call waits until `parties` calls are in flight."""

    def __init__(self, parties: int = 2) -> None:
        self.barrier = threading.Barrier(parties, timeout=60)

    def score_rows(self, completions: list[Any], **kwargs: Any) -> list[Scored]:
        self.barrier.wait()
        return [Scored(None, f"bad row {c!r}") if c.startswith("bad") else Scored(1.0) for c in completions]
