from __future__ import annotations

import pytest

from data_pipelines.pass_rate_filter import PassRateBounds, histogram, pass_rate, select


def test_pass_rate_counts_scores_that_reach_the_threshold() -> None:
    assert pass_rate([1.0, 0.0, 1.1, 0.9]) == 0.5
    assert pass_rate([1.0, 0.0, 1.1, 0.9], threshold=0.9) == 0.75
    with pytest.raises(ValueError, match="at least one"):
        pass_rate([])


@pytest.mark.parametrize(("bounds", "kept"), [
    ({}, [0.25, 0.5, 0.75]),
    ({"above": None}, [0.0, 0.25, 0.5, 0.75]),
    ({"below": None}, [0.25, 0.5, 0.75, 1.0]),
    ({"above": 0.25, "below": 0.75}, [0.5]),
    ({"above": None, "below": None}, [0.0, 0.25, 0.5, 0.75, 1.0]),
])
def test_bounds_are_strict_and_none_lifts_a_side(bounds: dict, kept: list[float]) -> None:
    rates = [0.0, 0.25, 0.5, 0.75, 1.0]
    assert [r for r in rates if PassRateBounds(**bounds).keeps(r)] == kept


def test_select_keeps_order_and_columns_and_refuses_an_unmeasured_prompt() -> None:
    rows = [{"id": "a", "solution": "1"}, {"id": 7, "solution": "2"}, {"id": "c", "solution": "3"}]
    rates = {"a": 0.5, "7": 0.25, "c": 1.0}
    chosen = select(rows, rates, PassRateBounds())
    assert chosen.kept == [{"id": "a", "solution": "1", "pass_rate": 0.5},
                           {"id": 7, "solution": "2", "pass_rate": 0.25}]
    assert (chosen.dropped_solved, chosen.dropped_unsolved) == (1, 0)
    low = select(rows, rates, PassRateBounds(above=0.25, below=None))
    assert [r["id"] for r in low.kept] == ["a", "c"] and (low.dropped_solved, low.dropped_unsolved) == (0, 1)
    with pytest.raises(KeyError, match="no pass rate measured for prompt 'd'"):
        select([*rows, {"id": "d"}], rates, PassRateBounds())


def test_histogram_is_ordered_by_rate() -> None:
    assert histogram([1.0, 0.125, 1.0, 0.0]) == {"0": 1, "0.125": 1, "1": 2}
