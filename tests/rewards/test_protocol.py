from __future__ import annotations

import doctest
import pickle
import threading
from collections.abc import Hashable
from typing import Any

import numpy as np
import pytest

import rewards.protocol
from rewards.protocol import (
    FunctionVerifier,
    RowVerifier,
    Scored,
    Verifier,
    as_verifier,
    checked,
    freeze,
    score_batch,
    split_columns,
)


class Recorder(Verifier):
    """Scores a completion by its length and records every batch it is asked for."""

    transient = (("_lock", threading.Lock),)

    def __init__(self, threads: int = 1) -> None:
        self.threads = threads
        self.batches: list[list[Any]] = []
        self.thread_names: set[str] = set()
        self._lock = threading.Lock()

    def score_rows(self, completions: Any, **columns: Any) -> list[Scored]:
        with self._lock:
            self.batches.append(list(completions))
            self.thread_names.add(threading.current_thread().name)
        bonus = columns.get("bonus") or [0] * len(completions)
        return [Scored(float(len(c) + b)) for c, b in zip(completions, bonus, strict=True)]


class ByFirstLetter(Recorder):
    """Rows that start with the same letter are the same row; rows starting with '?' are scored alone."""

    def row_key(self, completion: Any, **row: Any) -> Hashable | None:
        if completion.startswith("?"):
            return None
        if completion.startswith("!"):
            raise ValueError("no key for this row")
        return completion[0]


def test_identical_rows_are_scored_once_and_fanned_out_in_order() -> None:
    verifier = Recorder()
    scores = verifier(["ab", "c", "ab", "c", "ab"], bonus=[1, 0, 1, 5, 1])
    assert scores == [3.0, 1.0, 3.0, 6.0, 3.0]
    assert verifier.batches == [["ab", "c", "c"]]  # ("c", 0) and ("c", 5) differ by a column


def test_a_row_key_can_be_coarser_or_opt_a_row_out() -> None:
    verifier = ByFirstLetter()
    assert verifier(["ab", "ax", "?q", "?q", "!a", "b"]) == [2.0, 2.0, 2.0, 2.0, 2.0, 1.0]
    assert verifier.batches == [["ab", "?q", "?q", "!a", "b"]]


def test_plain_functions_are_never_deduplicated() -> None:
    seen: list[list[str]] = []

    def rank_in_batch(completions: list[str], **kwargs: Any) -> list[float]:
        seen.append(list(completions))
        return [float(i) for i in range(len(completions))]

    assert FunctionVerifier(rank_in_batch).score_rows(["a", "a"]) == [Scored(0.0), Scored(1.0)]
    assert score_batch(as_verifier(rank_in_batch), ["a", "a"], {}) == [Scored(0.0), Scored(1.0)]
    assert seen == [["a", "a"], ["a", "a"]]


def test_threads_score_one_row_per_task_on_the_verifiers_pool() -> None:
    verifier = Recorder(threads=3)
    completions = [f"row{i}" + "x" * i for i in range(12)]
    try:
        assert verifier(completions) == [float(len(c)) for c in completions]
        assert sorted(len(b) for b in verifier.batches) == [1] * 12
        assert all(name.startswith("Recorder-row") for name in verifier.thread_names)
    finally:
        verifier.close()


def test_columns_options_and_trl_keywords_are_told_apart() -> None:
    columns, options = split_columns(2, {"solution": ["1", "2"], "prompts": ("p", "q"), "language": "en",
                                         "log_metric": print, "environments": [1, 2], "weights": [1, 2, 3]})
    assert columns == {"solution": ["1", "2"], "prompts": ("p", "q")}
    assert set(options) == {"language", "log_metric", "environments", "weights"}


def test_numpy_scores_are_python_floats_and_bad_scores_are_row_errors() -> None:
    results = checked([np.float32(0.5), np.int64(2), np.float64(1.0), None, float("nan"), float("inf"), "1.0",
                       Scored(0.0, "timed out")], 8, "r")
    assert [r.score for r in results] == [0.5, 2.0, 1.0, None, None, None, None, 0.0]
    assert all(type(r.score) is float for r in results if r.score is not None)
    assert [r.error is None for r in results[:5]] == [True] * 5  # NaN is TRL's "no score", not a failure
    assert "non-finite" in (results[5].error or "") and "returned str" in (results[6].error or "")
    assert results[7].error == "timed out"
    with pytest.raises(ValueError, match="returned 1 scores for 2"):
        checked([1.0], 2, "r")
    array = FunctionVerifier(lambda completions, **kw: np.array([1, 0], dtype=np.float32))
    scored = score_batch(array, ["a", "b"], {})
    assert scored == [Scored(1.0), Scored(0.0)] and all(type(s.score) is float for s in scored)


def test_freeze_compares_cells_by_content() -> None:
    assert freeze([{"b": 1, "a": [1, 2]}]) == freeze([{"a": (1, 2), "b": 1}])
    assert freeze(np.zeros(2)) != freeze(np.zeros(2))  # cannot be compared: never merged


def test_row_verifier_columns_take_one_value_per_row_or_one_for_all() -> None:
    class Tagged(RowVerifier):
        columns = ("tag",)

        def score_row(self, completion: Any, tag: Any = None) -> Scored:
            return Scored(1.0 if tag == "yes" else 0.0)

    assert Tagged()(["a", "b"], tag=["yes", "no"]) == [1.0, 0.0]
    assert Tagged()(["a", "b"], tag="yes") == [1.0, 1.0]
    with pytest.raises(ValueError, match="column `tag` has 3 values for 2"):
        Tagged().score_rows(["a", "b"], tag=["yes", "no", "yes"])


def test_pickling_leaves_pools_and_locks_behind() -> None:
    verifier = Recorder(threads=2)
    verifier(["a", "b", "c"])
    clone = pickle.loads(pickle.dumps(verifier))
    try:
        assert "_thread_pool" not in clone.__dict__ and isinstance(clone._lock, type(threading.Lock()))
        assert clone(["abc", "d"]) == [3.0, 1.0]
    finally:
        verifier.close()
        clone.close()


def test_as_verifier_and_docstrings() -> None:
    verifier = Recorder()
    assert as_verifier(verifier) is verifier
    assert isinstance(as_verifier(len), FunctionVerifier)
    with pytest.raises(TypeError, match="must be callable"):
        as_verifier(42)
    result = doctest.testmod(rewards.protocol)
    assert result.attempted >= 3 and result.failed == 0
