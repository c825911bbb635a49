"""Benchmarks: each module measures one thing side by side with the reference it is compared with.

`make bench` (`python -m benchmarks.run`) runs every module here that defines

    def run(quick: bool = False) -> dict

and prints one table. The returned dict (see README.md in this folder) is::

    {"rows": [{"name": str, "ours": float | None, "reference": float | None, "unit": str,
               "higher_is_better": bool, "ratio": float | None, "note": str}, ...],
     "params": {...},      # optional: the sizes used (rows, workers, steps...), to compare runs
     "details": {...},     # optional: anything else worth keeping in the JSON
     "skipped": str}       # optional, instead of rows: why nothing was measured (e.g. no bwrap)

Only `name`, `ours` and `unit` are required in a row. `ratio` defaults to ours / reference;
`higher_is_better` defaults to True for rates (a unit ending in "/s") and False otherwise.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TypedDict

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "tiny-r1.yaml"
#: `--set`s that make the tiny recipe's distill and SFT stages CI-sized (a benchmark's --quick model).
QUICK_TRAINING = ("stages.distill.source.kwargs.n=200", "stages.distill.eval.kwargs.n=24",
                  "stages.distill.chunk_size=50", "stages.sft.trl.max_steps=12",
                  "stages.sft.trl.per_device_train_batch_size=16", "stages.sft.trl.save_steps=6",
                  "stages.reward_model.trl.max_steps=4", "stages.reward_model.trl.eval_steps=2",
                  "stages.reward_model.trl.save_steps=2")


class Row(TypedDict, total=False):
    """One measured figure and its reference; `ratio` is ours / reference unless given."""

    name: str
    ours: float | None
    reference: float | None
    unit: str
    higher_is_better: bool
    ratio: float | None
    note: str


class Result(TypedDict, total=False):
    rows: list[Row]
    params: dict[str, Any]
    details: dict[str, Any]
    skipped: str


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """torch on one thread while measuring: fair on a shared 2-core machine, restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def fit_conversations(model: Any, tokenizer: Any, conversations: Sequence[list[dict[str, Any]]], steps: int,
                      lr: float = 3e-3) -> Any:
    """`model` trained by full-batch Adam on `conversations` rendered by the tokenizer's chat template, every
    token a label: a tiny model that behaves as the conversations do (a tool model for benchmarks and tests)."""
    import torch

    seqs = [tokenizer.apply_chat_template(c, tokenize=True, return_dict=False) for c in conversations]
    width = max(map(len, seqs))
    ids = torch.tensor([s + [tokenizer.pad_token_id] * (width - len(s)) for s in seqs])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
    labels = ids.masked_fill(mask == 0, -100)
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def recipe_stages(out: Path, stages: Sequence[str], settings: Sequence[str] = ()) -> Path:
    """`out`, a run folder where the tiny recipe's `stages` are done: run them there (torch on one thread) unless
    an earlier benchmark already did; a later run finds them done and reuses them."""
    def done(stage: str) -> bool:
        state = out / stage / "stage.json"
        return state.exists() and json.loads(state.read_text()).get("status") == "done"

    if all(done(s) for s in stages):
        return out
    cmd = [sys.executable, "-m", "posttrain.cli", "run", str(RECIPE), "--stages", ",".join(stages),
           "--output-dir", str(out), *[a for s in settings for a in ("--set", s)]]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"training the benchmark's model failed ({' '.join(cmd)}):\n{proc.stderr[-3000:]}")
    return out


def print_result(result: dict[str, Any], width: int = 52) -> None:
    """A benchmark's rows, one a line with ours/reference, then its details (a module's `main`)."""
    for row in result["rows"]:
        ref = row.get("reference")
        ratio = f"{row['ours'] / ref:.2f}x" if ref and row.get("ours") is not None else ""
        print(f"{row['name']:{width}} ours {row['ours']!s:>9} reference {ref!s:>9} {row['unit']:9} {ratio}")
    print(json.dumps(result.get("details", {}), indent=1))
