"""DAPO's soft overlong punishment: a length penalty that ramps up before the hard cut-off.

A completion truncated at the maximum length is usually scored as wrong, which punishes sound but
long reasoning as hard as nonsense. DAPO (Yu et al., 2025, eq. 13) instead subtracts a penalty that
grows linearly over the last `cache_length` units before `max_length`:

    0                                      if L <= max_length - cache_length
    (max_length - cache_length - L) / cache_length   if max_length - cache_length < L <= max_length
    -1                                     if L > max_length

The unit is tokens, as GRPO's `max_completion_length` is: a user who sets `max_length` to it must not
see ordinary completions punished because they were counted in characters (about 4 per token).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from posttrain.core.errors import PluginError
from rewards.answer import completion_text
from rewards.protocol import RowVerifier, Scored

UNITS = ("tokens", "chars")
_NO_TOKENS = ("overlong reward counts tokens, but this call has no `completion_ids` (TRL's GRPO passes them) and "
              "the reward has no `tokenizer`: pass tokenizer=PATH, or unit='chars' to count characters")


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

    `unit="tokens"` (the default) counts TRL's `completion_ids` when the call has them (GRPO passes
    them: no re-tokenising), else the completion re-tokenised with `tokenizer` (a path or a loaded
    tokenizer); with neither a row has no score and an error says so. `unit="chars"` counts
    characters of the completion text and ignores ids and tokenizer.

    >>> OverlongReward(max_length=10, cache_length=4, unit="chars")(["short", "eight ch", "nine char", "far too long"])
    [0.0, -0.5, -0.75, -1.0]
    >>> OverlongReward(max_length=10, cache_length=4)(["a b c"], completion_ids=[[7] * 9])
    [-0.75]
    """

    columns = ("completion_ids",)

    def __init__(self, max_length: int, cache_length: int, tokenizer: Any = None, unit: str = "tokens",
                 trust_remote_code: bool = False):
        if not (isinstance(max_length, int) and isinstance(cache_length, int) and 0 < cache_length <= max_length):
            raise PluginError(f"overlong reward: need integers 0 < cache_length <= max_length, got "
                              f"max_length={max_length!r}, cache_length={cache_length!r}")
        unit = {"characters": "chars", "token": "tokens"}.get(unit, unit)
        if unit not in UNITS:
            raise PluginError(f"overlong reward: unit must be 'tokens' or 'chars', got {unit!r}")
        self.max_length = max_length
        self.cache_length = cache_length
        self.unit = unit
        self.tokenizer = tokenizer
        self.trust_remote_code = trust_remote_code  # a tokenizer path whose own tokenizer class may run
        self._loaded: Any = None if isinstance(tokenizer, str) else tokenizer

    def _tok(self) -> Any:
        if self._loaded is None:
            from transformers import AutoTokenizer

            try:
                self._loaded = AutoTokenizer.from_pretrained(self.tokenizer, trust_remote_code=self.trust_remote_code)
            except Exception as exc:
                raise PluginError(f"overlong reward: cannot load tokenizer {self.tokenizer!r}: {exc}") from exc
        return self._loaded

    def length(self, completion: Any, ids: Sequence[int] | None = None) -> int | None:
        """Length of one completion in this reward's unit; None when tokens cannot be counted."""
        if self.unit == "chars":
            return len(completion_text(completion))
        if ids is not None:
            return len(ids)
        if self.tokenizer is None:
            return None
        return len(self._tok()(completion_text(completion), add_special_tokens=False)["input_ids"])

    def score_row(self, completion: Any, completion_ids: Sequence[int] | None = None) -> Scored:
        if completion_ids is None and _is_token_ids(completion):
            completion_ids = completion  # TRL's own soft-overlong reward is called with the ids in first place
        length = self.length(completion, completion_ids)
        if length is None:
            return Scored(None, _NO_TOKENS)
        return Scored(soft_overlong_penalty(length, self.max_length, self.cache_length))

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        if isinstance(self.tokenizer, str):
            state["_loaded"] = None  # reload from the path in the other process
        return state

    def __repr__(self) -> str:
        return f"OverlongReward(max_length={self.max_length}, cache_length={self.cache_length}, unit={self.unit!r})"


def _is_token_ids(completion: Any) -> bool:
    """A completion given as its token ids (a list of ints), as TRL's `get_soft_overlong_punishment` takes it.

    >>> _is_token_ids([1, 2, 3]), _is_token_ids([{"role": "assistant", "content": "1 2"}]), _is_token_ids([])
    (True, False, False)
    """
    return isinstance(completion, list | tuple) and bool(completion) and all(
        isinstance(t, int) and not isinstance(t, bool) for t in completion)
