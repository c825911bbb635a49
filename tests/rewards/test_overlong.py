from __future__ import annotations

import doctest
import pickle
from pathlib import Path

import pytest

import rewards.overlong
from posttrain.core.errors import PluginError
from rewards.overlong import OverlongReward, soft_overlong_penalty
from rewards.registry import get_reward


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny word-level tokenizer (digits are single tokens), saved like a model's."""
    from data_pipelines.tasks.arithmetic import corpus
    from posttrain.core.tiny import train_tokenizer

    out = tmp_path_factory.mktemp("tok")
    train_tokenizer(corpus(), 512).save_pretrained(out)
    return out


def test_dapo_schedule() -> None:
    # max 20, cache 8: free up to 12, then linear down to -1 at 20, -1 past it.
    assert [soft_overlong_penalty(n, 20, 8) for n in (0, 12, 13, 16, 20, 21, 500)] == [
        0.0, 0.0, -0.125, -0.5, -1.0, -1.0, -1.0]


def test_characters_only_when_asked() -> None:
    reward = get_reward("overlong", max_length=10, cache_length=4, unit="chars")
    assert reward(["x" * 6, "x" * 8, [{"role": "assistant", "content": "x" * 12}]]) == [0.0, -0.5, -1.0]
    # characters stay characters, whatever ids TRL passes
    assert reward(["x" * 6], completion_ids=[[1] * 50]) == [0.0]


def test_tokens_by_default_from_trl_completion_ids() -> None:
    """GRPO's max_completion_length is in tokens: a 1,000-token completion (~4,000 characters) under a
    2,048-token limit is not punished, though it is longer than 2,048 characters."""
    reward = get_reward("overlong", max_length=2048, cache_length=512)
    text = "word " * 800  # 4,000 characters
    assert reward([text, text, text], completion_ids=[[5] * 1000, [5] * 1792, [5] * 3000]) == [0.0, -0.5, -1.0]


@pytest.mark.parametrize("pickled", [False, True])
def test_token_ids_in_first_place_as_trl_calls_its_own_overlong_reward(pickled: bool) -> None:
    """TRL's `get_soft_overlong_punishment` is called `reward(completion_ids)`: the ids stand where completions go.
    A user who swaps it for ours (or a worker that got it pickled) must get scores, not `None`."""
    reward = get_reward("overlong", max_length=100, cache_length=20)
    if pickled:
        reward = pickle.loads(pickle.dumps(reward))
    assert reward([[1] * 50, [1] * 90, [1] * 110]) == [0.0, pytest.approx(-0.5), -1.0]
    assert reward.score_with_errors([[7] * 10])[1] == [None]


def test_tokens_without_ids_or_tokenizer_are_an_error_not_a_character_count() -> None:
    reward = get_reward("overlong", max_length=10, cache_length=4)
    scores, errors = reward.score_with_errors(["x" * 100, "x"])
    assert scores == [None, None]
    assert errors[0] is not None and "completion_ids" in errors[0] and "unit='chars'" in errors[0]


def test_tokens_with_a_tokenizer_path(tokenizer_dir: Path) -> None:
    text = "12345678"  # 8 characters, 8 tokens (digits are single tokens)
    long_text = "<think>5+5=10</think>"  # 21 characters, 8 tokens
    by_tokens = get_reward("overlong", max_length=10, cache_length=4, tokenizer=str(tokenizer_dir))
    by_chars = get_reward("overlong", max_length=10, cache_length=4, unit="chars")
    assert by_tokens([text, long_text]) == [-0.5, -0.5]
    assert by_chars([text, long_text]) == [-0.5, -1.0]
    # TRL's completion_ids are counted as generated, without re-tokenising.
    assert by_tokens([long_text], completion_ids=[[1] * 11]) == [-1.0]
    assert by_tokens([long_text], completion_ids=[[1] * 3]) == [0.0]


def test_loaded_tokenizer_object_and_pickling(tokenizer_dir: Path) -> None:
    from transformers import AutoTokenizer

    reward = OverlongReward(max_length=10, cache_length=4, tokenizer=AutoTokenizer.from_pretrained(tokenizer_dir))
    assert reward(["<think>5+5=10</think>"]) == [-0.5]
    by_path = OverlongReward(max_length=10, cache_length=4, tokenizer=str(tokenizer_dir))
    by_path(["1"])
    clone = pickle.loads(pickle.dumps(by_path))
    assert clone._loaded is None and clone(["<think>5+5=10</think>"]) == [-0.5]


@pytest.mark.parametrize("unit", ["tokens", "chars"])
def test_scores_survive_a_pickle_round_trip(unit: str) -> None:
    """TRL's soft-overlong rows (max 100, cache 20: 50 -> 0, 90 -> -0.5, 110 -> -1) after the round trip TRL's
    async GRPO worker puts its rewards through: the same scores and no error, in either unit."""
    reward = get_reward("overlong", max_length=100, cache_length=20, unit=unit)
    reward(["warm"], completion_ids=[[1]])  # used before it is pickled, as a trainer's reward is
    clone = pickle.loads(pickle.dumps(reward))
    lengths = [50, 90, 110]
    completions = [[{"content": "x" * n}] for n in lengths]
    for fn in (reward, clone):
        assert fn.score_with_errors(completions, completion_ids=[[1] * n for n in lengths], prompts=["p"] * 3) == (
            [0.0, -0.5, -1.0], [None, None, None])


def test_bad_options_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(PluginError, match="cache_length <= max_length"):
        get_reward("overlong", max_length=10, cache_length=20)
    with pytest.raises(PluginError, match="bad options"):
        get_reward("overlong")
    with pytest.raises(PluginError, match="unit must be"):
        get_reward("overlong", max_length=10, cache_length=4, unit="words")
    reward = get_reward("overlong", max_length=10, cache_length=4, tokenizer=str(tmp_path / "missing"))
    scores, errors = reward.score_with_errors(["abc"])
    assert scores == [None]
    assert "cannot load tokenizer" in (errors[0] or "")


def test_docstring_examples_run() -> None:
    result = doctest.testmod(rewards.overlong)
    assert result.attempted >= 2 and result.failed == 0
