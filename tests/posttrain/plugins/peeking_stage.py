"""A test stage kind that looks at the run folder when it starts (what report.md and plots/ hold mid-run), logs
a short loss curve to metrics.jsonl (so the report draws a plot for it) and can fail or be interrupted."""

from __future__ import annotations

import json

from posttrain.core.errors import StageError
from posttrain.core.run_folder import METRICS_FILE
from posttrain.recipe import StageConfig
from posttrain.stages.base import StageContext, StageResult

#: Written into the stage's folder: what the run folder held when the stage started.
PEEK_FILE = "peek.json"


class Config(StageConfig):
    #: What happens after the loss curve is logged: nothing, a StageError, or Ctrl-C.
    then: str = "finish"


def run(ctx: StageContext) -> StageResult:
    cfg = ctx.config
    assert isinstance(cfg, Config)
    ctx.stage_dir.mkdir(parents=True, exist_ok=True)
    report_md = ctx.run_dir / "report.md"
    plots = ctx.run_dir / "plots"
    peek = {"report_md": report_md.read_text() if report_md.exists() else None,
            "plots": sorted(p.name for p in plots.glob("*.png")) if plots.is_dir() else []}
    (ctx.stage_dir / PEEK_FILE).write_text(json.dumps(peek))
    for step in (1, 2, 3):
        ctx.append_metrics({"step": step, "loss": 3.0 - step / 2})
    if cfg.then == "fail":
        raise StageError("peeking failed on purpose")
    if cfg.then == "interrupt":
        raise KeyboardInterrupt
    return StageResult(metrics={"steps": 3}, outputs={"metrics": str(ctx.stage_dir / METRICS_FILE)})
