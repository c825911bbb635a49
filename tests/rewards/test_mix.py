"""A weighted mix of rewards (rewards/mix.py): what eval, `rewards score`, rejection sampling and judge data share."""

from __future__ import annotations

from typing import Any

import pytest

from data_pipelines.tasks.arithmetic import solution_text
from rewards.mix import RewardMix, combine, unique_labels
from rewards.registry import get_reward

PLUGINS = "tests.data_pipelines.plugins"
RIGHT = solution_text(365, 75)
WRONG = RIGHT.replace("440", "441")


def _rewards() -> list[tuple[str, Any, float]]:
    return [("answer", get_reward(f"{PLUGINS}:boxed_answer"), 1.0), ("format", get_reward(f"{PLUGINS}:think_format"),
                                                                       0.5)]


def test_reward_labels_are_unique() -> None:
    assert unique_labels(["math", "format", "math", "math"]) == ["math", "format", "math_2", "math_3"]


def test_score_passes_columns_like_trl() -> None:
    scored = RewardMix(_rewards()).score([RIGHT, WRONG], {"prompts": ["Compute 365+75."] * 2,
                                                          "solution": ["440", "440"]})
    assert [scored.row(i) for i in range(2)] == [{"answer": 1.0, "format": 1.0}, {"answer": 0.0, "format": 1.0}]
    assert [scored.row_errors(i) for i in range(2)] == [{}, {}]
    assert scored.totals() == [1.5, 0.5]
    assert scored.totals(normalised=True) == pytest.approx([1.0, 1 / 3])


def test_a_failed_row_keeps_its_error_and_is_left_out_of_the_total() -> None:
    def picky(completions: list[str], **_: Any) -> list[float]:
        if any("boom" in c for c in completions):
            raise ValueError("cannot judge boom")
        return [1.0] * len(completions)

    scored = RewardMix([("picky", picky, 2.0), ("one", lambda completions, **_: [1.0] * len(completions), 1.0)]).score(
        ["fine", "boom"], {})
    assert scored.row(1) == {"picky": None, "one": 1.0}
    assert "cannot judge boom" in scored.row_errors(1)["picky"] and scored.row_errors(0) == {}
    assert scored.totals() == [3.0, 1.0]  # the failed score is absent, not 0 (TRL's rule)
    assert scored.reasons()[0] is None and "cannot judge boom" in (scored.reasons()[1] or "")


def test_each_reward_may_get_its_own_columns_and_labels_must_differ() -> None:
    seen: dict[str, set[str]] = {}

    def spy(name: str) -> Any:
        def fn(completions: list[str], **columns: Any) -> list[float]:
            seen[name] = set(columns)
            return [0.0] * len(completions)
        return fn

    RewardMix([("a", spy("a"), 1.0), ("b", spy("b"), 1.0)]).score(["x"], lambda label: {f"only_{label}": [1]})
    assert seen == {"a": {"only_a"}, "b": {"only_b"}}
    with pytest.raises(ValueError, match="must differ"):
        RewardMix([("a", spy("a"), 1.0), ("a", spy("a"), 1.0)])


def test_combine_sums_the_scores_a_row_has() -> None:
    assert combine({"a": [1.0, None], "b": [0.5, 1.0]}, {"a": 2.0, "b": -1.0}) == [1.5, -1.0]
