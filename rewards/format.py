"""R1's format reward: reasoning inside `<think>…</think>`, then a non-empty answer.

R1-Zero's prompt (open-r1's, TinyZero's) also wraps the answer in `<answer>…</answer>`: the tags are
optional, but a completion that uses them must close them once, around a non-empty answer, as the
math reward reads what is inside them.

DeepSeek-R1-Zero is trained with this reward beside accuracy, so the model keeps its reasoning and
its answer apart (and the accuracy reward knows where to read the answer). R1-style chat templates
end the prompt with `<think>`; then the completion starts inside the reasoning, which is accepted
when the prompt shows it.
"""

from __future__ import annotations

from typing import Any

from rewards.answer import ANSWER_CLOSE, ANSWER_OPEN, THINK_CLOSE, THINK_OPEN, answer_tag, completion_text, last_boxed
from rewards.protocol import RowVerifier, Scored


def format_problem(completion: Any, prompt: Any = None, *, require_boxed: bool = False,
                   require_reasoning: bool = False) -> str | None:
    """None if the completion has R1's layout, else what is wrong (the one format check: reward and SFT filter).

    The layout: `<think>reasoning</think>answer`, one of each tag, a non-empty answer (in one closed
    `<answer>…</answer>` pair when it uses the tags). The opening tag may instead end the prompt (R1's chat
    template). `require_boxed`: the answer holds a non-empty
    `\\boxed{}`. `require_reasoning`: the reasoning is not empty (R1's non-thinking mode leaves it empty,
    which is still the layout; reasoning data needs some).

    >>> format_problem("<think>2+2=4</think> The answer is 4.") is None
    True
    >>> format_problem("The answer is 4."), format_problem("<think>x</think> 4", require_boxed=True)
    ('no <think> block at the start', 'no \\\\boxed{} answer')
    """
    text = completion_text(completion).strip()
    if text.startswith(THINK_OPEN):
        body = text[len(THINK_OPEN):]
    elif isinstance(prompt, str) and prompt.rstrip().endswith(THINK_OPEN):
        body = text
    else:
        return "no <think> block at the start"
    if THINK_OPEN in body or body.count(THINK_CLOSE) != 1:
        return "expected exactly one <think> and one </think>"
    reasoning, _, answer = body.partition(THINK_CLOSE)
    if require_reasoning and not reasoning.strip():
        return "empty reasoning"
    if not answer.strip():
        return "no answer after </think>"
    if ANSWER_OPEN in answer or ANSWER_CLOSE in answer:
        if answer.count(ANSWER_OPEN) != 1 or answer.count(ANSWER_CLOSE) != 1 or \
                answer.index(ANSWER_OPEN) > answer.index(ANSWER_CLOSE):
            return "expected one <answer> and then one </answer>"
        if not (answer_tag(answer) or "").strip():
            return "empty <answer></answer>"
    if require_boxed and not (last_boxed(answer) or "").strip():
        return "no \\boxed{} answer"
    return None


def follows_format(completion: Any, prompt: Any = None, strict: bool = False) -> bool:
    """True if the completion is `<think>reasoning</think>answer` with a non-empty answer (and a boxed one if strict).

    >>> follows_format("<think>2+2=4</think> The answer is 4.")
    True
    >>> follows_format("The answer is 4.<think>hm</think>"), follows_format("<think>x</think> 4", strict=True)
    (False, False)
    """
    return format_problem(completion, prompt, require_boxed=strict) is None


class FormatReward(RowVerifier):
    """R1 format: 1.0 for `<think>…</think>` then a non-empty answer (`strict`: holding a \\boxed{}), else 0.0.

    Completions are strings or chat lists. With `strict=True` the answer must contain a non-empty
    `\\boxed{}`; with `require_reasoning=True` the reasoning must not be empty. When the prompt (TRL's
    `prompts`) ends with `<think>`, the completion may start inside the reasoning.

    >>> FormatReward()(["<think>7*6=42</think> It is 42.", "It is 42.", "<think>7*6</think>"])
    [1.0, 0.0, 0.0]
    >>> FormatReward(strict=True)(["<think>7*6=42</think> It is 42.", "<think>7*6=42</think> \\\\boxed{42}"])
    [0.0, 1.0]
    """

    columns = ("prompts",)

    def __init__(self, strict: bool = False, require_reasoning: bool = False):
        self.strict = bool(strict)
        self.require_reasoning = bool(require_reasoning)

    def score_row(self, completion: Any, prompts: Any = None) -> Scored:
        problem = format_problem(completion, prompts, require_boxed=self.strict,
                                 require_reasoning=self.require_reasoning)
        return Scored(float(problem is None))

    def __repr__(self) -> str:
        return f"FormatReward(strict={self.strict}, require_reasoning={self.require_reasoning})"
