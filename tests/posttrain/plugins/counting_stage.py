"""A test stage kind: writes `rows` numbered lines, one at a time, resuming from what is on disk."""

from __future__ import annotations

import json
import time
from typing import ClassVar

from posttrain.core.errors import StageError
from posttrain.recipe import StageConfig
from posttrain.stages.base import StageContext, StageResult


class Config(StageConfig):
    rows: int = 10
    delay_s: float = 0.0
    data: str | None = None
    #: Fail (a StageError with this message) after writing this many rows.
    fail_after: int | None = None
    fail_message: str = "counting failed on purpose"
    trl_config: ClassVar[str | None] = "trl:SFTConfig"
    ref_fields: ClassVar[tuple[str, ...]] = ("data",)
    required_outputs: ClassVar[tuple[str, ...]] = ("data.jsonl",)


def run(ctx: StageContext) -> StageResult:
    cfg = ctx.config
    assert isinstance(cfg, Config)
    ctx.stage_dir.mkdir(parents=True, exist_ok=True)
    out = ctx.stage_dir / "data.jsonl"
    done = len(out.read_text().splitlines()) if out.exists() else 0
    upstream = len(ctx.resolve_data(cfg.data).read_text().splitlines()) if cfg.data else 0
    with open(out, "a") as f:
        for i in range(done, cfg.rows):
            if cfg.fail_after is not None and i >= cfg.fail_after:
                raise StageError(cfg.fail_message)
            f.write(json.dumps({"i": i, "seed": ctx.seed, "upstream": upstream}) + "\n")
            f.flush()
            time.sleep(cfg.delay_s)
    return StageResult(metrics={"rows": cfg.rows, "resumed_at": done}, outputs={"data": str(out)})
