"""The reward protocol: a verifier scores rows and says, per row, why one failed; nothing is kept between calls.

A verifier has one method, `score_rows(completions, **columns) -> list[Scored]`: TRL's reward signature,
with a `Scored(score, error)` per row instead of a bare float. `score` None means "no score" (not
applicable, or failed: then `error` says why); a score may carry an error too (a math row cut off
after its time bound scores 0.0 and says so). Errors travel with the return value, never through
state on the object, so one verifier can serve GRPO and a CLI pool at the same time.

What every reward needs around that (identical rows scored once, rows fanned out to a thread pool,
per-process state left out of pickles) is written once, here: `score_batch` and the `Verifier`
base. The registry's adapter (`rewards.registry.Reward`) adds error isolation and accounting on top.

>>> class Shouting(RowVerifier):
...     def score_row(self, completion, **row):
...         return Scored(float(completion.isupper()))
>>> Shouting()(["HI", "hi", "HI"])
[1.0, 0.0, 1.0]
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar, NamedTuple

#: Keyword arguments TRL passes that are not per-row columns.
NOT_COLUMNS = frozenset({"trainer_state", "log_extra", "log_metric", "environments"})
_POOL_LOCK = threading.Lock()
_ALONE = object()  # in the key of a row that is scored on its own


class Scored(NamedTuple):
    """One row's result: a score (None: no score) and, when something went wrong, why."""

    score: float | None
    error: str | None = None


def split_columns(n: int, kwargs: dict[str, Any]) -> tuple[dict[str, Sequence[Any]], dict[str, Any]]:
    """(per-row columns, options): a keyword holding one value per completion is a column, anything else an option.

    >>> split_columns(2, {"solution": ["1", "2"], "language": "en", "trainer_state": [0, 0]})
    ({'solution': ['1', '2']}, {'language': 'en', 'trainer_state': [0, 0]})
    """
    columns: dict[str, Sequence[Any]] = {}
    options: dict[str, Any] = {}
    for key, value in kwargs.items():
        if key not in NOT_COLUMNS and isinstance(value, list | tuple) and len(value) == n:
            columns[key] = value
        else:
            options[key] = value
    return columns, options


def freeze(value: Any) -> Hashable:
    """A hashable stand-in for a cell (lists and dicts by content); an object that cannot be compared stands for itself.

    >>> freeze([{"role": "user", "content": "hi"}])
    (('<dict>', ('content', 'hi'), ('role', 'user')),)
    """
    if isinstance(value, list | tuple):
        return tuple(freeze(v) for v in value)
    if isinstance(value, dict):
        return ("<dict>", *sorted(((str(k), freeze(v)) for k, v in value.items()), key=lambda kv: kv[0]))
    try:
        hash(value)
    except TypeError:
        return ("<object>", id(value))  # never equal to another object: not deduplicated, never wrongly merged
    return value


def checked(results: Sequence[Any], n: int, name: str) -> list[Scored]:
    """`results` as `Scored` rows: exactly `n`, scores as Python floats (numpy and torch scalars too).

    A wrong count raises (no row can be blamed). A score that is not a number, or is infinite, becomes
    None with an error for its row; NaN is TRL's "no score", None.
    """
    results = list(results)
    if len(results) != n:
        raise ValueError(f"reward {name!r} returned {len(results)} scores for {n} completions")
    return [_checked_row(r, name) for r in results]


def _checked_row(result: Any, name: str) -> Scored:
    score, error = result if isinstance(result, tuple) and len(result) == 2 else (result, None)
    error = None if error is None else str(error)
    if score is None:
        return Scored(None, error)
    if isinstance(score, str | bytes) or not hasattr(type(score), "__float__"):
        return Scored(None, error or f"reward {name!r} returned {type(score).__name__}, expected a float or None")
    value = float(score)
    if math.isnan(value):
        return Scored(None, error)
    if math.isinf(value):
        return Scored(None, error or f"reward {name!r} returned a non-finite score ({value})")
    return Scored(value, error)


ChunkScorer = Callable[[Sequence[Any], dict[str, Sequence[Any]], dict[str, Any]], list[Scored]]


def score_batch(verifier: Any, completions: Sequence[Any], kwargs: dict[str, Any],
                score_chunk: ChunkScorer | None = None) -> list[Scored]:
    """Score a batch the way every reward is scored: identical rows once, rows fanned out when the verifier asks.

    Rows are identical when the verifier's `row_key` says so (by default: same completion and same
    columns); only verifiers with `dedupe` set are deduplicated (a plain function may depend on its
    batch). A verifier with `threads > 1` gets one row per task on its thread pool. `score_chunk`
    scores one group of rows (the registry's adapter passes one that isolates failing rows); by
    default it calls `score_rows` and lets exceptions through.
    """
    completions = list(completions)
    n = len(completions)
    columns, options = split_columns(n, kwargs)
    score_chunk = score_chunk or _plain_scorer(verifier)
    where = None
    if getattr(verifier, "dedupe", False) and n > 1:
        first, where = _distinct_rows(verifier, completions, columns)
    if where is not None:
        completions = [completions[i] for i in first]
        columns = {k: [v[i] for i in first] for k, v in columns.items()}
    threads = getattr(verifier, "threads", 1)
    if threads > 1 and len(completions) > 1 and isinstance(verifier, Verifier):
        rows = [([c], {k: [v[i]] for k, v in columns.items()}) for i, c in enumerate(completions)]
        scored = [s for part in verifier.thread_pool().map(lambda r: score_chunk(r[0], r[1], options), rows)
                  for s in part]
    else:
        scored = score_chunk(completions, columns, options) if completions else []
    return scored if where is None else [scored[j] for j in where]


def _plain_scorer(verifier: Any) -> ChunkScorer:
    name = getattr(verifier, "name", type(verifier).__name__)

    def score_chunk(completions: Sequence[Any], columns: dict[str, Sequence[Any]],
                    options: dict[str, Any]) -> list[Scored]:
        return checked(verifier.score_rows(list(completions), **columns, **options), len(completions), name)

    return score_chunk


def _distinct_rows(verifier: Any, completions: list[Any],
                   columns: dict[str, Sequence[Any]]) -> tuple[list[int], list[int] | None]:
    """(index of the first row of each distinct key, each row's distinct index); None when all rows differ."""
    row_key = getattr(verifier, "row_key", None) or default_row_key
    slots: dict[Hashable, int] = {}
    first: list[int] = []
    where: list[int] = []
    for i, completion in enumerate(completions):
        try:
            key = row_key(completion, **{k: v[i] for k, v in columns.items()})
            hash(key)
        except Exception:  # the row will fail when scored, and say why there
            key = None
        if key is None:
            key = (_ALONE, i)
        slot = slots.setdefault(key, len(first))
        if slot == len(first):
            first.append(i)
        where.append(slot)
    return first, (where if len(first) < len(completions) else None)


def default_row_key(completion: Any, **row: Any) -> Hashable:
    """Rows with the same completion and the same columns get the same score."""
    return freeze(completion), tuple(freeze(v) for v in row.values())


def default_workers() -> int:
    """Cores this process may use: the default size of a reward's pool."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class Verifier:
    """Base of the built-in rewards: implement `score_rows`; calling the object gives TRL's floats.

    Class settings read by `score_batch`:
    - `dedupe`: identical rows (by `row_key`) are scored once. A verifier that is a pure function of
      its row keeps the default True; `row_key` may be overridden to a coarser key (the program a
      completion holds, the answer it gives) or return None for a row that must be scored alone.
    - `threads`: rows scored at once on this object's thread pool, one row per task (for rows that
      wait on something outside Python: a sandbox, a server).
    - `transient`: (attribute, factory) pairs for what belongs to this process (pools, locks, loaded
      models): left out of pickles and rebuilt with the factory (None: set to None, rebuilt lazily).
    """

    dedupe: ClassVar[bool] = True
    threads: int = 1
    transient: ClassVar[tuple[tuple[str, Callable[[], Any] | None], ...]] = ()

    def score_rows(self, completions: Sequence[Any], **columns: Any) -> list[Scored]:
        """A `Scored` per completion; columns arrive as keyword lists (TRL's `prompts`, dataset columns)."""
        raise NotImplementedError

    def row_key(self, completion: Any, **row: Any) -> Hashable | None:
        return default_row_key(completion, **row)

    def setup(self) -> None:
        """Load what scoring needs (a model, a judge) now. A trainer calls this before its first step, so a
        reward that cannot load fails the stage at once, naming the path it tried, instead of scoring every
        row null. Rewards that need nothing keep this no-op; scoring without it loads lazily as before."""

    def score_with_errors(self, completions: Sequence[Any], **kwargs: Any) -> tuple[list[float | None],
                                                                                     list[str | None]]:
        """(scores, errors) of a batch, deduplicated and fanned out; an exception of the verifier propagates."""
        results = score_batch(self, completions, kwargs)
        return [r.score for r in results], [r.error for r in results]

    def __call__(self, completions: Sequence[Any], **kwargs: Any) -> list[float | None]:
        """TRL's signature: `fn(completions, **columns) -> list[float | None]`."""
        return self.score_with_errors(completions, **kwargs)[0]

    def thread_pool(self) -> ThreadPoolExecutor:
        """This object's pool of `threads` threads (started on first use, again after a fork)."""
        with _POOL_LOCK:
            pool, pid = getattr(self, "_thread_pool", None) or (None, None)
            if pool is None or pid != os.getpid():
                pool = ThreadPoolExecutor(self.threads, thread_name_prefix=f"{type(self).__name__}-row")
                self._thread_pool = (pool, os.getpid())
            return pool

    def close(self) -> None:
        """Stop the thread pool (subclasses also stop their processes, sandboxes, …)."""
        with _POOL_LOCK:
            pool, pid = getattr(self, "_thread_pool", None) or (None, None)
            self._thread_pool = None
        if pool is not None and pid == os.getpid():
            pool.shutdown(wait=True)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for key in ("_thread_pool", *(name for name, _ in self.transient)):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        for key, factory in self.transient:
            setattr(self, key, factory() if factory is not None else None)


class RowVerifier(Verifier):
    """A verifier that scores each row on its own: implement `score_row(completion, **row) -> Scored`.

    `columns` names the keywords that are per-row columns: a list gives one value per row, a single
    value (or None) applies to every row. Other keywords are ignored.
    """

    columns: ClassVar[tuple[str, ...]] = ("prompts",)

    def score_row(self, completion: Any, **row: Any) -> Scored:
        raise NotImplementedError

    def score_rows(self, completions: Sequence[Any], **kwargs: Any) -> list[Scored]:
        n = len(completions)
        per_row: dict[str, Sequence[Any]] = {}
        for name in self.columns:
            value = kwargs.get(name)
            if isinstance(value, list | tuple):
                if len(value) != n:
                    raise ValueError(f"column `{name}` has {len(value)} values for {n} completions")
                per_row[name] = value
            else:
                per_row[name] = [value] * n
        return [self.score_row(c, **{k: v[i] for k, v in per_row.items()}) for i, c in enumerate(completions)]


class FunctionVerifier:
    """A plain TRL reward function (floats or None per completion) seen as a verifier: its rows never carry errors.

    Not deduplicated and not fanned out: a function may look at its whole batch. Picklable when the
    function is (a module-level function, a `functools.partial` of one, a callable class).
    """

    dedupe = False
    threads = 1

    def __init__(self, fn: Callable[..., Sequence[float | None]]):
        self.fn = fn
        self.name = getattr(fn, "__name__", type(fn).__name__)

    def score_rows(self, completions: Sequence[Any], **kwargs: Any) -> list[Scored]:
        return [Scored(s) for s in self.fn(completions=completions, **kwargs)]

    def setup(self) -> None:
        """The function's own `setup()` if it has one (a callable class that loads a model)."""
        setup = getattr(self.fn, "setup", None)
        if callable(setup):
            setup()

    def close(self) -> None:
        close = getattr(self.fn, "close", None)
        if callable(close):
            close()

    def __repr__(self) -> str:
        return f"FunctionVerifier({self.fn!r})"


def as_verifier(obj: Any) -> Any:
    """`obj` itself when it has `score_rows`, else a plain reward function wrapped as a verifier."""
    if callable(getattr(obj, "score_rows", None)):
        return obj
    if callable(obj):
        return FunctionVerifier(obj)
    raise TypeError(f"a reward must be callable or have score_rows(), got {type(obj).__name__}")
