from __future__ import annotations

import doctest
import pickle

import pytest

import rewards.format
from rewards.format import FormatReward, follows_format
from rewards.registry import get_reward


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("<think>5+5=10; 6+7+1=14</think>\nThe answer is \\boxed{440}.", 1.0),
        ("  <think>\nshort\n</think>\n\n42\n", 1.0),
        ("<think></think> 42", 1.0),  # empty reasoning is still the layout (R1's non-thinking mode)
        ("The answer is 42.", 0.0),  # no reasoning block
        ("<think>reasoning, cut off before the end", 0.0),
        ("<think>done</think>   \n", 0.0),  # empty answer
        ("<think>a</think> b </think> c", 0.0),  # two closing tags
        ("<think>a <think> b</think> c", 0.0),  # nested opening tag
        ("<think>a</think> b <think>c", 0.0),  # reasoning again inside the answer
        ("preamble <think>a</think> b", 0.0),  # text before the reasoning
    ],
)
def test_r1_layout(completion: str, expected: float) -> None:
    assert FormatReward()([completion]) == [expected]


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("<think>\nSome reasoning\n</think>\n<answer>\nThe answer\n</answer>", 1.0),  # R1-Zero's layout
        ("<think>r</think> The answer is <answer>4</answer>.", 1.0),
        ("<think>Missing closing</think><answer>Missing closing", 0.0),
        ("<think>r</think> 4</answer>", 0.0),
        ("<think>r</think> </answer>4<answer>", 0.0),
        ("<think>r</think> <answer>4</answer><answer>5</answer>", 0.0),
        ("<think>r</think> <answer>  </answer>", 0.0),
    ],
)
def test_answer_tags_when_used_are_one_closed_pair(completion: str, expected: float) -> None:
    """The tags are optional; a completion that opens one and never closes it is not the layout it asked for."""
    assert FormatReward()([completion]) == [expected]


def test_strict_requires_a_non_empty_box_in_the_answer() -> None:
    reward = get_reward("format", strict=True)
    completions = [
        "<think>x</think> It is \\boxed{42}.",
        "<think>x</think> It is 42.",
        "<think>\\boxed{42}</think> It is 42.",  # a box inside the reasoning does not count
        "<think>x</think> It is \\boxed{}.",
    ]
    assert reward(completions) == [1.0, 0.0, 0.0, 0.0]
    assert get_reward("format")(completions) == [1.0, 1.0, 1.0, 1.0]


def test_chat_list_completions() -> None:
    chats = [[{"role": "assistant", "content": "<think>a</think> b"}], [{"role": "assistant", "content": "b"}]]
    assert FormatReward()(chats) == [1.0, 0.0]


def test_opening_tag_may_end_the_prompt() -> None:
    prompts = ["<|User|>Compute 1+1.<|Assistant|><think>\n", "<|User|>Compute 1+1.<|Assistant|>"]
    assert FormatReward()(["1+1=2</think> 2", "1+1=2</think> 2"], prompts=prompts) == [1.0, 0.0]
    assert not follows_format("1+1=2</think> 2")


def test_picklable_and_documented() -> None:
    reward = pickle.loads(pickle.dumps(get_reward("format", strict=True)))
    assert reward(["<think>a</think> \\boxed{1}"]) == [1.0]
    result = doctest.testmod(rewards.format)
    assert result.attempted >= 4 and result.failed == 0
