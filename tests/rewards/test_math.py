from __future__ import annotations

import doctest
import pickle
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import rewards.math
import rewards.math_answers
from rewards.math import (
    MathReward,
    VerifierPool,
    gold_answer,
    predicted_answer,
    quick_verdict,
    verify_answer,
)
from rewards.registry import get_reward

PATHOLOGICAL = r"9^{9^{9^{9}}}"  # sympy tries to evaluate a number with ~10^8 digits

# (gold, answer written by the model, expected score): the forms math-verify must see through.
EQUIVALENCES = [
    ("440", r"440", 1.0),
    (r"\frac{1}{2}", r"0.5", 1.0),
    (r"0.5", r"\dfrac{1}{2}", 1.0),
    (r"\frac{1}{3}", r"0.5", 0.0),
    (r"50\%", r"0.5", 1.0),
    (r"50", r"50\%", 1.0),
    (r"10\text{ cm}", r"10", 1.0),
    (r"\text{(B)}", r"B", 1.0),
    (r"[1,2)", r"[1, 2)", 1.0),
    (r"[1,2)", r"[1, 2]", 0.0),
    (r"\{1,2\}", r"\{2,1\}", 1.0),
    (r"\{1,2\}", r"\{1,2,3\}", 0.0),
    (r"(1,2)", r"(1, 2)", 1.0),
    (r"\begin{pmatrix}1&2\\3&4\end{pmatrix}", r"\begin{pmatrix}1 & 2\\ 3 & 4\end{pmatrix}", 1.0),
    (r"\begin{pmatrix}1&2\\3&4\end{pmatrix}", r"\begin{pmatrix}1 & 2\\ 4 & 3\end{pmatrix}", 0.0),
    (r"x^2+2x+1", r"(x+1)^2", 1.0),
    (r"x^2+1", r"(x+1)^2", 0.0),
    (r"\frac{\sqrt{2}}{2}", r"\sqrt{2}/2", 1.0),
    (r"3.5", r"\frac{7}{2}", 1.0),
    (r"0.333333", r"\frac13", 1.0),
    (r"-3", r"\left( -3 \right)", 1.0),
    (r"7", r"8", 0.0),
    (r"x=5", r"5", 1.0),
]


def boxed(answer: str, reasoning: str = "Let me work it out.") -> str:
    return f"<think>{reasoning}</think> The answer is $\\boxed{{{answer}}}$."


@pytest.fixture(scope="module")
def pooled() -> Iterator[MathReward]:
    """A reward with two worker processes, shared by the tests of this module."""
    reward = MathReward(workers=2)
    yield reward
    reward.close()


@pytest.mark.parametrize("workers", [0, 2])
def test_equivalences_in_process_and_in_workers(workers: int, pooled: MathReward) -> None:
    reward = pooled if workers else MathReward(workers=0)
    golds = [g for g, _, _ in EQUIVALENCES]
    scores, errors = reward.score_with_errors([boxed(a) for _, a, _ in EQUIVALENCES], solution=golds)
    expected = [e for _, _, e in EQUIVALENCES]
    wrong = [(g, a, s) for (g, a, _), s, e in zip(EQUIVALENCES, scores, expected, strict=True) if s != e]
    assert not wrong, f"(gold, answer, score) scored wrongly: {wrong}"
    assert errors == [None] * len(EQUIVALENCES)


def test_answer_inside_think_never_counts() -> None:
    reward = MathReward(workers=0)
    completions = [
        r"<think>Is it \boxed{5}? Yes.</think> So the answer is 6.",
        r"<think>Is it \boxed{5}? Let me keep checking",  # cut off inside the reasoning
        r"<think>Is it \boxed{5}?</think> So the answer is \boxed{5}.",
    ]
    assert reward(completions, solution=["5"] * 3) == [0.0, 0.0, 1.0]


def test_prompt_ending_with_think_means_the_completion_starts_in_the_reasoning() -> None:
    reward = MathReward(workers=0)
    prompt = "<|User|>Compute 2+3.<|Assistant|><think>\n"
    completions = [r"2+3 = \boxed{5}", r"2+3 = 5</think> The answer is \boxed{5}."]
    assert reward(completions, solution=["5", "5"], prompts=[prompt, prompt]) == [0.0, 1.0]


def test_last_box_wins() -> None:
    reward = MathReward(workers=0)
    completion = r"<think>hm</think> First \boxed{3}, no wait: \boxed{\frac{1}{2}}."
    assert reward([completion, completion], solution=["1/2", "3"]) == [1.0, 0.0]


def test_without_a_box_the_final_answer_expression_is_read() -> None:
    reward = MathReward(workers=0)
    completions = [r"<think>a</think> The final answer is $\frac{1}{2}$.", "<think>a</think> It makes 12 apples",
                   "<think>a</think> I cannot tell."]
    assert reward(completions, solution=["0.5", "12", "12"]) == [1.0, 1.0, 0.0]


def test_chat_list_completions() -> None:
    reward = MathReward(workers=0)
    chats = [[{"role": "assistant", "content": boxed("42")}], [{"role": "assistant", "content": boxed("41")}]]
    assert reward(chats, solution=["42", "42"]) == [1.0, 0.0]


def test_gold_that_is_a_full_solution_uses_its_last_box() -> None:
    solution = r"We have $x = \boxed{2}$ first, and the sum is $\boxed{\frac{3}{4}}$."
    assert gold_answer(solution) == r"\frac{3}{4}"
    assert gold_answer("$0.75$") == "0.75"
    reward = MathReward(workers=0)
    assert reward([boxed("0.75"), boxed("2")], solution=[solution, solution]) == [1.0, 0.0]


def test_unparseable_or_missing_gold_is_no_score_with_an_error() -> None:
    reward = get_reward("math", workers=0)
    scores, errors = reward.score_with_errors([boxed("1"), boxed("1")], solution=[r"\text{}", ""])
    assert scores == [None, None]
    assert "cannot be parsed" in (errors[0] or "")
    assert "empty gold" in (errors[1] or "")
    assert reward.error_count == 2
    scores, errors = reward.score_with_errors([boxed("1")])  # no `solution` column at all
    assert scores == [None]
    assert "needs a `solution` column" in (errors[0] or "")


def test_quick_verdicts_agree_with_math_verify() -> None:
    pairs = [("440", "440"), ("440", "441"), ("440", "440.0"), (r"\frac{1}{2}", "1/2"), (r"\frac12", "0.5"),
             ("0.1", "0.1000001"), ("0.1", "0.2"), (r"\frac{1}{3}", "0.333333"), ("2", r"\frac{4}{2}"),
             ("-3", "-3.0"), ("1,000", "1000"), (r"50\%", "0.5"), ("3", "3/1"), ("12", "-12"),
             ("[1,2,3]", "[3,2,1]"), ("(1,2)", "(2,1)"), ("[2, 5)", "[2,5)"), ("(1,-2)", "(-2,1)"),
             ("(1, 2)", "(1, 2, 3)"), (r"\{1,3\}", r"\{3,1\}"), (r"\{1,3\}", r"\{1\}"), ("(0.5, 1)", r"(\frac12, 1)"),
             ("(0.5, 1)", "(0.4, 1)"), ("(1,2)", "(1.0000001, 2)"), ("[1, 2]", "[1, 2)"), (r"\{1,2\}", r"\{1.0,2\}")]
    decided = 0
    for gold, pred in pairs:
        quick = quick_verdict(gold, pred)
        if quick is not None:
            decided += 1
            assert quick == verify_answer(gold, pred, True), (gold, pred)
    assert quick_verdict(r"\frac{1}{3}", "0.333333") is None  # math-verify rounds to 6 places: its call
    assert decided >= 18


def test_predicted_answer() -> None:
    assert predicted_answer(r"<think>\boxed{1}</think> \boxed{2} and \boxed{3}") == ("3", True)
    assert predicted_answer("<think>x</think> just 7") == (" just 7", False)
    assert predicted_answer(r"<think>\boxed{1}") is None
    assert predicted_answer("no tags, 7") == ("no tags, 7", False)


@pytest.mark.parametrize("workers", [0, 2])
def test_called_from_a_worker_thread(workers: int, pooled: MathReward) -> None:
    """math-verify's own timeouts raise off the main thread; ours must return the right answers there."""
    reward = pooled if workers else MathReward(workers=0)
    out: dict[str, Any] = {}

    def score() -> None:
        try:
            out["scores"] = reward([boxed(r"\frac{2}{4}"), boxed("x^2 - 1"), boxed("0.3")],
                                   solution=["0.5", "(x-1)(x+1)", r"\frac{1}{3}"])
            out["direct"] = verify_answer("(x-1)(x+1)", "x^2-1", True)
        except BaseException as exc:
            out["error"] = exc

    thread = threading.Thread(target=score)
    thread.start()
    thread.join(120)
    assert "error" not in out, out.get("error")
    assert out["scores"] == [1.0, 1.0, 0.0]
    assert out["direct"] == 1.0


@pytest.mark.parametrize("workers", [0, 2])
def test_pathological_expression_is_cut_off_and_counted(workers: int) -> None:
    reward = get_reward("math", workers=workers, timeout_s=1.0)
    start = time.monotonic()
    scores, errors = reward.score_with_errors([boxed(PATHOLOGICAL), boxed("2"), boxed("3")], solution=["2", "2", "2"])
    elapsed = time.monotonic() - start
    assert scores == [0.0, 1.0, 0.0]
    assert "timed out" in (errors[0] or "")
    assert errors[1:] == [None, None]
    assert reward.error_count == 1
    assert elapsed < 60
    reward.close()


def test_worker_stuck_past_its_hard_deadline_is_killed_and_replaced() -> None:
    """A worker whose own alarm does not fire in time (stuck in C) is killed; the rest of its rows go on."""
    pool = VerifierPool(1, soft_s=60.0, hard_s=1.0)
    try:
        start = time.monotonic()
        results = pool.map([("2", PATHOLOGICAL, True), ("2", "2", True), (r"\frac12", "0.5", True), ("3", "4", True)])
        assert time.monotonic() - start < 60
        assert results[0][0] == 0.0 and "worker killed" in (results[0][1] or "")
        assert results[1:] == [(1.0, None), (1.0, None), (0.0, None)]
        assert pool.restarts == 1
    finally:
        pool.close()


def test_reward_pickles_after_use(pooled: MathReward) -> None:
    assert pooled([boxed("1")], solution=["1"]) == [1.0]
    clone = pickle.loads(pickle.dumps(pooled))
    try:
        assert clone.workers == 2 and clone([boxed("2"), boxed("1")], solution=["2", "2"]) == [1.0, 0.0]
    finally:
        clone.close()


def test_registered_as_math_with_a_runnable_docstring() -> None:
    fn = get_reward("math", workers=0)
    assert isinstance(fn.verifier, MathReward) and fn.__name__ == "math"
    result = doctest.testmod(rewards.math)
    assert result.attempted >= 2 and result.failed == 0
    result = doctest.testmod(rewards.math_answers)
    assert result.attempted >= 10 and result.failed == 0


def test_a_group_with_repeated_answers_goes_to_sympy_once_per_distinct_answer() -> None:
    reward = MathReward(workers=0)
    group = [boxed("(x+1)^2")] * 5 + [boxed("x^2+1")] * 2 + [boxed("x^2+2x+1")]  # the last one matches exactly
    assert reward(group, solution=["x^2+2x+1"] * 8) == [1.0] * 5 + [0.0] * 2 + [1.0]
    assert sorted(pred for _, pred, _ in reward._verdicts) == ["(x+1)^2", "x^2+1"]


def test_a_forked_child_starts_its_own_workers(pooled: MathReward) -> None:
    """DataLoader-style fork after first use: the child must not talk to the parent's workers."""
    import os

    completions, solution = [boxed("2^{-1}"), boxed("x(x+1)")], ["0.5", "x^2+x"]
    assert pooled(completions, solution=solution) == [1.0, 1.0]
    parent_pool = pooled._pool
    pid = os.fork()
    if pid == 0:  # the child: exit code 0 only when it scored right with workers of its own
        code = 1
        try:
            pooled._verdicts.clear()
            ok = pooled(completions, solution=solution) == [1.0, 1.0] and pooled._pool is not parent_pool
            pooled.close()
            code = 0 if ok else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert pooled._pool is parent_pool and pooled([boxed("x+x")], solution=["2x"]) == [1.0]
