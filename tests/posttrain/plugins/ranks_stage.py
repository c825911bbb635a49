"""A test stage kind for launched runs: each process writes which of how many it is, and on which machine."""

from __future__ import annotations

import json
import os

from posttrain.recipe import StageConfig
from posttrain.stages.base import StageContext, StageResult


class Config(StageConfig):
    pass


def run(ctx: StageContext) -> StageResult:
    ctx.stage_dir.mkdir(parents=True, exist_ok=True)
    seen = {"process_index": ctx.process_index, "num_processes": ctx.num_processes,
            "machine_rank": int(os.environ.get("GROUP_RANK", "0"))}  # torchrun's node rank
    (ctx.stage_dir / f"rank_{ctx.process_index}.json").write_text(json.dumps(seen))
    return StageResult(metrics={"num_processes": ctx.num_processes}, outputs={})
