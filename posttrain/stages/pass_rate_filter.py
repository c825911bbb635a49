"""Stage `pass_rate_filter`: GRPO's prompts, kept only where the starting model is uncertain.

It samples `samples` answers per prompt with a model (the eval stage's generation, scoring, chunked
`samples.jsonl` and resume), measures each prompt's pass rate and writes the prompts whose rate lies
strictly between `keep.above` and `keep.below` to DIR/<name>/prompts.jsonl, the file a `grpo`
stage reads with `data: <this stage>` (data_pipelines/pass_rate_filter.py has why). Every kept row
keeps its columns (the rewards need them) and gains `pass_rate`.
"""

from __future__ import annotations

import json
from typing import Annotated, ClassVar

from pydantic import Field

from data_pipelines.pass_rate_filter import PassRateBounds, histogram, pass_rate, select
from posttrain.core.errors import StageError
from posttrain.core.identity import SELECTION
from posttrain.core.run_folder import (
    DROPPED_SOLVED,
    DROPPED_UNSOLVED,
    KEPT,
    PASS_RATES,
    PROMPTS_FILE,
    SAMPLES_FILE,
    write_text_atomic,
)
from posttrain.stages import eval as eval_stage
from posttrain.stages.base import StageContext, StageResult


class Config(eval_stage.Config):
    #: The prompts to filter: an earlier stage's (the distill stage's training prompts by default), a file, a hub set.
    data_file: str = PROMPTS_FILE
    #: Answers sampled per prompt: more tell a rare success (or failure) from none.
    samples: int = Field(8, ge=1)
    #: Only sampled answers measure a pass rate; greedy decoding adds nothing here.
    greedy: bool = False
    #: New bounds (or a new threshold) select again from the same samples: no new generation.
    keep: Annotated[PassRateBounds, SELECTION] = Field(default_factory=PassRateBounds)
    threshold: Annotated[float, SELECTION] = 1.0

    required_outputs: ClassVar[tuple[str, ...]] = (SAMPLES_FILE, PROMPTS_FILE)
    reusable_outputs: ClassVar[tuple[str, ...]] = (SAMPLES_FILE,)


def run(ctx: StageContext) -> StageResult:
    cfg = ctx.config
    assert isinstance(cfg, Config)
    evaluation = eval_stage.evaluate(ctx)
    rows, result = evaluation.rows, evaluation.result
    rates = {r["id"]: pass_rate(r["sample_scores"], cfg.threshold) for r in evaluation.samples}
    chosen = select(rows, rates, cfg.keep)
    counts = histogram(rates.values())
    if not chosen.kept:
        raise StageError(f"stage {cfg.name!r} kept none of {len(rows)} prompts: pass rates {counts} (rate: prompts) "
                         f"all lie outside ({cfg.keep.above}, {cfg.keep.below}); widen `keep` or sample more")
    path = ctx.stage_dir / PROMPTS_FILE
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in chosen.kept))
    ctx.log.info("kept %d of %d prompts (dropped %d always solved, %d never solved); pass rates: %s",
                 len(chosen.kept), len(rows), chosen.dropped_solved, chosen.dropped_unsolved, counts)
    metrics = {**result.metrics, KEPT: len(chosen.kept), DROPPED_SOLVED: chosen.dropped_solved,
               DROPPED_UNSOLVED: chosen.dropped_unsolved, PASS_RATES: counts}
    return StageResult(metrics=metrics, outputs={**result.outputs, "prompts": str(path)})


# --------------------------------------------------------------------------------------------------
# The report's section on this kind
