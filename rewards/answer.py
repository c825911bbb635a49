"""Where the answer is: completion text (string or chat list), the part after `</think>`, the inside of
`<answer>…</answer>`, the last `\\boxed{}`.

Reading the answer from the wrong place (inside `<think>`, or the chat template's text) is the
most common reason a reward sits at 0; every reward reads it through these functions.
"""

from __future__ import annotations

import re
from typing import Any

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+#-]*)[^\n]*\n(.*?)```", re.DOTALL)


def completion_text(completion: Any) -> str:
    """A completion as TRL passes it: a string, or a chat list whose last assistant message is the text.

    A tool-using completion (`[assistant (tool_calls), tool, assistant, ...]`) is the model's turns since the last
    other message, joined by newlines: its reasoning, then its answer; the tools' outputs are not the model's
    text and are left out (a program that prints `\\boxed{...}` does not answer for the model).

    >>> completion_text([{"role": "assistant", "content": "hi"}])
    'hi'
    >>> completion_text([{"role": "assistant", "content": "<think>run it</think>", "tool_calls": [{}]},
    ...                  {"role": "tool", "content": "42"}, {"role": "assistant", "content": "The answer is 42."}])
    '<think>run it</think>\\nThe answer is 42.'
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return _message_text(completion)
    if isinstance(completion, list | tuple):
        messages = [m for m in completion if isinstance(m, dict)]
        turns: list[str] = []
        for m in messages:
            if m.get("role") == "assistant":
                turns.append(_message_text(m))
            elif m.get("role") != "tool":
                turns = []  # a user (or system) message: what came before it is history, not this answer
        if turns:
            return "\n".join(turns)
        return _message_text(messages[-1]) if messages else ""
    return "" if completion is None else str(completion)


def _message_text(message: dict[str, Any]) -> str:
    """A message's text. A turn parsed by its template's response schema keeps the reasoning beside the content
    (`reasoning_content`, or `thinking`): it is put back as `<think>reasoning</think>content`.

    >>> _message_text({"role": "assistant", "reasoning_content": "2+2=4", "content": " 4"})
    '<think>2+2=4</think> 4'
    """
    content = str(message.get("content", ""))
    reasoning = message.get("reasoning_content") or message.get("thinking")
    if isinstance(reasoning, str) and reasoning.strip():
        return f"{THINK_OPEN}{reasoning}{THINK_CLOSE}{content}"
    return content


def split_think(text: str) -> tuple[str | None, str]:
    """(reasoning, answer): the answer is what follows the last `</think>`; (None, text) without one.

    >>> split_think("<think>2+2=4</think> The answer is 4.")
    ('2+2=4', ' The answer is 4.')
    """
    if THINK_CLOSE not in text:
        return None, text
    head, _, tail = text.rpartition(THINK_CLOSE)
    start = head.find(THINK_OPEN)
    return (head[start + len(THINK_OPEN):] if start >= 0 else head), tail


def answer_text(completion: Any) -> str:
    """The part of a completion that holds its answer (after `</think>` when present)."""
    return split_think(completion_text(completion))[1]


def answer_tag(text: str) -> str | None:
    """The inside of the last `<answer>…</answer>` (to the end when the closing tag never came); None without one.

    R1-Zero's prompt (open-r1's, TinyZero's) asks for the answer in these tags: what they hold is the answer,
    whatever else the text says around them.

    >>> answer_tag("<answer> 12 </answer>"), answer_tag("x <answer>3 and cut off"), answer_tag("plain 4")
    (' 12 ', '3 and cut off', None)
    """
    start = text.rfind(ANSWER_OPEN)
    if start < 0:
        return None
    inside = text[start + len(ANSWER_OPEN):]
    return inside.partition(ANSWER_CLOSE)[0]


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` (or `\\fbox{...}`), braces balanced; None if there is none.

    >>> last_boxed(r"\\boxed{1} then \\boxed{\\frac{1}{2}}")
    '\\\\frac{1}{2}'
    """
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    found = _braced(text, text.find("{", start))
    return found[0] if found else None


def boxed_contents(text: str) -> list[str]:
    """Contents of every `\\boxed{...}` / `\\fbox{...}` in `text`, in order, braces balanced.

    >>> boxed_contents(r"x = \\boxed{3}, y = \\boxed{\\frac{1}{2}}")
    ['3', '\\\\frac{1}{2}']
    """
    return [content for _, _, content in boxed_spans(text)]


def boxed_spans(text: str) -> list[tuple[int, int, str]]:
    """(start, end, content) of every `\\boxed{...}` / `\\fbox{...}` in `text`: `text[start:end]` is the whole box.

    >>> boxed_spans(r"a \\boxed{1} b")
    [(2, 11, '1')]
    """
    out = []
    start = 0
    while True:
        hits = [i for i in (text.find("\\boxed", start), text.find("\\fbox", start)) if i >= 0]
        if not hits:
            return out
        found = _braced(text, text.find("{", min(hits)))
        if found is None:
            return out
        out.append((min(hits), found[1] + 1, found[0]))
        start = found[1] + 1


def _braced(text: str, i: int) -> tuple[str, int] | None:
    """(content, index of the closing brace) of the balanced group opening at `text[i]`; None when `i` < 0 or
    the group never closes."""
    if i < 0:
        return None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j], j
    return None


def last_code_block(text: str) -> tuple[str | None, str] | None:
    """(language tag or None, code) of the last fenced block; None if there is none."""
    blocks = _FENCE.findall(text)
    if not blocks:
        return None
    lang, code = blocks[-1]
    return (lang.lower() or None), code
