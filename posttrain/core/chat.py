"""Chat templates that open the reasoning in the prompt, and the completion the rewards must see.

DeepSeek-R1's template and Qwen3's thinking templates end the generation prompt with `<think>\\n`: the
model's completion starts *inside* its reasoning (`2+2=4</think> The answer is 4.`). Whoever rendered
the prompt knows that; a reward given only the completion, or a conversational prompt as a message list
(TRL's GRPO), does not, and the R1 format reward would score every such completion 0.

The rule, everywhere posttrain renders a template itself (the `hf`/`vllm` generators behind eval, distill
and judges, and GRPO's rollouts): a completion is the whole assistant turn, i.e. what the rendered prompt
opened plus what the model wrote: `<think>\\n2+2=4</think> The answer is 4.`. It is decided from the rendered
prompt only, never from the completion: a completion that writes `</think>` without an opening tag is *not*
read as "the reasoning began in the prompt" (that would let a model collect the format reward on a template
that never opens `<think>`, by skipping the tag), and one that opens a second `<think>` keeps both tags
(and fails the format check, as it should). A non-thinking mode that closes an empty block in the prompt
(`<think>\n\n</think>\n\n`, Qwen3's `enable_thinking=False`) is carried over the same way.
"""

from __future__ import annotations

import re
from typing import Any

#: `<think>` at the very end of the prompt, or an empty `<think> </think>` block there (non-thinking mode).
_OPENER = re.compile(r"<think>\s*(?:</think>\s*)?\Z")


def think_opener(rendered_prompt: str) -> str:
    """What a rendered prompt opened of the assistant's reasoning: a trailing `<think>` (whitespace kept), or the
    empty `<think></think>` block a non-thinking mode puts there (Qwen3's `enable_thinking=False`); else `""`.

    >>> think_opener("<|im_start|>assistant\\n<think>\\n"), think_opener("<|im_start|>assistant\\n")
    ('<think>\\n', '')
    >>> think_opener("<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n")
    '<think>\\n\\n</think>\\n\\n'
    """
    found = _OPENER.search(rendered_prompt)
    return found.group(0) if found else ""


def with_opener(completion: Any, opener: str) -> Any:
    """`completion` (a string, or a chat list whose last assistant message holds it) with `opener` in front.

    >>> with_opener("2+2=4</think> 4", "<think>\\n")
    '<think>\\n2+2=4</think> 4'
    >>> with_opener([{"role": "assistant", "content": "x</think> 4"}], "<think>")
    [{'role': 'assistant', 'content': '<think>x</think> 4'}]
    """
    if not opener:
        return completion
    if isinstance(completion, str):
        return opener + completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        last = completion[-1]
        if last.get("reasoning_content") or last.get("thinking"):
            return completion  # a parsed turn keeps its reasoning apart: the rewards rebuild the tags from it
        return [*completion[:-1], {**last, "content": opener + str(last.get("content") or "")}]
    return completion


def render_generation_prompt(tokenizer: Any, messages: list[dict[str, Any]], **template_kwargs: Any) -> str:
    """The text a model is prompted with for `messages`: its chat template with the generation prompt."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **template_kwargs)
