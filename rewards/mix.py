"""A weighted mix of rewards, scored as TRL's GRPO scores one: every reward called once on the whole batch with the
batch's columns, each reward's score and error kept per row, and the weighted total of the scores a row has.

A row a reward could not score (None) is left out of the total, not counted as 0: a failing judge must not read as
"every answer is wrong". Its error stays beside the scores, so every caller (eval, `rewards score`, rejection
sampling, judge data, GRPO's metrics) reports the same thing the same way.

>>> mix = RewardMix([("exact", lambda completions, solution, **_: [float(c == s) for c, s in
...                                                                zip(completions, solution)], 2.0)])
>>> scored = mix.score(["4", "5"], {"solution": ["4", "4"]})
>>> scored.totals(), scored.row(1)
([2.0, 0.0], {'exact': 0.0})
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass
class MixScores:
    """Each reward's score and error per row of a batch (rewards in the mix's order), and their weights."""

    scores: dict[str, list[float | None]]
    errors: dict[str, list[str | None]]
    weights: dict[str, float]

    def __len__(self) -> int:
        return len(next(iter(self.scores.values()), []))

    def totals(self, normalised: bool = False) -> list[float]:
        """Weighted sum of the non-null scores per row; `normalised`: divided by the sum of the weights (so that
        a row every reward gave 1.0 totals 1.0)."""
        return combine(self.scores, self.weights, normalised=normalised)

    def row(self, i: int) -> dict[str, float | None]:
        """{reward: score} of row `i`."""
        return {name: s[i] for name, s in self.scores.items()}

    def row_errors(self, i: int) -> dict[str, str]:
        """{reward: error} of the rewards that failed on row `i`."""
        return {name: e[i] for name, e in self.errors.items() if e[i] is not None}

    def reasons(self) -> list[str | None]:
        """Per row, its errors joined into one message (None where no reward failed)."""
        return ["; ".join(self.row_errors(i).values()) or None for i in range(len(self))]


class RewardMix:
    """Rewards with labels and weights: `(label, reward, weight)`, a reward being anything `get_reward` returns or
    any function with TRL's signature (wrapped by `as_reward`, which keeps its errors)."""

    def __init__(self, rewards: Sequence[tuple[str, Any, float]]):
        from rewards.registry import as_reward

        self.labels = [label for label, _, _ in rewards]
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"reward labels must differ within a mix: {self.labels}")
        self.functions = [as_reward(fn, label) for label, fn, _ in rewards]
        self.weights = {label: float(weight) for label, _, weight in rewards}

    def __len__(self) -> int:
        return len(self.labels)

    def score(self, completions: Sequence[Any],
              columns: Mapping[str, Sequence[Any]] | Callable[[str], Mapping[str, Sequence[Any]]]) -> MixScores:
        """Score a batch. `columns`: the keyword columns every reward gets (`prompts`, `solution`, ...), or a
        function of a reward's label giving that reward's own."""
        scores: dict[str, list[float | None]] = {}
        errors: dict[str, list[str | None]] = {}
        for label, fn in zip(self.labels, self.functions, strict=True):
            given = columns(label) if callable(columns) else columns
            scores[label], errors[label] = fn.score_with_errors(list(completions),
                                                                **{k: list(v) for k, v in given.items()})
        return MixScores(scores, errors, dict(self.weights))


def unique_labels(names: Sequence[str]) -> list[str]:
    """Labels for rewards named in a recipe, unique within a mix (`math`, `format`, `math_2` when a name repeats).

    >>> unique_labels(["math", "format", "math"])
    ['math', 'format', 'math_2']
    """
    out: list[str] = []
    for name in names:
        label, k = name, 2
        while label in out:
            label, k = f"{name}_{k}", k + 1
        out.append(label)
    return out


def combine(scores: Mapping[str, Sequence[float | None]], weights: Mapping[str, float],
            normalised: bool = False) -> list[float]:
    """Weighted sum of the non-null scores per row (as TRL's GRPO sums rewards: nulls count as absent).

    >>> combine({"a": [1.0, None], "b": [0.5, 1.0]}, {"a": 2.0, "b": -1.0})
    [1.5, -1.0]
    """
    names = list(scores)
    n = len(scores[names[0]]) if names else 0
    total = sum(weights.get(k, 1.0) for k in names) or 1.0
    sums = [sum(weights.get(k, 1.0) * s for k in names if (s := scores[k][i]) is not None) for i in range(n)]
    return [s / total for s in sums] if normalised else sums
