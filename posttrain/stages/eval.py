"""Stage `eval`: how often a model answers the held-out prompts correctly, greedy and sampled.

`accuracy` is greedy; `pass@1` follows DeepSeek-R1: the mean accuracy over `samples` completions
per prompt at the sampling temperature; `pass@k` (optional) uses the unbiased estimator
1 - C(n-c, k) / C(n, k). A completion is correct when its (weighted) reward reaches `threshold`.
Generations are appended to DIR/<name>/samples.jsonl chunk by chunk, so a long eval resumes.
"""

from __future__ import annotations

import json
import math
from typing import Any, ClassVar

from pydantic import Field

from posttrain.core.errors import DataError
from posttrain.core.generation import GenerationSpec, SamplingParams
from posttrain.recipe import RewardSpec, StageConfig
from posttrain.report.cross_stage import SCORES
from posttrain.report.inputs import StageView, is_number
from posttrain.report.markdown import Document, model_name, pct
from posttrain.run_folder import EVAL_FILE, SAMPLES_FILE, read_jsonl, repair_jsonl_tail
from posttrain.stages.base import StageContext, StageResult


class Config(StageConfig):
    #: Model to evaluate: an earlier stage, a path or a hub name (default: the recipe's base model).
    model: str | None = None
    #: Held-out prompts: an earlier stage (its `data_file`), a jsonl/parquet file, or a hub data set.
    data: str
    data_file: str = EVAL_FILE
    #: Split of a hub data set (ignored for stage outputs and local files).
    split: str = "train"
    prompt_column: str = "prompt"
    max_samples: int | None = Field(None, ge=1)
    rewards: list[RewardSpec] = Field(default_factory=lambda: [RewardSpec(name="math")], min_length=1)
    #: A completion counts as correct when its weighted reward (divided by the weights' sum) reaches this.
    threshold: float = 1.0
    greedy: bool = True
    #: Completions per prompt for sampled pass@1 (0 skips sampling).
    samples: int = Field(4, ge=0)
    pass_k: list[int] = Field(default_factory=list)
    sampling: SamplingParams = Field(default_factory=lambda: SamplingParams(temperature=1.0, max_new_tokens=256))
    generation: GenerationSpec = Field(default_factory=lambda: GenerationSpec(backend="hf", batch_size=256))
    chunk_size: int = Field(128, ge=1)

    ref_fields: ClassVar[tuple[str, ...]] = ("model", "data")
    required_outputs: ClassVar[tuple[str, ...]] = (SAMPLES_FILE,)


def run(ctx: StageContext) -> StageResult:
    from tqdm.auto import tqdm

    from posttrain.core.generation import make_generator
    from rewards.registry import combine

    cfg = ctx.config
    assert isinstance(cfg, Config)
    # The stage's model feeds the engines that load weights; a scripted or remote engine names its own.
    local = cfg.generation.backend in ("hf", "vllm")
    model = ctx.resolve_model(cfg.model) if local or not cfg.generation.model else cfg.generation.model
    rows = _rows(ctx, cfg)
    rewards = ctx.build_rewards(cfg.rewards)
    total_weight = sum(w for _, w in rewards) or 1.0
    out_path = ctx.stage_dir / SAMPLES_FILE
    ctx.stage_dir.mkdir(parents=True, exist_ok=True)
    repair_jsonl_tail(out_path)  # a run killed mid-row: the row is generated again
    done = {r["id"]: r for r in read_jsonl(out_path)} if out_path.exists() else {}
    todo = [r for r in rows if r["id"] not in done]
    if done:
        ctx.log.info("resuming: %d of %d prompts already evaluated", len(done), len(rows))
    spec = ctx.with_remote_code(cfg.generation, ours=local or not cfg.generation.model)
    generator = make_generator(spec, model=model) if todo else None
    sampling = cfg.sampling.model_copy(update={"seed": cfg.sampling.seed if cfg.sampling.seed is not None
                                                else ctx.seed})

    def score(chunk: list[dict[str, Any]], completions: list[list[str]]) -> list[list[float]]:
        flat = [c for cs in completions for c in cs]
        k = len(completions[0])
        columns = {key: [r[key] for r in chunk for _ in range(k)] for key in chunk[0] if key not in ("id",)}
        columns["prompts"] = columns.pop(cfg.prompt_column)
        per_reward = {f"{i}": fn(flat, **columns) for i, (fn, _) in enumerate(rewards)}
        weights = {f"{i}": w for i, (_, w) in enumerate(rewards)}
        combined = [s / total_weight for s in combine(per_reward, weights)]
        return [combined[i * k:(i + 1) * k] for i in range(len(chunk))]

    with open(out_path, "a") as f, tqdm(total=len(rows), initial=len(done), desc=f"eval {cfg.name}",
                                         unit="prompt") as bar:
        for start in range(0, len(todo), cfg.chunk_size):
            assert generator is not None
            chunk = todo[start:start + cfg.chunk_size]
            prompts = [r[cfg.prompt_column] for r in chunk]
            greedy = generator.generate(prompts, 1, sampling.model_copy(update={"temperature": 0.0})) \
                if cfg.greedy else [[] for _ in chunk]
            sampled = generator.generate(prompts, cfg.samples, sampling) if cfg.samples else [[] for _ in chunk]
            greedy_scores = score(chunk, greedy) if cfg.greedy else [[] for _ in chunk]
            sample_scores = score(chunk, sampled) if cfg.samples else [[] for _ in chunk]
            for r, g, gs, s, ss in zip(chunk, greedy, greedy_scores, sampled, sample_scores, strict=True):
                row = {"id": r["id"], "prompt": r[cfg.prompt_column], "greedy": g[0] if g else None,
                       "greedy_score": gs[0] if gs else None, "samples": s, "sample_scores": ss}
                f.write(json.dumps(row) + "\n")
                done[r["id"]] = row
            f.flush()
            bar.update(len(chunk))
    results = [done[r["id"]] for r in rows]
    metrics = summarize(results, cfg.threshold, cfg.pass_k)
    metrics.update(model=model, prompts=len(results))
    drafts = getattr(generator, "draft_stats", None)
    if drafts is not None and drafts.drafted:  # speculative decoding with the model's MTP module
        metrics["mtp_acceptance"] = round(drafts.acceptance, 4)
        ctx.log.info("MTP drafts accepted: %.1f %% of %d", 100 * drafts.acceptance, drafts.drafted)
    return StageResult(metrics=metrics, outputs={"samples": str(out_path)})


def summarize(results: list[dict[str, Any]], threshold: float, pass_k: list[int]) -> dict[str, Any]:
    metrics: dict[str, Any] = {}
    greedy = [r["greedy_score"] for r in results if r.get("greedy_score") is not None]
    if greedy:
        metrics["accuracy"] = round(sum(s >= threshold for s in greedy) / len(greedy), 4)
    sampled = [[s >= threshold for s in r["sample_scores"]] for r in results if r.get("sample_scores")]
    if sampled:
        metrics["pass@1"] = round(sum(sum(c) / len(c) for c in sampled) / len(sampled), 4)
        metrics["samples_per_prompt"] = metrics["k"] = len(sampled[0])
        for k in pass_k:
            if k <= len(sampled[0]):
                metrics[f"pass@{k}"] = round(sum(pass_at_k(len(c), sum(c), k) for c in sampled) / len(sampled), 4)
    return metrics


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al., 2021)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def _rows(ctx: StageContext, cfg: Config) -> list[dict[str, Any]]:
    dataset = ctx.load_dataset(cfg.data, cfg.data_file, cfg.split)
    if cfg.prompt_column not in dataset.column_names:
        raise DataError(f"eval data for stage {cfg.name!r} has no column {cfg.prompt_column!r}; it has "
                        f"{dataset.column_names} (set prompt_column)")
    rows = dataset.to_list()
    if cfg.max_samples is not None:
        rows = rows[: cfg.max_samples]
    for i, r in enumerate(rows):
        r.setdefault("id", f"row-{i}")
        r["id"] = str(r["id"])
    return rows


# --------------------------------------------------------------------------------------------------
# The report's section on this kind (posttrain.report finds these hooks on this module; the accuracy-by-stage
# table across eval stages is the report's own)


def report_describe(stage: StageView) -> str:
    # An eval stage's metrics name the model it scored (other stages' name their output).
    model = model_name(stage, "a model", fallback=stage.metrics.get("model"))
    n = next((stage.metrics[k] for k in ("prompts", "num_prompts", "n") if is_number(stage.metrics.get(k))), None)
    held = f" on {n} held-out prompts" if n is not None else " on held-out prompts"
    return (f"Scored {model}{held}: greedy accuracy (one answer per prompt) and sampled pass@1 "
            f"(mean accuracy over k samples per prompt).")


def report_figures(doc: Document, stage: StageView) -> None:
    figures = []
    for key, label in SCORES.items():
        if is_number(stage.metrics.get(key)):
            value = pct(stage.metrics[key])
            figures.append(f"- **{label}: {value}**" if key == "accuracy" else f"- {label}: {value}")
    doc.key_figures(figures or ["- no accuracy reported"])
