from __future__ import annotations

import pytest

from data_pipelines.tasks.arithmetic import (
    eval_prompts,
    parse_prompt,
    solution_text,
    teacher,
    train_prompts,
)
from posttrain.core.generation import SamplingParams
from rewards.answer import answer_text, last_boxed, split_think


def test_parse_prompt_reads_strings_and_chats() -> None:
    assert parse_prompt("Compute 365+75.") == (365, 75)
    assert parse_prompt([{"role": "system", "content": "x"}, {"role": "user", "content": "Compute 1 + 2."}]) == (1, 2)
    with pytest.raises(ValueError, match="not an addition prompt"):
        parse_prompt("What is love?")


def test_teacher_at_temperature_zero_is_always_right() -> None:
    rows = train_prompts(50)
    out = teacher([r["prompt"] for r in rows], 2, SamplingParams(temperature=0))
    for row, samples in zip(rows, out, strict=True):
        assert samples == [solution_text(row["a"], row["b"])] * 2


def test_teacher_is_deterministic_per_prompt_and_sample() -> None:
    prompts = [r["prompt"] for r in train_prompts(30)]
    sampling = SamplingParams(seed=7)
    out = teacher(prompts, 4, sampling)
    assert teacher(prompts, 4, sampling) == out
    # Batching does not matter: each prompt's samples depend on (seed, prompt, index) only.
    assert teacher(prompts[::-1], 4, sampling) == out[::-1]
    assert teacher(prompts[:5], 2, sampling) == [row[:2] for row in out[:5]]
    assert teacher(prompts, 4, SamplingParams(seed=8)) != out
    assert teacher(prompts, 4, sampling, seed=8) == teacher(prompts, 4, SamplingParams(seed=8))


def test_teacher_is_wrong_and_malformed_some_of_the_time() -> None:
    rows = train_prompts(500)
    out = teacher([r["prompt"] for r in rows], 4, SamplingParams(seed=0), slip=0.15, malformed=0.05)
    right = wrong = malformed = 0
    for row, samples in zip(rows, out, strict=True):
        for text in samples:
            reasoning, answer = split_think(text)
            if not text.startswith("<think>") or reasoning is None or last_boxed(answer) is None:
                malformed += 1
            elif last_boxed(answer_text(text)) == row["solution"]:
                right += 1
                assert text == solution_text(row["a"], row["b"])
            else:
                wrong += 1
    total = 4 * len(rows)
    # 0.85 per column over 2-3 columns, times 0.95 well formed: ~0.61 right.
    assert 0.5 < right / total < 0.72
    assert 0.25 < wrong / total < 0.45
    assert 0.02 < malformed / total < 0.09


def test_a_slip_gives_a_consistent_but_wrong_trace() -> None:
    out = teacher(["Compute 365+75."], 40, SamplingParams(seed=1), slip=0.5, malformed=0.0)[0]
    wrong = [t for t in out if last_boxed(answer_text(t)) != "440"]
    assert wrong
    for text in wrong:
        steps = split_think(text)[0]
        assert steps is not None and len(steps.split("; ")) == 3  # still one step per column


def test_teacher_error_rates_scale_with_temperature() -> None:
    rows = train_prompts(300)
    prompts = [r["prompt"] for r in rows]

    def right_share(t: float) -> float:
        out = teacher(prompts, 2, SamplingParams(seed=0, temperature=t))
        return sum(s == r["solution"] for row, r in zip(out, rows, strict=True)
                   for s in (last_boxed(answer_text(x)) for x in row)) / (2 * len(rows))

    assert right_share(0.3) > right_share(1.0)


def test_train_and_eval_prompts_do_not_overlap() -> None:
    train = {r["prompt"] for r in train_prompts(4000)}
    held_out = {r["prompt"] for r in eval_prompts(500)}
    assert len(held_out) == 500 and not train & held_out
