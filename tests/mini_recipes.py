"""Recipe texts small enough for a real `posttrain run` inside a test."""

from __future__ import annotations

from pathlib import Path


def distill_only(out: Path, prompts: int, samples: int) -> str:
    """The tiny model and one distill stage (scripted teacher, math reward): a real run in seconds."""
    return f"""\
output_dir: {out}
seed: 0
model:
  tiny: {{}}
tokenizer:
  train:
    corpus: data_pipelines.tasks.arithmetic:corpus
stages:
  - name: distill
    kind: distill
    source:
      function: data_pipelines.tasks.arithmetic:train_prompts
      kwargs: {{n: {prompts}}}
      keep: [solution]
    teacher:
      backend: scripted
      model: data_pipelines.tasks.arithmetic:teacher
    n: {samples}
    rewards:
      - name: math
"""


def counting_pair(seed: int = 0) -> str:
    """Two `counting` stages (the toy kind tests/conftest.py registers), the second reading the first: a recipe to
    break one key at a time when testing validation."""
    return f"""\
output_dir: runs/x
seed: {seed}
model:
  tiny: {{hidden_size: 64}}
tokenizer:
  train: {{corpus: "data_pipelines.tasks.arithmetic:corpus"}}
stages:
  - name: first
    kind: counting
    rows: 3
  - name: second
    kind: counting
    data: first
    trl:
      learning_rate: 1.0e-4
"""
