from __future__ import annotations

import logging
import pickle

import pytest

from posttrain.core.errors import PluginError
from rewards.registry import combine, get_reward


def test_plugin_by_colon_and_dotted_path() -> None:
    assert get_reward("tests.rewards.plugins:length_reward")(["ab", "abcd"]) == [2.0, 4.0]
    assert get_reward("tests.rewards.plugins.length_reward")(["abc"]) == [3.0]


def test_options_are_bound() -> None:
    fn = get_reward("tests.rewards.plugins:scaled_length", scale=0.5)
    assert fn(["abcd"]) == [2.0]
    assert fn.__name__ == "scaled_length"


def test_columns_arrive_as_keyword_lists() -> None:
    fn = get_reward("tests.rewards.plugins:column_reward")
    assert fn(["4", "5"], solution=["4", "4"], prompts=["p", "p"], trainer_state=None) == [1.0, 0.0]


def test_raising_row_gets_none_and_an_error_the_batch_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    fn = get_reward("tests.rewards.plugins:picky_reward")
    metrics: dict[str, float] = {}
    with caplog.at_level(logging.WARNING, logger="posttrain.rewards"):
        scores = fn(["ok", "boom!", "", "fine"], log_metric=metrics.__setitem__)
    assert scores == [1.0, None, None, 1.0]
    assert fn.last_errors[1] is not None and "cannot score 'boom!'" in fn.last_errors[1]
    assert fn.last_errors[2] is None  # None by choice is not an error
    assert fn.error_count == 1
    assert metrics == {"rewards/picky_reward/error_rate": 0.25}
    assert "cannot score" in caplog.text


def test_wrong_length_is_an_error_per_row() -> None:
    def bad(completions: list[str], **kwargs: object) -> list[float]:
        return [1.0]

    fn = get_reward("tests.rewards.plugins:length_reward")
    fn.fn = bad
    assert fn(["a", "b"]) == [1.0, 1.0]  # row by row, each row returns one score
    fn.fn = lambda completions, **kw: ["x"] * len(completions)
    assert fn(["a"]) == [None] and "expected a float" in (fn.last_errors[0] or "")


def test_unknown_rewards_give_clear_errors() -> None:
    with pytest.raises(PluginError, match="unknown reward 'nope'"):
        get_reward("nope")
    with pytest.raises(PluginError, match="cannot import module"):
        get_reward("no_such_module:fn")
    with pytest.raises(PluginError, match="has no attribute"):
        get_reward("tests.rewards.plugins:nope")


def test_reward_pickles_for_worker_processes() -> None:
    fn = pickle.loads(pickle.dumps(get_reward("tests.rewards.plugins:scaled_length", scale=2.0)))
    assert fn(["ab"]) == [4.0]


def test_combine_is_a_weighted_sum_of_non_null_scores() -> None:
    scores = {"a": [1.0, None, 0.0], "b": [0.5, 0.5, None]}
    assert combine(scores, {"a": 2.0, "b": -1.0}) == [1.5, -0.5, 0.0]
