"""DAPO's soft overlong punishment: a length penalty that ramps up before the hard cut-off.

A completion truncated at the maximum length is usually scored as wrong, which punishes sound but
long reasoning as hard as nonsense. DAPO (Yu et al., 2025, eq. 13) instead subtracts a penalty that
grows linearly over the last `cache_length` units before `max_length`:

    0                                      if L <= max_length - cache_length
    (max_length - cache_length - L) / cache_length   if max_length - cache_length < L <= max_length
    -1                                     if L > max_length
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from posttrain.core.errors import PluginError
from rewards.answer import completion_text
from rewards.protocol import RowVerifier, Scored


def soft_overlong_penalty(length: int, max_length: int, cache_length: int) -> float:
    """DAPO's penalty for a completion of `length` units.

    >>> [soft_overlong_penalty(n, 100, 20) for n in (50, 80, 90, 100, 101)]
    [0.0, 0.0, -0.5, -1.0, -1.0]
    """
    free = max_length - cache_length
    if length <= free:
        return 0.0
    if length > max_length:
        return -1.0
    return (free - length) / cache_length


class OverlongReward(RowVerifier):
    """DAPO soft overlong punishment: 0 up to max_length - cache_length, then down to -1 at max_length.

    Lengths are tokens when a `tokenizer` (a path or a loaded tokenizer) is given, characters
    otherwise. With a tokenizer and TRL's `completion_ids` column, the generated ids are counted as
    they are (no re-tokenising).

    >>> OverlongReward(max_length=10, cache_length=4)(["short", "eight ch", "nine char", "far too long"])
    [0.0, -0.5, -0.75, -1.0]
    """

    columns = ("completion_ids",)

    def __init__(self, max_length: int, cache_length: int, tokenizer: Any = None):
        if not (isinstance(max_length, int) and isinstance(cache_length, int) and 0 < cache_length <= max_length):
            raise PluginError(f"overlong reward: need integers 0 < cache_length <= max_length, got "
                              f"max_length={max_length!r}, cache_length={cache_length!r}")
        self.max_length = max_length
        self.cache_length = cache_length
        self.tokenizer = tokenizer
        self._loaded: Any = None if isinstance(tokenizer, str) else tokenizer

    @property
    def unit(self) -> str:
        return "characters" if self.tokenizer is None else "tokens"

    def _tok(self) -> Any:
        if self._loaded is None:
            from transformers import AutoTokenizer

            try:
                self._loaded = AutoTokenizer.from_pretrained(self.tokenizer)
            except Exception as exc:
                raise PluginError(f"overlong reward: cannot load tokenizer {self.tokenizer!r}: {exc}") from exc
        return self._loaded

    def length(self, completion: Any, ids: Sequence[int] | None = None) -> int:
        """Length of one completion in this reward's unit."""
        if self.tokenizer is None:
            return len(completion_text(completion))
        if ids is not None:
            return len(ids)
        return len(self._tok()(completion_text(completion), add_special_tokens=False)["input_ids"])

    def score_row(self, completion: Any, completion_ids: Sequence[int] | None = None) -> Scored:
        return Scored(soft_overlong_penalty(self.length(completion, completion_ids), self.max_length,
                                            self.cache_length))

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        if isinstance(self.tokenizer, str):
            state["_loaded"] = None  # reload from the path in the other process
        return state

    def __repr__(self) -> str:
        return f"OverlongReward(max_length={self.max_length}, cache_length={self.cache_length}, unit={self.unit!r})"
