from __future__ import annotations

from rewards.answer import answer_text, completion_text, last_boxed, last_code_block, split_think
from rewards.format import FormatReward


def test_completion_text_from_chat_list() -> None:
    chat = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    assert completion_text(chat) == "a"
    assert completion_text([{"role": "assistant", "content": "x"}]) == "x"
    assert completion_text("plain") == "plain"


def test_a_parsed_turn_keeps_its_reasoning() -> None:
    # A template's response schema (TRL's parse_response) moves the reasoning out of `content`: put it back.
    parsed = [{"role": "assistant", "reasoning_content": "1+2=3", "content": " The answer is 3."}]
    assert completion_text(parsed) == "<think>1+2=3</think> The answer is 3."
    assert completion_text({"role": "assistant", "thinking": "x", "content": "y"}) == "<think>x</think>y"
    assert completion_text([{"role": "assistant", "reasoning_content": "", "content": "y"}]) == "y"
    assert FormatReward()([parsed]) == [1.0]


def test_answer_is_after_think() -> None:
    text = "<think>maybe \\boxed{3}</think>\nThe answer is \\boxed{4}."
    think, answer = split_think(text)
    assert think == "maybe \\boxed{3}"
    assert last_boxed(answer) == "4"
    assert answer_text("<think>a</think>b</think>c") == "c"
    assert split_think("no think here") == (None, "no think here")


def test_last_boxed_balances_braces() -> None:
    assert last_boxed(r"\boxed{1} and \boxed{\frac{1}{2}}") == r"\frac{1}{2}"
    assert last_boxed(r"\boxed{unclosed") is None
    assert last_boxed("nothing") is None


def test_last_code_block() -> None:
    text = "```python\nprint(1)\n```\ntext\n```cpp\nint main(){}\n```"
    assert last_code_block(text) == ("cpp", "int main(){}\n")
    assert last_code_block("```\nx=1\n```") == (None, "x=1\n")
    assert last_code_block("no code") is None
