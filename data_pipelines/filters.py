"""Filters a correct sample must still pass before it becomes SFT data: R1 format, length, language
mixing, exact and near duplicates. DeepSeek-R1 filtered its distilled reasoning data for "mixed
languages, long paragraphs, and code blocks"; these are the rule-based ones.

The format and language checks are the rewards' own (`rewards.format.format_problem`,
`rewards.language.mixed_share`), so a sample kept here is one the `format` and `language` rewards
score the same way. Each check returns a reason (a short stats key) or None when the sample passes.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from posttrain.core.tools import answer_turns, is_conversation
from rewards import format as format_reward
from rewards.answer import THINK_CLOSE, THINK_OPEN, completion_text, last_boxed
from rewards.language import mixed_share

_TOKEN = re.compile(r"\w+|[^\w\s]")


class NearDuplicateSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    #: Jaccard similarity of shingle sets at or above which a sample is a near duplicate.
    threshold: float = Field(0.9, gt=0, le=1)
    #: Tokens per shingle (tokens: words, numbers, single punctuation marks).
    shingle: int = Field(3, ge=1)
    #: `prompt`: against the samples kept for the same prompt; `global`: against every kept sample.
    scope: Literal["prompt", "global"] = "prompt"


class FilterSpec(BaseModel):
    """Which filters run on samples that passed the rewards (set a key to null/false to turn it off)."""

    model_config = ConfigDict(extra="forbid")

    #: R1 format: `<think>...</think>` first, then a non-empty answer.
    format: bool = True
    #: The answer (after `</think>`) must hold a non-empty `\\boxed{}`.
    require_boxed: bool = False
    #: The reasoning inside `<think>` must not be empty.
    require_reasoning: bool = True
    #: Longest completion, in tokens of `tokenizer` (default: the recipe's base model tokenizer).
    max_tokens: int | None = Field(None, ge=1)
    tokenizer: str | None = None
    #: Longest completion in characters.
    max_chars: int | None = Field(None, ge=1)
    #: Expected language (`en`, `zh`, ...) or script (`latin`, `han`, `cjk`, ...); None: the completion's main script.
    language: str | None = None
    #: Largest share of words outside that script; null turns the language filter off.
    max_mixed: float | None = Field(0.05, ge=0, le=1)
    #: Letters needed before mixing is judged (a short answer says little).
    min_letters: int = Field(20, ge=1)
    exact_duplicates: bool = True
    near_duplicates: NearDuplicateSpec | None = Field(default_factory=NearDuplicateSpec)


def format_problem(text: Any, require_boxed: bool = False, require_reasoning: bool = True,
                   prompt: Any = None) -> str | None:
    """None if `text` has R1's format (one `<think>` block first, then an answer), else what is wrong.

    The `format` reward's check, with the reasoning required by default: reasoning data needs some.

    >>> format_problem("<think>1+1=2</think> The answer is \\\\boxed{2}.", require_boxed=True) is None
    True
    >>> format_problem("The answer is 2.")
    'no <think> block at the start'
    """
    return format_reward.format_problem(text, prompt, require_boxed=require_boxed,
                                        require_reasoning=require_reasoning)


def answer_problem(text: Any, require_boxed: bool = False, prompt: Any = None) -> str | None:
    """The format check of a non-reasoning answer (DeepSeek-V3's non-reasoning SFT data): no `<think>` block is
    needed; one that is there must still be well formed (its reasoning may be empty).

    >>> answer_problem("Paris is the capital of France.") is None
    True
    >>> answer_problem("<think></think> Paris.") is None, answer_problem("   ")
    (True, 'empty answer')
    """
    body = completion_text(text).strip()
    if THINK_OPEN in body or THINK_CLOSE in body:
        return format_problem(text, require_boxed, require_reasoning=False, prompt=prompt)
    if not body:
        return "empty answer"
    if require_boxed and not (last_boxed(body) or "").strip():
        return "no \\boxed{} answer"
    return None


def is_language_mixed(text: str, language: str | None = None, max_mixed: float = 0.05, min_letters: int = 20) -> bool:
    """True when more than `max_mixed` of the words are outside the expected (or main) script.

    Words are counted as the `language` reward counts them (`rewards.language.mixed_share`); a text
    with fewer than `min_letters` letters in its words is too short to judge.

    >>> is_language_mixed("Let us add the digits first, then carry the one.")
    False
    >>> is_language_mixed("Let us add the digits first, 然后我们进位 then carry the one.")
    True
    """
    share, letters = mixed_share(text, language)
    return letters >= min_letters and share > max_mixed


def normalize(text: str) -> str:
    """Whitespace-collapsed text: exact duplicates are equal after this."""
    return " ".join(text.split())


def shingles(text: str, k: int = 3) -> frozenset[tuple[str, ...]]:
    """Sets of k consecutive tokens (the whole text when shorter), lower-cased."""
    tokens = _TOKEN.findall(text.lower())
    if len(tokens) <= k:
        return frozenset([tuple(tokens)])
    return frozenset(tuple(tokens[i:i + k]) for i in range(len(tokens) - k + 1))


def jaccard(a: frozenset[tuple[str, ...]], b: frozenset[tuple[str, ...]]) -> float:
    if not a and not b:
        return 1.0
    inter = len(a & b)
    return inter / (len(a) + len(b) - inter)


class NearDuplicateIndex:
    """Kept samples' shingle sets with an inverted index: a query compares only with samples sharing a shingle."""

    def __init__(self, threshold: float = 0.9, k: int = 3):
        self.threshold, self.k = threshold, k
        self.sets: list[frozenset[tuple[str, ...]]] = []
        self.postings: dict[tuple[str, ...], list[int]] = defaultdict(list)

    def __len__(self) -> int:
        return len(self.sets)

    def find(self, text: str) -> int | None:
        """Index of a kept sample at least `threshold` similar to `text`, or None."""
        query = shingles(text, self.k)
        shared: Counter[int] = Counter()
        for sh in query:
            shared.update(self.postings.get(sh, ()))
        for idx, inter in shared.most_common():
            other = self.sets[idx]
            if inter / (len(query) + len(other) - inter) >= self.threshold:
                return idx
            if inter / len(query) < self.threshold:
                break  # sorted by shared count, and Jaccard <= shared / |query|: no later one can match
        return None

    def add(self, text: str) -> None:
        sh = shingles(text, self.k)
        idx = len(self.sets)
        self.sets.append(sh)
        for s in sh:
            self.postings[s].append(idx)


def sample_views(completion: Any) -> tuple[str, str, str]:
    """(text, identity, whole) of a sample, what each filter reads. A string is all three. A tool-using
    conversation's `text` is the model's own turns (the format, language and contamination checks: a tool's output
    is not the model's writing); its `identity` adds the programs it ran (two answers that ran different programs
    are not duplicates); its `whole` adds the tools' outputs too (the length checks: SFT trains on all of it).

    >>> call = {"function": {"name": "python", "arguments": {"code": "print(6*7)"}}}
    >>> sample_views([{"role": "assistant", "content": "<think>run</think>", "tool_calls": [call]},
    ...               {"role": "tool", "content": "42"}, {"role": "assistant", "content": "It is 42."}])[2]
    '<think>run</think>\\n{"code": "print(6*7)"}\\n42\\nIt is 42.'
    """
    text = completion_text(completion)
    if not is_conversation(completion):
        return text, text, text
    calls = [json.dumps((c.get("function") or {}).get("arguments"), sort_keys=True, ensure_ascii=False)
             for m in answer_turns(completion) for c in m.get("tool_calls") or []]
    parts = []
    for m in completion:
        parts.append(completion_text([m]) if m.get("role") == "assistant" else str(m.get("content") or ""))
        parts += [json.dumps((c.get("function") or {}).get("arguments"), sort_keys=True, ensure_ascii=False)
                  for c in m.get("tool_calls") or []]
    return text, "\n".join([text, *calls]), "\n".join(parts)


class SampleFilter:
    """Runs the configured checks on one prompt's passing samples, remembering what was kept. A sample is a string,
    or a tool-using conversation (`sample_views` says which part of it each check reads)."""

    def __init__(self, spec: FilterSpec, count_tokens: object = None):
        self.spec = spec
        #: `fn(text) -> int`, needed when `max_tokens` is set.
        self.count_tokens = count_tokens
        self.seen: set[str] = set()
        self.global_index = self._index("global")
        self._prompt_index: NearDuplicateIndex | None = None

    def _index(self, scope: str) -> NearDuplicateIndex | None:
        near = self.spec.near_duplicates
        return NearDuplicateIndex(near.threshold, near.shingle) if near and near.scope == scope else None

    def start_prompt(self) -> None:
        """A new prompt begins: per-prompt near-duplicate checks start empty."""
        self._prompt_index = self._index("prompt")

    def check(self, completion: Any, prompt: Any = None, reasoning: bool = True) -> str | None:
        """The first failing filter's reason, or None (the sample may be kept).

        `prompt`: a prompt that ends with `<think>` opened the reasoning for the completion. `reasoning=False`: a
        non-reasoning answer, which passes the format check without a `<think>` block.
        """
        text, identity, whole = sample_views(completion)
        spec = self.spec
        if spec.format:
            problem = (format_problem(text, spec.require_boxed, spec.require_reasoning, prompt) if reasoning
                       else answer_problem(text, spec.require_boxed, prompt))
            if problem is not None:
                return "format"
        if spec.max_chars is not None and len(whole) > spec.max_chars:
            return "max_length"
        if spec.max_tokens is not None:
            if not callable(self.count_tokens):
                raise TypeError("max_tokens needs a token counter")
            if self.count_tokens(whole) > spec.max_tokens:
                return "max_length"
        if spec.max_mixed is not None and is_language_mixed(text, spec.language, spec.max_mixed, spec.min_letters):
            return "language_mixing"
        if spec.exact_duplicates and normalize(identity) in self.seen:
            return "duplicate"
        for index in (self._prompt_index, self.global_index):
            if index is not None and index.find(identity) is not None:
                return "near_duplicate"
        return None

    def add(self, completion: Any) -> None:
        """Record a kept sample (for the duplicate checks of later ones)."""
        identity = sample_views(completion)[1]
        if self.spec.exact_duplicates:
            self.seen.add(normalize(identity))
        for index in (self._prompt_index, self.global_index):
            if index is not None:
                index.add(identity)
