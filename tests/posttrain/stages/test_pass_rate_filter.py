from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from data_pipelines.tasks.arithmetic import eval_prompts
from posttrain.core.errors import RecipeError
from posttrain.recipe import parse_recipe
from posttrain.run.runner import run_recipe
from posttrain.stages import KINDS
from tests.posttrain.report.fake_run import stage_sections

RECIPE = """\
output_dir: {out}
seed: 0
model: {{name_or_path: {base}}}
stages:
  - name: filter
    kind: pass_rate_filter
    data: {data}
    samples: 4
    sampling: {{temperature: 1.0, max_new_tokens: 48}}
    chunk_size: 10
    generation:
      backend: scripted
      model: data_pipelines.tasks.arithmetic:teacher
      options: {{slip: {slip}, malformed: 0.0}}
{extra}"""
GRPO = """\
  - name: grpo
    kind: grpo
    data: filter
    rewards: [{name: math}]
    trl: {max_steps: 1, per_device_train_batch_size: 8, num_generations: 4, max_completion_length: 12,
          learning_rate: 1.0e-3, logging_steps: 1, save_steps: 100, mask_truncated_completions: false}
"""


@pytest.fixture(scope="module")
def train_prompts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pass_rate") / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in eval_prompts(40, seed=5)))
    return path


def recipe(out: Path, base: Path, data: Path, slip: float, extra: str = "") -> str:
    return RECIPE.format(out=out, base=base, data=data, slip=slip, extra=extra)


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_grpo_trains_on_exactly_the_prompts_solved_sometimes_but_not_always(
    tmp_path: Path, tiny_base: Path, train_prompts: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="posttrain")
    # The scripted teacher slips on a column 20 % of the time at T = 1: long sums fail more often than short ones.
    report = run_recipe(parse_recipe(recipe(tmp_path, tiny_base, train_prompts, 0.2, GRPO), kinds=KINDS))
    m = report["stages"]["filter"]["metrics"]
    sampled = lines(tmp_path / "filter" / "samples.jsonl")
    rates = {r["id"]: sum(s == 1.0 for s in r["sample_scores"]) / 4 for r in sampled}
    assert len(rates) == 40
    kept = lines(tmp_path / "filter" / "prompts.jsonl")
    source = {r["id"]: r for r in lines(train_prompts)}
    assert [r["id"] for r in kept] == [i for i in source if 0 < rates[i] < 1]  # the source's order
    assert all(r == {**source[r["id"]], "pass_rate": rates[r["id"]]} for r in kept)  # every column kept
    assert m["kept"] == len(kept) and 0 < len(kept) < 40
    assert m["dropped_solved"] == sum(v == 1 for v in rates.values()) > 0
    assert m["kept"] + m["dropped_solved"] + m["dropped_unsolved"] == m["prompts"] == 40
    assert sum(m["pass_rates"].values()) == 40 and "accuracy" not in m  # sampled only: no greedy pass
    section = stage_sections((tmp_path / "report.md").read_text())["filter"]
    assert f"**kept {len(kept)} of 40 prompts" in section and f"always solved: {m['dropped_solved']}" in section
    # GRPO reads the kept prompts (with their `solution`, which the math reward needs).
    assert report["stages"]["grpo"]["status"] == "done", report["stages"]["grpo"]
    assert f"GRPO on {len(kept)} prompts" in caplog.text


def test_bounds_can_keep_the_never_solved_prompts(tmp_path: Path, tiny_base: Path, train_prompts: Path) -> None:
    text = recipe(tmp_path, tiny_base, train_prompts, 0.6, "    keep: {above: null, below: 0.5}\n")
    m = run_recipe(parse_recipe(text, kinds=KINDS))["stages"]["filter"]["metrics"]
    rates = [sum(s == 1.0 for s in r["sample_scores"]) / 4 for r in lines(tmp_path / "filter" / "samples.jsonl")]
    assert m["kept"] == sum(r < 0.5 for r in rates) and m["dropped_unsolved"] == 0
    assert any(r["pass_rate"] == 0 for r in lines(tmp_path / "filter" / "prompts.jsonl"))


def test_a_filter_that_keeps_nothing_fails_with_the_pass_rates(
    tmp_path: Path, tiny_base: Path, train_prompts: Path
) -> None:
    entry = run_recipe(parse_recipe(recipe(tmp_path, tiny_base, train_prompts, 0.0), kinds=KINDS))["stages"]["filter"]
    assert entry["status"] == "failed"
    assert "kept none of 40 prompts: pass rates {'1': 40}" in entry["metrics"]["error"]
    assert not (tmp_path / "filter" / "prompts.jsonl").exists()


def test_empty_bounds_are_a_recipe_error() -> None:
    stage = "{name: f, kind: pass_rate_filter, data: p.jsonl, keep: {above: 0.5, below: 0.5}}"
    text = f"model: {{name_or_path: m}}\nstages:\n  - {stage}\n"
    with pytest.raises(RecipeError, match=r"above \(0.5\) must be less than below \(0.5\)"):
        parse_recipe(text, kinds=KINDS)


def test_new_bounds_select_again_from_the_same_samples(
    tmp_path: Path, tiny_base: Path, train_prompts: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="posttrain")
    first = run_recipe(parse_recipe(recipe(tmp_path, tiny_base, train_prompts, 0.3), kinds=KINDS))
    samples = (tmp_path / "filter" / "samples.jsonl").read_text()
    # Other bounds: the stage runs again on the samples it drew (the first folder stays whole, as filter.prev).
    narrow = recipe(tmp_path, tiny_base, train_prompts, 0.3, "    keep: {above: 0.25, below: 0.75}\n")
    caplog.clear()
    second = run_recipe(parse_recipe(narrow, kinds=KINDS))["stages"]["filter"]
    assert second["status"] == "done" and "reusing samples.jsonl from" in caplog.text
    assert "resuming: 40 of 40 prompts already evaluated" in caplog.text  # nothing generated again
    assert (tmp_path / "filter" / "samples.jsonl").read_text() == samples
    assert (tmp_path / "filter.prev" / "samples.jsonl").read_text() == samples
    assert {r["pass_rate"] for r in lines(tmp_path / "filter" / "prompts.jsonl")} == {0.5}
    assert second["metrics"]["kept"] < first["stages"]["filter"]["metrics"]["kept"]
    # Anything else changed (here the samples per prompt): it samples afresh.
    caplog.clear()
    more = narrow.replace("samples: 4", "samples: 2")
    assert run_recipe(parse_recipe(more, kinds=KINDS))["stages"]["filter"]["status"] == "done"
    assert "reusing" not in caplog.text
    assert all(len(r["samples"]) == 2 for r in lines(tmp_path / "filter" / "samples.jsonl"))


def test_with_tools_the_pass_rate_is_the_tool_using_model_s(tmp_path: Path, tiny_base: Path) -> None:
    # A teacher that slips whenever it answers in its head and calls the tool half the time: with the tool, prompts
    # are solved sometimes; without it, never.
    from data_pipelines.tasks.multiplication import train_prompts as products

    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in products(12)))
    extra = "    tools: [{name: python}]\n    max_turns: 2\n"
    text = recipe(tmp_path / "with", tiny_base, data, 0.0, extra).replace(
        "data_pipelines.tasks.arithmetic:teacher", "data_pipelines.tasks.multiplication:teacher").replace(
        "{slip: 0.0, malformed: 0.0}", "{tool_rate: 0.5, head_slip: 1.0}").replace("samples: 4", "samples: 8")
    metrics = run_recipe(parse_recipe(text, kinds=KINDS))["stages"]["filter"]["metrics"]
    assert metrics["kept"] >= 8 and metrics["tools/used"] == pytest.approx(0.5, abs=0.15)
    kept = lines(tmp_path / "with" / "filter" / "prompts.jsonl")
    assert all(0 < r["pass_rate"] < 1 for r in kept)
    samples = lines(tmp_path / "with" / "filter" / "samples.jsonl")
    assert any(s[1]["role"] == "tool" for r in samples for s in r["samples"] if len(s) == 3)
