"""Decontamination: drop training text that shares an n-gram with the evaluation set.

The approach open-r1 (after s1) uses: lower-case, split into words, index every n-gram of every
eval text, and flag a training text that contains any of them. Two changes for short prompts: tokens
are words, numbers and single punctuation marks (so `365+75.` is 4 tokens, not 1), and a text with
fewer than n tokens is one n-gram of its own, so a short eval prompt is still matched when a training
text contains all of it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

_TOKEN = re.compile(r"\w+|[^\w\s]")


class DecontaminationSpec(BaseModel):
    """Against the stage's eval set (and any extra sets), on the prompt (and optionally the completion)."""

    model_config = ConfigDict(extra="forbid")

    #: n-gram length in tokens (open-r1 uses 8 words; short task prompts want less).
    ngram: int = Field(8, ge=1)
    #: Which text of a training sample is checked.
    fields: list[Literal["prompt", "completion"]] = Field(default_factory=lambda: ["prompt"])
    #: Extra eval sets to decontaminate against, besides the stage's own `eval` (SourceSpec mappings).
    against: list[dict[str, Any]] = Field(default_factory=list)


def tokens(text: str) -> list[str]:
    """Lower-cased words, numbers and punctuation marks.

    >>> tokens("Compute 365+75.")
    ['compute', '365', '+', '75', '.']
    """
    return _TOKEN.findall(text.lower())


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    """Every n-gram of `text`; a shorter non-empty text is one gram of its own."""
    toks = tokens(text)
    if not toks:
        return set()
    if len(toks) < n:
        return {tuple(toks)}
    return {tuple(toks[i:i + n]) for i in range(len(toks) - n + 1)}


def prompt_text(prompt: Any) -> str:
    """A prompt's words: a string, or a chat's message contents joined."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list):
        return "\n".join(str(m.get("content", "")) for m in prompt if isinstance(m, dict))
    return str(prompt)


class Decontaminator:
    """An n-gram index of eval texts; `match(text)` says which eval text a training text overlaps."""

    def __init__(self, eval_texts: Iterable[str], n: int = 8):
        self.n = n
        self.index: dict[tuple[str, ...], int] = {}
        #: Grams shorter than n, from short eval texts: matched as contiguous token runs.
        self.short: dict[tuple[str, ...], int] = {}
        self.texts: list[str] = []
        for i, text in enumerate(eval_texts):
            self.texts.append(text)
            for gram in ngrams(text, n):
                (self.short if len(gram) < n else self.index).setdefault(gram, i)

    def __len__(self) -> int:
        return len(self.texts)

    def match(self, text: str) -> int | None:
        """Index of an eval text sharing an n-gram with `text` (or contained in it when short), else None.

        >>> Decontaminator(["Compute 365+75."], n=8).match("Please compute 365 + 75. Show your work.")
        0
        """
        toks = tokens(text)
        n = self.n
        for i in range(max(0, len(toks) - n + 1)):
            hit = self.index.get(tuple(toks[i:i + n]))
            if hit is not None:
                return hit
        if self.short:
            lengths = {len(g) for g in self.short}
            for length in lengths:
                for i in range(len(toks) - length + 1):
                    hit = self.short.get(tuple(toks[i:i + length]))
                    if hit is not None:
                        return hit
        return None
