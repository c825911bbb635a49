"""Stage `eval`: how often a model answers the held-out prompts correctly, greedy and sampled.

`accuracy` is greedy; `pass@1` follows DeepSeek-R1: the mean accuracy over `samples` completions
per prompt at the sampling temperature; `pass@k` (optional) uses the unbiased estimator
1 - C(n-c, k) / C(n, k). A completion is correct when its (weighted) reward reaches `threshold`.
`response_length` is the mean length in tokens of the sampled completions (also over the correct and the
wrong ones), the figure DeepSeek-V3's distillation study trades against accuracy. `temperatures` samples at
several temperatures (`pass@1/T=<t>` each, `pass@1/mean`). `benchmark` takes the prompts, answer columns
and scorer from a preset (posttrain.eval_presets: math500, gsm8k, gpqa, humaneval, ...).
Generations are appended to DIR/<name>/samples.jsonl chunk by chunk, so a long eval resumes; a row holds
the greedy and sampled completions, their scores, and the scorer's reasons (e.g. the sandbox's verdict).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

from pydantic import Field, ValidationError, model_validator

from posttrain.core.errors import DataError, PluginError
from posttrain.core.generation import GenerationSpec, SamplingParams
from posttrain.core.identity import ADDED
from posttrain.core.run_folder import (
    ACCURACY,
    BENCHMARK,
    EVAL_FILE,
    PASS_AT_1,
    PASS_AT_1_MEAN,
    RESPONSE_LENGTH,
    RESPONSE_LENGTH_CORRECT,
    RESPONSE_LENGTH_WRONG,
    SAMPLES_FILE,
    TEMPERATURE,
    TEMPERATURES,
    at_temperature,
    pass_at_k_key,
    read_jsonl,
    repair_jsonl_tail,
    temperature_label,
)
from posttrain.core.tools import ToolOptions, is_conversation, summarize_tool_use
from posttrain.recipe import RewardSpec, StageConfig
from posttrain.report.inputs import is_number
from posttrain.stages.base import StageContext, StageResult
from rewards.answer import completion_text
from rewards.mix import RewardMix

#: Counts the tokens of each completion text (None: it cannot, e.g. no tokenizer).
TokenCounter = Callable[[list[str]], "list[int] | None"]


class Config(StageConfig, ToolOptions):
    #: Model to evaluate: an earlier stage, a path or a hub name (default: the recipe's base model).
    model: str | None = None
    #: Held-out prompts: an earlier stage (its `data_file`), a jsonl/parquet file, or a hub data set. With a
    #: `benchmark`: a local file (or another hub name) in the shape of the preset's hub set, used instead of it.
    data: str | None = None
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
    #: A benchmark preset by name (posttrain.eval_presets): its prompts, answer columns and rewards (unless
    #: `rewards` is given), and stop strings it needs (unless `sampling.stop` is given).
    benchmark: Annotated[str | None, ADDED] = None
    #: The preset's own options, e.g. humaneval `{style: complete}`, livecodebench `{version: release_v5}`.
    benchmark_options: Annotated[dict[str, Any], ADDED] = Field(default_factory=dict)
    #: Sample at each of these temperatures: `pass@1/T=<t>` each and `pass@1/mean`. `pass@1` stays the one at
    #: `sampling.temperature`, which defaults to the first of these.
    temperatures: Annotated[list[float] | None, ADDED] = Field(None, min_length=1)

    ref_fields: ClassVar[tuple[str, ...]] = ("model", "data")
    required_outputs: ClassVar[tuple[str, ...]] = (SAMPLES_FILE,)

    @model_validator(mode="after")
    def _resolve(self) -> Config:
        """Fill in what the preset decides and check the temperatures, so that resolved_recipe.yaml shows it."""
        if self.benchmark is None:
            if self.data is None:
                raise ValueError("give `data` (held-out prompts) or `benchmark` (a preset: math500, aime24, gsm8k, "
                                 "gpqa, mmlu, humaneval, livecodebench)")
            if self.benchmark_options:
                raise ValueError("`benchmark_options` needs a `benchmark`")
        else:
            self._apply_preset()
        if self.temperatures:
            if any(t <= 0 for t in self.temperatures):
                raise ValueError(f"temperatures must be > 0 (greedy accuracy is `accuracy`), got {self.temperatures}")
            self.temperatures = list(dict.fromkeys(self.temperatures))
            user_set = "sampling" in self.model_fields_set and "temperature" in self.sampling.model_fields_set
            if not user_set:
                self.sampling = self.sampling.model_copy(update={"temperature": self.temperatures[0]})
            elif self.sampling.temperature not in self.temperatures:
                raise ValueError(f"sampling.temperature {self.sampling.temperature:g} (the one pass@1 reports) is not "
                                 f"among temperatures {self.temperatures}: add it, or leave sampling.temperature out")
        return self

    def _apply_preset(self) -> None:
        from posttrain.eval_presets import get_benchmark

        assert self.benchmark is not None
        try:
            preset = get_benchmark(self.benchmark, self.benchmark_options)
        except PluginError as exc:
            raise ValueError(str(exc)) from None
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'options'}: {e['msg']}" for e in exc.errors())
            raise ValueError(f"benchmark_options for {self.benchmark!r}: {problems}") from None
        if "rewards" not in self.model_fields_set:
            self.rewards = [RewardSpec(**spec) for spec in preset.rewards()]
        stop = preset.stop()
        if stop and self.sampling.stop is None:
            self.sampling = self.sampling.model_copy(update={"stop": stop})

    def all_temperatures(self) -> list[float]:
        """The sampling temperatures, `sampling.temperature` (pass@1's) first."""
        primary = self.sampling.temperature
        return [primary, *(t for t in self.temperatures or [] if t != primary)]


@dataclass
class Evaluation:
    """What an eval run leaves besides its result: the prompt rows and their samples.jsonl rows, in the same order
    (for a kind that builds on the eval stage, e.g. pass_rate_filter)."""

    result: StageResult
    rows: list[dict[str, Any]]
    samples: list[dict[str, Any]]


def run(ctx: StageContext) -> StageResult:
    return evaluate(ctx).result


def evaluate(ctx: StageContext) -> Evaluation:
    from tqdm.auto import tqdm

    from posttrain.core.generation import make_generator

    cfg = ctx.config
    assert isinstance(cfg, Config)
    # The stage's model feeds the engines that load weights; a scripted or remote engine names its own.
    local = cfg.generation.loads_weights
    model = ctx.resolve_model(cfg.model) if local or not cfg.generation.model else cfg.generation.model
    rows = _rows(ctx, cfg)
    scorer = _Scorer(ctx.build_rewards(cfg.rewards), cfg.prompt_column)
    out_path = ctx.stage_dir / SAMPLES_FILE
    ctx.stage_dir.mkdir(parents=True, exist_ok=True)
    repair_jsonl_tail(out_path)  # a run killed mid-row: the row is generated again
    done = {r["id"]: r for r in read_jsonl(out_path)} if out_path.exists() else {}
    todo = [r for r in rows if r["id"] not in done]
    if done:
        ctx.log.info("resuming: %d of %d prompts already evaluated", len(done), len(rows))
    spec = ctx.with_remote_code(cfg.generation, ours=local or not cfg.generation.model)
    generator = make_generator(spec, model=model) if todo else None
    if generator is not None and cfg.tools:
        generator = ctx.tool_loop(generator, cfg)
    sampling = cfg.sampling.model_copy(update={"seed": cfg.sampling.seed if cfg.sampling.seed is not None
                                                else ctx.seed})
    temperatures = cfg.all_temperatures() if cfg.samples else []

    with open(out_path, "a") as f, tqdm(total=len(rows), initial=len(done), desc=f"eval {cfg.name}",
                                         unit="prompt") as bar:
        for start in range(0, len(todo), cfg.chunk_size):
            assert generator is not None
            chunk = todo[start:start + cfg.chunk_size]
            prompts = [r[cfg.prompt_column] for r in chunk]
            out = [{"id": r["id"], "prompt": r[cfg.prompt_column]} for r in chunk]
            if cfg.greedy:
                greedy = generator.generate(prompts, 1, sampling.model_copy(update={"temperature": 0.0}))
                scores, errors = scorer(chunk, greedy)
                for row, g, s, e in zip(out, greedy, scores, errors, strict=True):
                    row.update(greedy=g[0], greedy_score=s[0], greedy_error=e[0])
            else:
                for row in out:
                    row.update(greedy=None, greedy_score=None)
            for t in temperatures:
                sampled = generator.generate(prompts, cfg.samples, sampling.model_copy(update={"temperature": t}))
                lengths = _generated_lengths(generator, sampled)
                scores, errors = scorer(chunk, sampled)
                for row, c, s, e, n in zip(out, sampled, scores, errors, lengths, strict=True):
                    part = {"samples": c, "sample_scores": s, "sample_errors": e}
                    if n is not None:
                        part["sample_lengths"] = n
                    if t == cfg.sampling.temperature:
                        row.update(temperature=t, **part)
                    else:
                        row.setdefault("by_temperature", {})[temperature_label(t)] = part
            for row in out:
                row.setdefault("samples", [])
                row.setdefault("sample_scores", [])
                f.write(json.dumps(row) + "\n")
                done[row["id"]] = row
            f.flush()
            bar.update(len(chunk))
    if hasattr(generator, "close"):
        generator.close()
    results = [done[r["id"]] for r in rows]
    metrics = summarize(results, cfg.threshold, cfg.pass_k, _token_counter(ctx, cfg, generator))
    metrics.update(model=model, prompts=len(results))
    if cfg.benchmark is not None:
        metrics[BENCHMARK] = cfg.benchmark
    drafts = getattr(generator, "draft_stats", None)
    if drafts is not None and drafts.drafted:  # speculative decoding with the model's MTP module
        metrics["mtp_acceptance"] = round(drafts.acceptance, 4)
        ctx.log.info("MTP drafts accepted: %.1f %% of %d", 100 * drafts.acceptance, drafts.drafted)
    return Evaluation(StageResult(metrics=metrics, outputs={"samples": str(out_path)}), rows, results)


def _generated_lengths(generator: Any, completions: list[list[str]]) -> list[list[int] | None]:
    """Token counts the engine reports for its last call (`hf`), per prompt; None where it reports none."""
    lengths = getattr(generator, "last_lengths", None)
    if not isinstance(lengths, list) or [len(x) for x in lengths] != [len(c) for c in completions]:
        return [None] * len(completions)
    return lengths


class _Scorer:
    """Scores k completions per row with the weighted rewards; keeps each completion's reasons (the rows' errors)."""

    def __init__(self, mix: RewardMix, prompt_column: str):
        self.mix = mix
        self.prompt_column = prompt_column

    def __call__(self, chunk: list[dict[str, Any]],
                 completions: list[list[str]]) -> tuple[list[list[float]], list[list[str | None]]]:
        flat = [c for cs in completions for c in cs]
        k = len(completions[0])
        columns = {key: [r[key] for r in chunk for _ in range(k)] for key in chunk[0] if key not in ("id",)}
        columns["prompts"] = columns.pop(self.prompt_column)
        scored = self.mix.score(flat, columns)
        combined, why = scored.totals(normalised=True), scored.reasons()
        return ([combined[i * k:(i + 1) * k] for i in range(len(chunk))],
                [why[i * k:(i + 1) * k] for i in range(len(chunk))])


def summarize(results: list[dict[str, Any]], threshold: float, pass_k: list[int],
              count_tokens: TokenCounter | None = None) -> dict[str, Any]:
    """The stage's metrics from its samples.jsonl rows (see the module docstring and run_folder's keys)."""
    metrics: dict[str, Any] = {}
    greedy = [r["greedy_score"] for r in results if r.get("greedy_score") is not None]
    if greedy:
        metrics[ACCURACY] = round(sum(s >= threshold for s in greedy) / len(greedy), 4)
    primary = [r for r in results if r.get("sample_scores")]
    if not primary:
        answers = [r["greedy"] for r in results if r.get("greedy_score") is not None]
        if any(is_conversation(c) for c in answers):
            metrics.update(summarize_tool_use(answers, [s >= threshold for s in greedy]))
        return metrics
    correct = [[s >= threshold for s in r["sample_scores"]] for r in primary]
    metrics[PASS_AT_1] = _mean_pass1(correct)
    metrics["samples_per_prompt"] = metrics["k"] = len(correct[0])
    for k in pass_k:
        if k <= len(correct[0]):
            metrics[pass_at_k_key(k)] = round(sum(pass_at_k(len(c), sum(c), k) for c in correct) / len(correct), 4)
    t = primary[0].get(TEMPERATURE)
    if is_number(t):
        metrics[TEMPERATURE] = t
    metrics.update(response_lengths(primary, correct, count_tokens))
    samples = [c for r in primary for c in r.get("samples", [])]
    if any(is_conversation(c) for c in samples):  # a model with tools: how it used them
        metrics.update(summarize_tool_use(samples, [h for hits in correct for h in hits]))
    others = sorted({label for r in primary for label in r.get("by_temperature", {})}, key=float)
    if others and is_number(t):
        pass1 = {temperature_label(t): metrics[PASS_AT_1]}
        length = {temperature_label(t): metrics.get(RESPONSE_LENGTH)}
        for label in others:
            parts = [r["by_temperature"][label] for r in primary if label in r.get("by_temperature", {})]
            hits = [[s >= threshold for s in p["sample_scores"]] for p in parts]
            pass1[label] = _mean_pass1(hits)
            length[label] = response_lengths(parts, hits, count_tokens).get(RESPONSE_LENGTH)
        order = sorted(pass1, key=float)
        metrics.update({at_temperature(PASS_AT_1, float(label)): pass1[label] for label in order})
        metrics[PASS_AT_1_MEAN] = round(sum(pass1.values()) / len(pass1), 4)
        metrics.update({at_temperature(RESPONSE_LENGTH, float(label)): length[label] for label in order
                        if length[label] is not None})
        metrics[TEMPERATURES] = [float(label) for label in order]
    return metrics


def _mean_pass1(correct: list[list[bool]]) -> float:
    return round(sum(sum(c) / len(c) for c in correct if c) / max(1, sum(1 for c in correct if c)), 4)


def response_lengths(parts: list[dict[str, Any]], correct: list[list[bool]],
                     count_tokens: TokenCounter | None) -> dict[str, float]:
    """Mean tokens of the sampled completions: all of them, the correct ones and the wrong ones (each when there is
    one). A part's `sample_lengths` are the engine's own counts; without them the texts are counted by
    `count_tokens` (None: nothing to count with, no figures)."""
    lengths: list[int] = []
    for part in parts:
        counted = part.get("sample_lengths")
        if not (isinstance(counted, list) and len(counted) == len(part["samples"])):
            if count_tokens is None:
                return {}
            counted = count_tokens([completion_text(c) for c in part["samples"]]) if part["samples"] else []
            if counted is None:
                return {}
        lengths.extend(counted)
    hits = [h for hs in correct for h in hs]
    out: dict[str, float] = {}
    for key, keep in ((RESPONSE_LENGTH, lambda h: True), (RESPONSE_LENGTH_CORRECT, lambda h: h),
                      (RESPONSE_LENGTH_WRONG, lambda h: not h)):
        chosen = [n for n, h in zip(lengths, hits, strict=True) if keep(h)]
        if chosen:
            out[key] = round(sum(chosen) / len(chosen), 1)
    return out


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al., 2021)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def _token_counter(ctx: StageContext, cfg: Config, generator: Any) -> TokenCounter:
    """Token counts under the evaluated model's tokenizer (the generator's, else loaded when first needed, i.e. for
    rows whose engine reported no counts); None when there is no tokenizer."""
    tokenizer = getattr(generator, "tokenizer", None)
    missing = False

    def count(texts: list[str]) -> list[int] | None:
        nonlocal tokenizer, missing
        if tokenizer is None and not missing:
            from posttrain.core.models import load_tokenizer

            ref = ctx.resolve_model(cfg.model)
            try:
                tokenizer = load_tokenizer(ref, trust_remote_code=ctx.recipe.model.trust_remote_code)
            except Exception as exc:
                missing = True
                ctx.log.warning("response lengths not measured: no tokenizer for %s (%s: %s)", ref,
                                type(exc).__name__, exc)
        if tokenizer is None:
            return None
        return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]

    return count


def _rows(ctx: StageContext, cfg: Config) -> list[dict[str, Any]]:
    if cfg.benchmark is not None:
        from posttrain.eval_presets import get_benchmark

        data = cfg.data
        if data is not None and data in ctx.recipe.stage_names():
            data = str(ctx.resolve_data(data, cfg.data_file))
        rows = get_benchmark(cfg.benchmark, cfg.benchmark_options).rows(data, cfg.max_samples)
        ctx.log.info("benchmark %s: %d prompts from %s", cfg.benchmark, len(rows), data or "its hub set")
        return rows
    assert cfg.data is not None
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
