"""Running a benchmark preset through a real eval stage, offline: local rows in the hub set's shape, and an
"oracle" model (the scripted backend) whose answer to each prompt the test decides."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from posttrain.core.run_folder import read_jsonl
from posttrain.eval_presets import get_benchmark
from posttrain.recipe import parse_recipe
from posttrain.run.runner import run_recipe
from posttrain.stages import KINDS

RECIPE = """\
output_dir: {out}
seed: 0
model: {{name_or_path: {base}}}
stages:
  - name: {name}
    kind: eval
    benchmark: {name}
    benchmark_options: {options}
    data: {data}
    samples: 2
    sampling: {{temperature: 0.6, max_new_tokens: 64}}
    generation:
      backend: scripted
      model: tests.posttrain.eval_presets.helpers:oracle
      options: {{answers: {answers}}}
"""


def oracle(prompts: list[Any], n: int, sampling: Any, answers: str) -> list[list[str]]:
    """A scripted model: the completion the test wrote for each prompt ("I do not know." for the others)."""
    table = json.loads(Path(answers).read_text())
    return [[table.get(p, "I do not know.")] * n for p in prompts]


def write_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run_preset(tmp: Path, base: Path, name: str, data: Path, answer: Any,
               options: dict[str, Any] | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run benchmark `name` on `data` with the oracle answering `answer(eval_row)`; (stage entry, samples rows)."""
    rows = get_benchmark(name, options).rows(data)
    answers = tmp / "answers.json"
    answers.write_text(json.dumps({r["prompt"]: answer(r) for r in rows}))
    text = RECIPE.format(out=tmp / "run", base=base, name=name, data=data, answers=answers,
                         options=json.dumps(options or {}))
    entry = run_recipe(parse_recipe(text, kinds=KINDS))["stages"][name]
    samples = read_jsonl(tmp / "run" / name / "samples.jsonl") if entry["status"] == "done" else []
    return entry, samples
