"""R1's format reward: reasoning inside `<think>…</think>`, then a non-empty answer.

DeepSeek-R1-Zero is trained with this reward beside accuracy, so the model keeps its reasoning and
its answer apart (and the accuracy reward knows where to read the answer). R1-style chat templates
end the prompt with `<think>`; then the completion starts inside the reasoning, which is accepted
when the prompt shows it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rewards.answer import THINK_CLOSE, THINK_OPEN, completion_text, last_boxed


def follows_format(completion: Any, prompt: Any = None, strict: bool = False) -> bool:
    """True if the completion is `<think>reasoning</think>answer` with a non-empty answer (and a boxed one if strict).

    The opening tag may instead end the prompt (R1's chat template). Exactly one `</think>`, no tag
    inside the answer, no second `<think>`.

    >>> follows_format("<think>2+2=4</think> The answer is 4.")
    True
    >>> follows_format("The answer is 4.<think>hm</think>"), follows_format("<think>x</think> 4", strict=True)
    (False, False)
    """
    text = completion_text(completion).strip()
    if text.count(THINK_CLOSE) != 1:
        return False
    head, _, answer = text.partition(THINK_CLOSE)
    if head.startswith(THINK_OPEN):
        head = head[len(THINK_OPEN):]
    elif not (isinstance(prompt, str) and prompt.rstrip().endswith(THINK_OPEN)):
        return False
    answer = answer.strip()
    if THINK_OPEN in head or THINK_OPEN in answer or not answer:
        return False
    if strict:
        boxed = last_boxed(answer)
        return boxed is not None and bool(boxed.strip())
    return True


class FormatReward:
    """R1 format: 1.0 for `<think>…</think>` then a non-empty answer (`strict`: holding a \\boxed{}), else 0.0.

    Completions are strings or chat lists. With `strict=True` the answer must contain a non-empty
    `\\boxed{}`. When the prompt (TRL's `prompts`) ends with `<think>`, the completion may start
    inside the reasoning.

    >>> FormatReward()(["<think>7*6=42</think> It is 42.", "It is 42.", "<think>7*6</think>"])
    [1.0, 0.0, 0.0]
    >>> FormatReward(strict=True)(["<think>7*6=42</think> It is 42.", "<think>7*6=42</think> \\\\boxed{42}"])
    [0.0, 1.0]
    """

    def __init__(self, strict: bool = False):
        self.strict = bool(strict)

    def __call__(self, completions: Sequence[Any], prompts: Sequence[Any] | None = None,
                 **kwargs: Any) -> list[float | None]:
        n = len(completions)
        prompt_list = list(prompts) if prompts is not None and len(prompts) == n else [None] * n
        return [float(follows_format(c, p, self.strict)) for c, p in zip(completions, prompt_list, strict=True)]

    def __repr__(self) -> str:
        return f"FormatReward(strict={self.strict})"
