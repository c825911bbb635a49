from __future__ import annotations

import logging
import multiprocessing
import pickle
import subprocess
import sys
import threading
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import pytest

from posttrain.core.errors import PluginError
from rewards.mix import combine
from rewards.registry import Reward, as_reward, get_reward
from tests.rewards.plugins import PickyVerifier, RendezvousVerifier, length_reward


def test_plugin_by_colon_and_dotted_path() -> None:
    assert get_reward("tests.rewards.plugins:length_reward")(["ab", "abcd"]) == [2.0, 4.0]
    assert get_reward("tests.rewards.plugins.length_reward")(["abc"]) == [3.0]


def test_options_are_bound() -> None:
    fn = get_reward("tests.rewards.plugins:scaled_length", scale=0.5)
    assert fn(["abcd"]) == [2.0]
    assert fn.__name__ == "scaled_length"


def test_columns_arrive_as_keyword_lists() -> None:
    fn = get_reward("tests.rewards.plugins:column_reward")
    assert fn(["4", "5"], solution=["4", "4"], prompts=["p", "p"], trainer_state=None) == [1.0, 0.0]


def test_raising_row_gets_none_and_an_error_the_batch_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    fn = get_reward("tests.rewards.plugins:picky_reward")
    metrics: dict[str, float] = {}
    with caplog.at_level(logging.WARNING, logger="posttrain.rewards"):
        scores, errors = fn.score_with_errors(["ok", "boom!", "", "fine"], log_metric=metrics.__setitem__)
    assert scores == [1.0, None, None, 1.0]
    assert errors[1] is not None and "cannot score 'boom!'" in errors[1]
    assert errors[2] is None  # None by choice is not an error
    assert fn.error_count == 1
    assert metrics == {"rewards/picky_reward/error_rate": 0.25}
    assert "cannot score" in caplog.text


def test_wrong_length_is_an_error_per_row() -> None:
    def bad(completions: list[str], **kwargs: object) -> list[float]:
        return [1.0]

    fn = Reward("length_reward", bad)
    assert fn(["a", "b"]) == [1.0, 1.0]  # row by row, each row returns one score
    fn = Reward("length_reward", lambda completions, **kw: ["x"] * len(completions))
    scores, errors = fn.score_with_errors(["a"])
    assert scores == [None] and "expected a float" in (errors[0] or "")


def test_unknown_rewards_give_clear_errors() -> None:
    with pytest.raises(PluginError, match="unknown reward 'nope'"):
        get_reward("nope")
    with pytest.raises(PluginError, match="cannot import module"):
        get_reward("no_such_module:fn")
    with pytest.raises(PluginError, match="has no attribute"):
        get_reward("tests.rewards.plugins:nope")


def test_reward_pickles_for_worker_processes() -> None:
    fn = pickle.loads(pickle.dumps(get_reward("tests.rewards.plugins:scaled_length", scale=2.0)))
    assert fn(["ab"]) == [4.0]


def test_combine_is_a_weighted_sum_of_non_null_scores() -> None:
    scores = {"a": [1.0, None, 0.0], "b": [0.5, 0.5, None]}
    assert combine(scores, {"a": 2.0, "b": -1.0}) == [1.5, -0.5, 0.0]


def test_after_a_batch_raises_each_row_gets_its_columns_as_one_element_lists() -> None:
    fn = get_reward("tests.rewards.plugins:picky_column_reward")
    assert fn(["42", "boom", "7"], solution=["42", "42", "7"], prompts=["p"] * 3) == [1.0, None, 1.0]


def test_two_threads_through_one_reward_each_get_their_own_errors() -> None:
    reward = Reward("rendezvous", RendezvousVerifier(parties=2))  # both calls are in flight at once
    batches = {"a": ["ok a", "bad a"], "b": ["bad b1", "ok b", "bad b2"]}
    results: dict[str, Any] = {}

    def score(key: str) -> None:
        results[key] = reward.score_with_errors(batches[key])

    threads = [threading.Thread(target=score, args=(key,)) for key in batches]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results["a"] == ([1.0, None], [None, "bad row 'bad a'"])
    assert results["b"] == ([None, 1.0, None], ["bad row 'bad b1'", None, "bad row 'bad b2'"])
    assert reward.error_count == 3 and reward.calls == 2 and reward.rows == 5


def test_identical_rows_reach_a_verifier_once_also_when_it_goes_row_by_row() -> None:
    verifier = PickyVerifier()
    reward = Reward("picky", verifier)
    completions = ["42", "boom", "42", "7", "boom", "42"]
    scores, errors = reward.score_with_errors(completions, solution=["42", "42", "42", "8", "42", "42"])
    assert scores == [1.0, None, 1.0, 0.0, None, 1.0]
    assert errors[1] == errors[4] == "RuntimeError: boom in the batch" and errors.count(None) == 4
    assert verifier.batches == [["42", "boom", "7"], ["42"], ["boom"], ["7"]]  # the batch, then each distinct row
    assert reward.error_count == 2


def test_plain_functions_and_verifiers_alike_become_one_adapter() -> None:
    assert as_reward(length_reward).__name__ == "length_reward"
    wrapped = get_reward("format")
    assert as_reward(wrapped) is wrapped
    assert as_reward(PickyVerifier(), "picky")(["1"], solution=["1"]) == [1.0]


def test_rewards_pickle_into_a_process_pool() -> None:
    math = get_reward("math", workers=0)
    assert math(["<think>x</think> \\boxed{4}"], solution=["4"]) == [1.0]  # used first: caches and a lock inside
    jobs = [(math, ["<think>x</think> \\boxed{4}", "<think>x</think> \\boxed{5}"], {"solution": ["4", "4"]}),
            (get_reward("format", strict=True), ["<think>x</think> \\boxed{4}", "4"], {}),
            (get_reward("tests.rewards.plugins:picky_column_reward"), ["a", "boom", "b"],
             {"solution": ["a", "a", "b"]})]
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(reward.score_with_errors, completions, **columns)
                   for reward, completions, columns in jobs]
        (math_out, format_out, picky_out) = [f.result(timeout=300) for f in futures]
    assert math_out == ([1.0, 0.0], [None, None])
    assert format_out == ([1.0, 0.0], [None, None])
    assert picky_out[0] == [1.0, None, 1.0] and "cannot score 'boom'" in (picky_out[1][1] or "")


def test_importing_rewards_is_cheap_and_exports_get_reward() -> None:
    code = ("import sys, rewards; from rewards import combine, get_reward, list_rewards; "
            "get_reward('format')(['x']); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'sympy', 'numpy'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
