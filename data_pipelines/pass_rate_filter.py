"""Pass-rate (difficulty) filtering of RL prompts: keep those the starting model solves sometimes.

GRPO learns only from groups whose completions disagree: a prompt the model always solves (or never
does) gives every completion the same reward and so zero advantage. Polaris, Skywork-OR1 and
open-r1's pass-rate filtering sample k answers per prompt with the starting model first and keep
the prompts whose share of verified answers lies strictly between two bounds, so that the rollouts
land where the model is uncertain. This module is that selection; the `pass_rate_filter` stage
(posttrain/stages/pass_rate_filter.py) samples and scores with the eval stage's machinery.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: The column a kept prompt carries its measured pass rate in.
PASS_RATE = "pass_rate"


class PassRateBounds(BaseModel):
    """Keep a prompt when `above` < its pass rate < `below` (None: no bound on that side)."""

    model_config = ConfigDict(extra="forbid")

    #: 0 drops the prompts no sample solved; None keeps them (a reward model may still tell their answers apart).
    above: float | None = Field(0.0, ge=0, lt=1)
    #: 1 drops the prompts every sample solved; None keeps them.
    below: float | None = Field(1.0, gt=0, le=1)

    @model_validator(mode="after")
    def _not_empty(self) -> PassRateBounds:
        if self.above is not None and self.below is not None and self.above >= self.below:
            raise ValueError(f"above ({self.above:g}) must be less than below ({self.below:g}): no pass rate lies "
                             f"between them")
        return self

    def keeps(self, rate: float) -> bool:
        return (self.above is None or rate > self.above) and (self.below is None or rate < self.below)


def pass_rate(scores: list[float], threshold: float = 1.0) -> float:
    """The share of a prompt's sampled answers whose score reaches `threshold` (its pass@1 estimate)."""
    if not scores:
        raise ValueError("a pass rate needs at least one scored sample")
    return sum(s >= threshold for s in scores) / len(scores)


@dataclass
class Selection:
    #: The kept rows, in their order, each with its `pass_rate` column.
    kept: list[dict[str, Any]] = field(default_factory=list)
    #: Rows dropped at or above `below` (solved too often) and at or below `above` (too rarely).
    dropped_solved: int = 0
    dropped_unsolved: int = 0


def select(rows: Iterable[dict[str, Any]], rates: dict[str, float], bounds: PassRateBounds) -> Selection:
    """The rows (with an `id` found in `rates`) whose pass rate `bounds` keeps, and how many it dropped on each
    side. A row without a measured rate is an error: the filter would otherwise drop it silently."""
    out = Selection()
    for row in rows:
        key = str(row["id"])
        if key not in rates:
            raise KeyError(f"no pass rate measured for prompt {key!r}")
        rate = rates[key]
        if bounds.keeps(rate):
            out.kept.append({**row, PASS_RATE: rate})
        elif bounds.below is not None and rate >= bounds.below:
            out.dropped_solved += 1
        else:
            out.dropped_unsolved += 1
    return out


def histogram(rates: Iterable[float]) -> dict[str, int]:
    """How many prompts have each pass rate (keys are the rates to 4 decimals, in increasing order)."""
    counts = Counter(round(r, 4) for r in rates)
    return {f"{rate:g}": counts[rate] for rate in sorted(counts)}
