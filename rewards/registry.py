"""Find a reward by name and make it safe to call: `get_reward("math")`, `get_reward("pkg.mod:fn")`.

Every reward has TRL's signature, `fn(completions, **columns) -> list[float | None]`, so it drops
straight into `trl.GRPOTrainer(reward_funcs=...)`. `None` means "no score" (not applicable or
failed), never a silent 0. What `get_reward` returns wraps the function so that one bad row cannot
take a batch down: if the batch raises, rows are scored one by one, a raising row gets `None`, and
its error is logged, counted and kept in `last_errors`.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from typing import Any

from posttrain.core.errors import PluginError
from posttrain.core.plugins import load_object

log = logging.getLogger("posttrain.rewards")

ENTRY_POINT_GROUP = "posttrain.rewards"
#: Built-in rewards: name -> `module:attr` (a function, or a class whose instances are called).
BUILTINS: dict[str, str] = {
    "math": "rewards.math:MathReward",
    "format": "rewards.format:FormatReward",
    "language": "rewards.language:LanguageReward",
    "overlong": "rewards.overlong:OverlongReward",
    "code": "rewards.code:CodeReward",
    "genrm": "rewards.genrm:GenRMReward",
    "reward_model": "rewards.reward_model:RewardModelReward",
}
#: Keyword arguments TRL passes that are not per-row columns.
_NOT_COLUMNS = {"trainer_state", "log_extra", "log_metric", "environments"}
_MAX_LOGGED_ERRORS = 5


class Reward:
    """A reward function with per-row error isolation and counters; picklable when its function is."""

    def __init__(self, name: str, fn: Callable[..., Sequence[float | None]]):
        self.name = name
        self.__name__ = name  # TRL logs rewards/<__name__>/mean
        self.fn = fn
        self.calls = 0
        self.rows = 0
        self.error_count = 0
        #: Per row of the last call: None, or the message of the error that made it `None`/0.
        self.last_errors: list[str | None] = []

    def __call__(self, completions: Sequence[Any], **kwargs: Any) -> list[float | None]:
        n = len(completions)
        self.calls += 1
        self.rows += n
        try:
            scores = _checked(self.fn(completions=completions, **kwargs), n, self.name)
            errors = list(getattr(self.fn, "last_errors", None) or [None] * n)
        except Exception as exc:
            if n == 1:
                scores, errors = [None], [f"{type(exc).__name__}: {exc}"]
            else:
                scores, errors = self._row_by_row(completions, kwargs)
        self.last_errors = errors if len(errors) == n else [None] * n
        self._account(kwargs.get("log_metric"))
        return scores

    def _row_by_row(self, completions: Sequence[Any], kwargs: dict[str, Any]) -> tuple[list[float | None], list]:
        scores: list[float | None] = []
        errors: list[str | None] = []
        n = len(completions)
        for i in range(n):
            row_kwargs = {k: (v[i] if k not in _NOT_COLUMNS and isinstance(v, list | tuple) and len(v) == n else v)
                          for k, v in kwargs.items()}
            try:
                (score,) = _checked(self.fn(completions=[completions[i]], **row_kwargs), 1, self.name)
                row_errors = getattr(self.fn, "last_errors", None) or [None]
                scores.append(score)
                errors.append(row_errors[0])
            except Exception as exc:
                scores.append(None)
                errors.append(f"{type(exc).__name__}: {exc}")
        return scores, errors

    def _account(self, log_metric: Callable[[str, float], None] | None) -> None:
        new = [e for e in self.last_errors if e is not None]
        for message in new:
            self.error_count += 1
            if self.error_count <= _MAX_LOGGED_ERRORS:
                log.warning("reward %s: row failed: %s", self.name, message[:500])
            elif self.error_count == _MAX_LOGGED_ERRORS + 1:
                log.warning("reward %s: more rows failed; further errors are counted, not logged", self.name)
        if log_metric is not None and self.last_errors:
            log_metric(f"rewards/{self.name}/error_rate", len(new) / len(self.last_errors))

    def __repr__(self) -> str:
        return f"Reward({self.name!r}, {self.fn!r})"


def _checked(scores: Any, n: int, name: str) -> list[float | None]:
    scores = list(scores)
    if len(scores) != n:
        raise ValueError(f"reward {name!r} returned {len(scores)} scores for {n} completions")
    out: list[float | None] = []
    for s in scores:
        if s is None or (isinstance(s, float) and math.isnan(s)):
            out.append(None)
        elif isinstance(s, int | float):
            out.append(float(s))
        else:
            raise TypeError(f"reward {name!r} returned {type(s).__name__}, expected a float or None")
    return out


def resolve(name_or_path: str) -> Any:
    """A built-in name, an entry point in group `posttrain.rewards`, or `module:function` / `module.function`."""
    if name_or_path in BUILTINS:
        return load_object(BUILTINS[name_or_path])
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name_or_path:
            try:
                return ep.load()
            except Exception as exc:
                raise PluginError(f"reward entry point {name_or_path!r} ({ep.value}) failed to load: {exc}") from exc
    if ":" not in name_or_path and "." not in name_or_path:
        known = ", ".join(sorted(set(BUILTINS) | {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)}))
        raise PluginError(f"unknown reward {name_or_path!r}: use a built-in ({known}) or 'module:function'")
    return load_object(name_or_path)


def get_reward(name_or_path: str, **kwargs: Any) -> Reward:
    """Resolve a reward and bind its options: a class is instantiated with them, a function gets them per call.

    >>> get_reward("tests.rewards.plugins:length_reward")(["ab", "abcd"])
    [2.0, 4.0]
    """
    target = resolve(name_or_path)
    name = name_or_path.rpartition(":")[2].rpartition(".")[2] if name_or_path not in BUILTINS else name_or_path
    if inspect.isclass(target):
        try:
            fn = target(**kwargs)
        except TypeError as exc:
            raise PluginError(f"reward {name_or_path!r}: bad options {sorted(kwargs)}: {exc}") from exc
    elif callable(target):
        fn = functools.partial(target, **kwargs) if kwargs else target
    else:
        raise PluginError(f"reward {name_or_path!r} resolves to {type(target).__name__}, which is not callable")
    return Reward(name, fn)


def list_rewards() -> list[tuple[str, str]]:
    """(name, one-line doc) of every built-in and installed reward."""
    out = []
    for name in sorted(BUILTINS):
        try:
            doc = inspect.getdoc(load_object(BUILTINS[name])) or ""
        except PluginError as exc:
            doc = f"(unavailable: {exc})"
        out.append((name, doc.strip().splitlines()[0] if doc.strip() else ""))
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        if ep.name in BUILTINS:
            continue
        try:
            doc = inspect.getdoc(ep.load()) or ""
        except Exception as exc:
            doc = f"(failed to load: {exc})"
        out.append((ep.name, doc.strip().splitlines()[0] if doc.strip() else ""))
    return out


def combine(scores: dict[str, list[float | None]], weights: dict[str, float]) -> list[float]:
    """Weighted sum of the non-null scores per row (as TRL's GRPO sums rewards: nulls count as absent)."""
    names = list(scores)
    n = len(scores[names[0]]) if names else 0
    return [sum(weights.get(k, 1.0) * s for k in names if (s := scores[k][i]) is not None) for i in range(n)]
