"""Find a reward by name and make it safe to call: `get_reward("math")`, `get_reward("pkg.mod:fn")`.

Every reward has TRL's signature, `fn(completions, **columns) -> list[float | None]`, so it drops
straight into `trl.GRPOTrainer(reward_funcs=...)`. `None` means "no score" (not applicable or
failed), never a silent 0. What `get_reward` returns is a `Reward`: the one adapter around every
verifier (see `rewards.protocol`) and every plain reward function. One bad row cannot take a batch
down: if the batch raises, rows are scored one by one, a raising row gets `None` and an error.
Errors come back per call (`score_with_errors`), and are logged, counted and reported to TRL.
"""

from __future__ import annotations

import functools
import inspect
import logging
import threading
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from typing import Any

from posttrain.core.errors import PluginError
from posttrain.core.plugins import load_object
from rewards.protocol import Scored, as_verifier, checked, score_batch

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
_MAX_LOGGED_ERRORS = 5


class Reward:
    """The adapter `get_reward` returns: TRL's signature, per-row error isolation, dedupe, pools, accounting.

    `reward(completions, **columns)` gives the floats TRL wants; `reward.score_with_errors(...)`
    gives `(scores, errors)` of that call alone, so two threads scoring through one object each get
    their own errors. Rows with an error are counted (`error_count`), the first few logged, and their
    share goes to TRL's `log_metric` as `rewards/<name>/error_rate`. Of those, the rows left without
    a score are failures of the reward (a judge down, a malformed row: `failed_count`, `first_failure`);
    the others were scored with the reason beside the score (an answer that could not be read, a
    timeout: the answer's doing). Picklable when what it wraps is (every built-in is).
    """

    def __init__(self, name: str, fn: Any):
        self.name = name
        self.__name__ = name  # TRL logs rewards/<__name__>/mean
        #: What scores the rows: a verifier (`score_rows`), or a plain function wrapped as one.
        self.verifier = as_verifier(fn)
        self.calls = 0
        self.rows = 0
        self.error_count = 0
        #: The first row's error.
        self.first_error: str | None = None
        #: Rows with an error and no score: what a trainer that stops on too many failures counts and reports.
        self.failed_count = 0
        self.first_failure: str | None = None
        self._lock = threading.Lock()

    def __call__(self, completions: Sequence[Any], **kwargs: Any) -> list[float | None]:
        return self.score_with_errors(completions, **kwargs)[0]

    def score_with_errors(self, completions: Sequence[Any], **kwargs: Any) -> tuple[list[float | None],
                                                                                     list[str | None]]:
        """(score, error) lists of this call: an error (a message) for each row that failed, else None."""
        results = score_batch(self.verifier, completions, kwargs, self._isolated)
        errors = [r.error for r in results]
        self._account(results, kwargs.get("log_metric"))
        return [r.score for r in results], errors

    def _isolated(self, completions: Sequence[Any], columns: dict[str, Sequence[Any]],
                  options: dict[str, Any]) -> list[Scored]:
        """Score rows together; if that raises, each row alone (its columns as one-element lists)."""
        try:
            return checked(self.verifier.score_rows(list(completions), **columns, **options), len(completions),
                           self.name)
        except Exception as exc:
            if len(completions) == 1:
                return [Scored(None, f"{type(exc).__name__}: {exc}")]
        return [self._isolated([c], {k: [v[i]] for k, v in columns.items()}, options)[0]
                for i, c in enumerate(completions)]

    def _account(self, results: list[Scored], log_metric: Callable[[str, float], None] | None) -> None:
        noted = [r for r in results if r.error is not None]
        failed = [r.error for r in noted if r.score is None]
        with self._lock:
            self.calls += 1
            self.rows += len(results)
            before = self.error_count
            self.error_count += len(noted)
            self.failed_count += len(failed)
            if noted and self.first_error is None:
                self.first_error = noted[0].error
            if failed and self.first_failure is None:
                self.first_failure = failed[0]
        for k, row in enumerate(noted, before + 1):
            if k > _MAX_LOGGED_ERRORS:
                if k == _MAX_LOGGED_ERRORS + 1:
                    log.warning("reward %s: more rows failed; further errors are counted, not logged", self.name)
                break
            what = "row failed" if row.score is None else f"row scored {row.score:g} with an error"
            log.warning("reward %s: %s: %s", self.name, what, (row.error or "")[:500])
        if log_metric is not None and results:
            log_metric(f"rewards/{self.name}/error_rate", len(noted) / len(results))

    def setup(self) -> None:
        """Load what the reward needs now (see `Verifier.setup`): a model that cannot load raises a one-line
        `PluginError` naming the path, before any row is scored."""
        setup = getattr(self.verifier, "setup", None)
        if callable(setup):
            setup()

    def close(self) -> None:
        """Stop what the verifier started (worker processes, thread pools, sandboxes)."""
        close = getattr(self.verifier, "close", None)
        if callable(close):
            close()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Reward({self.name!r}, {self.verifier!r})"


def as_reward(fn: Any, name: str | None = None) -> Reward:
    """`fn` itself when it is a `Reward`, else `fn` (a verifier or a plain reward function) in the adapter."""
    if isinstance(fn, Reward):
        return fn
    return Reward(name or getattr(fn, "__name__", type(fn).__name__), fn)


def takes_option(name_or_path: str, option: str) -> bool:
    """Whether the reward (its class's constructor, or the function) names the keyword `option`: callers pass
    their own defaults (`workers`, `trust_remote_code`) only to rewards that declare them."""
    try:
        return option in inspect.signature(resolve(name_or_path)).parameters
    except (TypeError, ValueError):
        return False


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
