from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from data_pipelines.filters import FilterSpec, SampleFilter
from data_pipelines.rejection_sampling import (
    KeepRule,
    RejectionSampler,
    Sample,
    Teacher,
    judge,
    select,
)
from data_pipelines.tasks.arithmetic import solution_text, train_prompts
from posttrain.core.generation import GenerationSpec, SamplingParams, make_generator
from rewards.registry import get_reward

PLUGINS = "tests.data_pipelines.plugins"
RIGHT = solution_text(365, 75)
WRONG = RIGHT.replace("440", "441")
ROW = {"id": "p1", "prompt": "Compute 365+75.", "solution": "440"}


def _rewards() -> list[tuple[str, Any, float]]:
    return [("answer", get_reward(f"{PLUGINS}:boxed_answer"), 1.0), ("format", get_reward(f"{PLUGINS}:think_format"),
                                                                       0.5)]


def _fixed(answers: dict[str, list[str]], label: str = "t", n: int | None = None) -> Teacher:
    spec = GenerationSpec(backend="scripted", model=f"{PLUGINS}:fixed_teacher", options={"answers": answers})
    return Teacher(label, make_generator(spec), n or len(next(iter(answers.values()))), SamplingParams(seed=0))


def _sampler(teachers: list[Teacher], **kwargs: Any) -> RejectionSampler:
    filters = kwargs.pop("filters", FilterSpec())
    return RejectionSampler(teachers, _rewards(), kwargs.pop("rule", KeepRule()), SampleFilter(filters), **kwargs)


def test_judge_all_of_rule() -> None:
    rule = KeepRule()
    assert judge({"answer": 1.0, "format": 1.0}, rule, {}) is None
    assert judge({"answer": 0.0, "format": 1.0}, rule, {}) == "reward_answer"
    assert judge({"answer": 1.0, "format": 0.5}, rule, {}) == "reward_format"
    assert judge({"answer": None, "format": 1.0}, rule, {}) == "reward_answer"  # no score is not a pass
    assert judge({"answer": 1.0, "format": 0.5}, KeepRule(thresholds={"format": 0.5}), {}) is None


def test_judge_min_score_rule() -> None:
    rule = KeepRule(rule="min_score", min_score=1.2)
    weights = {"answer": 1.0, "format": 0.5}
    assert judge({"answer": 1.0, "format": 1.0}, rule, weights) is None  # 1.5
    assert judge({"answer": 1.0, "format": 0.0}, rule, weights) == "min_score"  # 1.0
    assert judge({"answer": None, "format": 1.0}, rule, weights) == "min_score"
    with pytest.raises(ValueError, match="needs 'min_score'"):
        KeepRule(rule="min_score")


def test_select_prefers_shorter_when_asked() -> None:
    samples = [Sample("p", "t", i, c) for i, c in enumerate(["long answer", "short", "mid one", "x"])]
    samples[3].reason = "reward_answer"
    assert [s.index for s in select(samples)] == [0, 1, 2]
    assert [s.index for s in select(samples, prefer_shorter=True)] == [1, 2, 0]


def test_keep_per_prompt_and_reasons() -> None:
    malformed = RIGHT.replace("<think>", "")
    other = "<think>Units: 5+5=10, write 0, carry 1. Tens: 6+7+1=14. Hundreds: 3+1=4.</think>\nSo \\boxed{440}."
    near = RIGHT + " Done."
    answers = {"Compute 365+75.": [WRONG, RIGHT, malformed, RIGHT + " ", near, other, RIGHT.replace("440", "4")]}
    result = _sampler([_fixed(answers)], keep_per_prompt=2).process([ROW])
    assert [r["completion"] for r in result.data] == [RIGHT, other]
    assert result.generated == 7 and result.passed == 4
    # RIGHT + " " is RIGHT after whitespace normalisation; `near` differs from it by two tokens.
    assert result.rejected == {"reward_answer": 2, "reward_format": 1, "duplicate": 1, "near_duplicate": 1}
    assert result.histogram == {"4/7": 1}
    assert len(result.data) + sum(result.rejected.values()) == result.generated
    row = result.data[0]
    assert row == {"id": "p1-t-1", "prompt_id": "p1", "prompt": "Compute 365+75.", "completion": RIGHT,
                   "teacher": "t", "scores": {"answer": 1.0, "format": 1.0}, "solution": "440"}
    capped = _sampler([_fixed(answers)], keep_per_prompt=1).process([ROW])
    assert capped.rejected == {"reward_answer": 2, "reward_format": 1, "keep_per_prompt": 3}


def test_cap_and_prefer_shorter() -> None:
    longer = RIGHT.replace("The answer", "So the answer")
    answers = {"Compute 365+75.": [longer, RIGHT, WRONG]}
    result = _sampler([_fixed(answers)], keep_per_prompt=1, prefer_shorter=True).process([ROW])
    assert [r["completion"] for r in result.data] == [RIGHT]
    assert result.rejected == {"reward_answer": 1, "keep_per_prompt": 1}
    result = _sampler([_fixed(answers)], keep_per_prompt=1).process([ROW])
    assert [r["completion"] for r in result.data] == [longer]


def test_pairs_match_kept_with_worse_answers_only() -> None:
    malformed = "The answer is \\boxed{440}."
    answers = {"Compute 365+75.": [RIGHT, WRONG, malformed, RIGHT]}
    result = _sampler([_fixed(answers)], pairs_per_prompt=5).process([ROW])
    assert [(p["chosen"], p["rejected"], p["rejected_reason"]) for p in result.pairs] == [
        (RIGHT, WRONG, "reward_answer"), (RIGHT, malformed, "reward_format")]  # not the surplus RIGHT
    assert result.pairs[0]["prompt"] == "Compute 365+75." and result.pairs[0]["id"] == "p1-pair0"
    nothing_kept = _sampler([_fixed({"Compute 365+75.": [WRONG, WRONG]})]).process([ROW])
    assert nothing_kept.data == [] and nothing_kept.pairs == [] and nothing_kept.histogram == {"0/2": 1}


def test_chat_format_rows() -> None:
    result = _sampler([_fixed({"Compute 365+75.": [RIGHT, WRONG]})], chat_format=True).process([ROW])
    (row,) = result.data
    assert row["prompt"] == [{"role": "user", "content": "Compute 365+75."}]
    assert row["completion"] == [{"role": "assistant", "content": RIGHT}]
    assert result.pairs[0]["rejected"] == [{"role": "assistant", "content": WRONG}]


def test_several_teachers_each_give_n_samples() -> None:
    a = _fixed({"Compute 365+75.": [WRONG, WRONG]}, "a")
    b = _fixed({"Compute 365+75.": [RIGHT, RIGHT, RIGHT]}, "b")
    result = _sampler([a, b]).process([ROW])
    assert [r["id"] for r in result.data] == ["p1-b-0"]
    assert result.per_teacher == {
        "a": {"prompts": 1, "generated": 2, "passed": 0, "kept": 0, "errors": 0, "rejected": {"reward_answer": 2}},
        "b": {"prompts": 1, "generated": 3, "passed": 3, "kept": 1, "errors": 0, "rejected": {"keep_per_prompt": 2}}}
    assert result.histogram == {"3/5": 1}


def test_contaminated_completions_are_rejected() -> None:
    sampler = _sampler([_fixed({"Compute 365+75.": [RIGHT]})], contaminated=lambda text: "440" in text)
    result = sampler.process([ROW])
    assert result.data == [] and result.rejected == {"contaminated": 1}


def test_teacher_errors_are_retried_then_recorded(tmp_path: Path) -> None:
    spec = GenerationSpec(backend="scripted", model=f"{PLUGINS}:flaky_teacher",
                          options={"state_dir": str(tmp_path), "slip": 0.0, "malformed": 0.0})
    teacher = Teacher("flaky", make_generator(spec), 2, SamplingParams(seed=0))
    # The batch fails on b first; then one prompt at a time: b fails for good, a fails once (transient).
    rows = [{"id": "b", "prompt": "Compute 0+0.", "solution": "0"},
            {"id": "a", "prompt": "Compute 17+1.", "solution": "18"},
            {"id": "c", "prompt": "Compute 12+1.", "solution": "13"}]
    result = _sampler([teacher], teacher_retries=1).process(rows)
    assert [r["prompt_id"] for r in result.data] == ["a", "c"]  # 17+1 failed once, then worked
    assert (tmp_path / "Compute_17+1..tried").exists()
    assert result.rejected == {"teacher_error": 2, "keep_per_prompt": 2}
    assert result.errors == [{"prompt_id": "b", "teacher": "flaky", "error": "RuntimeError: teacher crashed on 0+0"}]
    assert result.generated == 6 and result.per_teacher["flaky"]["errors"] == 1
    assert result.histogram == {"2/2": 2}

    # Without retries the transient failure is recorded too.
    for marker in tmp_path.iterdir():
        marker.unlink()
    result = _sampler([teacher], teacher_retries=0).process(rows)
    assert [r["prompt_id"] for r in result.data] == ["c"]
    assert sorted(e["prompt_id"] for e in result.errors) == ["a", "b"]


def test_scripted_arithmetic_teacher_acceptance_is_realistic() -> None:
    rows = train_prompts(400)
    spec = GenerationSpec(backend="scripted", model="data_pipelines.tasks.arithmetic:teacher")
    teacher = Teacher("r1", make_generator(spec), 4, SamplingParams(seed=0))
    result = _sampler([teacher]).process(rows)
    pass_rate = result.passed / result.generated
    assert 0.5 < pass_rate < 0.72
    assert 0.9 < len(result.data) / len(rows) < 1.0  # best of 4: nearly every prompt gets one
    assert json.loads(json.dumps(result.data)) == result.data
