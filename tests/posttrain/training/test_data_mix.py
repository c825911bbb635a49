"""Weighted data mixes (`data: [{source, weight}, ...]`) in trainer stages: posttrain/training/data_mix.py."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

from posttrain.core.errors import DataError, RecipeError
from posttrain.recipe import parse_recipe
from posttrain.run.runner import run_recipe
from posttrain.stages import KINDS
from posttrain.training.data_mix import mix, pick, shares


def table(name: str, n: int, **extra: object) -> datasets.Dataset:
    return datasets.Dataset.from_list([{"prompt": f"{name}{i}", "completion": name, **extra} for i in range(n)])


def test_shares_split_the_total_by_weight_and_pick_repeats_only_when_short() -> None:
    assert shares([0.7, 0.3], 100) == [70, 30] and sum(shares([1, 1, 1], 100)) == 100
    import random

    assert sorted(pick(5, 5, random.Random(0))) == [0, 1, 2, 3, 4]  # a full pass: every row once
    twice = pick(3, 7, random.Random(0))
    assert sorted(twice[:3]) == sorted(twice[3:6]) == [0, 1, 2]  # repeats come in whole shuffled passes


def test_a_mix_has_the_weights_shares_is_deterministic_and_keeps_the_shared_columns() -> None:
    parts = [("a", table("a", 300, teacher="r1")), ("b", table("b", 40))]
    mixed, counts = mix(parts, [0.75, 0.25], seed=0)
    assert counts == [255, 85] and len(mixed) == 340  # total: the sources' sizes; b (40 rows) is repeated
    assert mixed.column_names == ["prompt", "completion"]  # `teacher` is not in every source
    assert sum(c == "b" for c in mixed["completion"]) == 85
    assert len(set(p for p in mixed["prompt"] if p.startswith("b"))) == 40
    again, _ = mix(parts, [0.75, 0.25], seed=0)
    assert again["prompt"] == mixed["prompt"]
    assert mix(parts, [0.75, 0.25], seed=1)[0]["prompt"] != mixed["prompt"]
    small, counts = mix(parts, [1, 1], seed=0, total=20)
    assert counts == [10, 10] and len(set(small["prompt"])) == 20

    with pytest.raises(DataError, match="share no column"):
        mix([("a", table("a", 3)), ("c", datasets.Dataset.from_list([{"x": 1}]))], [1, 1], seed=0)
    with pytest.raises(DataError, match="no rows"):
        mix([("a", table("a", 3)), ("e", table("e", 0))], [1, 1], seed=0)


RECIPE = """\
output_dir: {out}
seed: 0
model: {{name_or_path: {base}}}
stages:
  - name: sft
    kind: sft
    data: {data}
    trl: {{max_steps: 2, per_device_train_batch_size: 8, logging_steps: 1, save_steps: 100, max_length: 64}}
"""


def write(path: Path, name: str, n: int) -> Path:
    path.write_text("".join(json.dumps({"prompt": f"Compute {i}+{i}.", "completion": f"<think>{name}</think> {2 * i}",
                                        "source": name}) + "\n" for i in range(n)))
    return path


def test_sft_trains_on_a_weighted_mix_and_reruns_when_a_source_file_changes(tmp_path: Path, tiny_base: Path) -> None:
    a, b = write(tmp_path / "a.jsonl", "a", 30), write(tmp_path / "b.jsonl", "b", 10)
    data = f"[{{source: {a}, weight: 0.5}}, {{source: {b}, weight: 0.5}}]"
    text = RECIPE.format(out=tmp_path / "run", base=tiny_base, data=data)
    entry = run_recipe(parse_recipe(text, kinds=KINDS))["stages"]["sft"]
    assert entry["status"] == "done", entry
    assert entry["metrics"]["rows"] == 40 and entry["metrics"]["data_mix"] == {str(a): 20, str(b): 20}
    assert run_recipe(parse_recipe(text, kinds=KINDS))["stages"]["sft"]["status"] == "skipped"
    write(b, "b", 11)  # a source changed: the stage's inputs changed, so it runs again
    entry = run_recipe(parse_recipe(text, kinds=KINDS))["stages"]["sft"]
    assert entry["status"] == "done" and entry["metrics"]["data_mix"] == {str(a): 21, str(b): 20}


def test_a_mix_may_only_name_stages_that_run_before() -> None:
    text = """\
model: {name_or_path: m}
stages:
  - name: sft
    kind: sft
    data: [{source: distill, weight: 0.7}, {source: x.jsonl, weight: 0.3}]
  - name: distill
    kind: distill
    source: {function: data_pipelines.tasks.arithmetic:train_prompts}
    teacher: {backend: scripted, model: data_pipelines.tasks.arithmetic:teacher}
    rewards: [{name: math}]
"""
    with pytest.raises(RecipeError, match=r"stages\[0\]\.data\[0\]\.source: refers to stage 'distill'"):
        parse_recipe(text, kinds=KINDS)
