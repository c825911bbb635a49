from __future__ import annotations

import doctest
import pickle

import pytest

import rewards.language
from posttrain.core.errors import PluginError
from rewards.language import LanguageReward, words_by_script
from rewards.registry import get_reward


def test_share_of_answer_words_in_the_target_language() -> None:
    reward = get_reward("language", language="en")
    completions = [
        "<think>我们先算一下</think> The answer is 42.",  # Chinese reasoning does not count against the answer
        "<think>x</think> The answer is 是 42.",  # 3 English words, 1 Chinese character
        "<think>x</think> 答案是四十二",
    ]
    assert reward(completions) == [1.0, 0.75, 0.0]


def test_chinese_target_counts_each_character_as_a_word() -> None:
    reward = LanguageReward(language="zh")
    assert reward(["<think>x</think> 答案是 42, obviously"]) == [0.75]
    assert reward(["<think>x</think> 答案是 $\\frac{a}{b}$ 和 `code_here()`"]) == [1.0]  # math and code are not words


def test_language_column_wins_over_the_option() -> None:
    reward = LanguageReward(language="en")
    completions = ["<think>x</think> Ответ: сорок два", "<think>x</think> Ответ: сорок два", "<think>x</think> 좋아요"]
    assert reward(completions, language=["ru", None, "ko"]) == [1.0, 0.0, 1.0]


def test_reasoning_part_as_in_deepseek_r1() -> None:
    reward = LanguageReward(language="en", part="reasoning")
    assert reward(["<think>First add, 然 check</think> 答案是 4", "<think>unfinished english reasoning"]) == [0.75, 1.0]
    assert LanguageReward(language="en", part="all")(["<think>two words</think> 两个"]) == [0.5]


def test_nothing_to_judge_is_none_and_unknown_language_is_an_error() -> None:
    reward = get_reward("language")
    completions = ["<think>x</think> 42", "<think>x</think> forty two", "<think>x</think> forty two"]
    scores, errors = reward.score_with_errors(completions, language=["en", "xx", None])
    assert scores == [None, None, None]
    assert errors[0] is None  # no words: not applicable, not a failure
    assert "unknown language 'xx'" in (errors[1] or "")
    assert "no target language" in (errors[2] or "")
    assert reward.error_count == 2


def test_bad_options_are_clear_errors() -> None:
    with pytest.raises(PluginError, match="unknown language 'klingon'"):
        get_reward("language", language="klingon")
    with pytest.raises(PluginError, match="part must be one of"):
        get_reward("language", part="middle")


def test_words_by_script() -> None:
    assert words_by_script("Das ist gut, 这是好的。 Это хорошо. これは良いです。 좋아요 x = y") == {
        "latin": 3, "han": 5, "cyrillic": 2, "kana": 6, "hangul": 1}
    assert words_by_script("see https://example.com/abc and \\alpha") == {"latin": 2}


def test_chat_lists_pickling_and_docstring() -> None:
    reward = pickle.loads(pickle.dumps(get_reward("language", language="zh-CN")))
    assert reward([[{"role": "assistant", "content": "<think>x</think> 四十二"}]]) == [1.0]
    result = doctest.testmod(rewards.language)
    assert result.attempted >= 3 and result.failed == 0
