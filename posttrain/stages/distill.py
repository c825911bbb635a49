"""Stage `distill`: reasoning SFT data by rejection sampling from R1-style teachers.

For each prompt of the source, every teacher writes `n` answers; the recipe's rule-based rewards
score them; the ones that pass the keep rule and the filters are kept (at most `keep_per_prompt`).
Outputs in DIR/<name>/ (names scripts rely on):

- `data.jsonl`: kept samples, `id`, `prompt_id`, `prompt`, `completion`, `teacher`, `scores` (and
  `errors`, {label: message}, where a reward failed on it) and the source's verifier columns
  (`solution`, `tests`, ...), in the prompt-completion format SFT reads;
- `pairs.jsonl`: `prompt`, `chosen` (kept), `rejected` (failed the rewards or a quality filter);
- `prompts.jsonl` / `eval.jsonl`: the train prompts (for GRPO) and held-out eval prompts, with their
  verifier columns; train prompts overlapping the eval set are dropped (decontamination);
- `stats.json`: prompts, generated, kept, rejected by reason, pass-rate-per-prompt histogram,
  samples each reward failed on (`reward_errors`);
- `errors.jsonl`: prompts a teacher failed on after retries (`teacher_error`).

With `tools`, every teacher runs the tool loop (posttrain/core/generation/tool_loop.py): a kept row's completion
is the whole conversation (its calls, the tools' real outputs, its answer), rows are chats whatever `format` says,
and the filters read each part of it as `data_pipelines.filters.sample_views` says.

Prompts are processed in fixed chunks; after each chunk the rows are appended and `progress.json`
records the byte length of every output and the running stats. An interrupted run truncates the
outputs to the last recorded chunk and goes on from there, so no row is lost or written twice, and
with a deterministic teacher a resumed run writes what an uninterrupted one does.

The report's section on this kind is posttrain/report/sections/distill.py.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, model_validator

from data_pipelines.decontamination import DecontaminationSpec
from data_pipelines.filters import FilterSpec
from data_pipelines.rejection_sampling import KeepRule
from data_pipelines.sources import SourceSpec
from posttrain.core.errors import StageError
from posttrain.core.generation import GenerationSpec, SamplingParams
from posttrain.core.identity import ADDED
from posttrain.core.run_folder import (
    DATA_FILE,
    ERRORS_FILE,
    EVAL_FILE,
    PAIRS_FILE,
    PROGRESS_FILE,
    PROMPTS_FILE,
    STATS_FILE,
    write_json_atomic,
)
from posttrain.core.tools import ToolOptions
from posttrain.recipe import RewardSpec, StageConfig
from posttrain.stages.base import StageContext, StageResult
from rewards.mix import unique_labels

#: Files appended chunk by chunk (truncated to the last finished chunk on resume).
APPENDED = (DATA_FILE, PAIRS_FILE, ERRORS_FILE)


class TeacherSpec(GenerationSpec):
    """A teacher: a generation backend, plus its label in `data.jsonl`, its own sample count, and (DeepSeek-V3's
    domain experts) the prompts it takes, the system prompt it is given and whether it writes reasoning."""

    #: Label written in the `teacher` column (default: the model's last path component / function name).
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$")
    #: Samples per prompt from this teacher (default: the stage's `n`).
    n: int | None = Field(None, ge=1)
    #: Given to the teacher before each prompt, never stored in the SFT rows (V3: "reflection and verification").
    system_prompt: Annotated[str | None, ADDED] = None
    #: Take only the prompts whose `domain_column` is one of these (a domain expert); default: every prompt.
    domain: Annotated[str | list[str] | None, ADDED] = None
    domain_column: Annotated[str, ADDED] = "domain"
    #: Or take the prompts a `module:function` predicate (row -> bool) accepts.
    select: Annotated[str | None, ADDED] = None
    #: False: non-reasoning answers (V3's non-reasoning data): no `<think>` block needed, layout rewards skipped.
    reasoning: Annotated[bool, ADDED] = True
    #: As GenerationSpec's, but it counts even when unset: teachers were hashed with it before it was marked added.
    trust_remote_code: bool | None = None

    _OWN: ClassVar[set[str]] = {"name", "n", "system_prompt", "domain", "domain_column", "select", "reasoning"}

    def label(self) -> str:
        if self.name:
            return self.name
        ref = self.model or self.backend
        return ref.rpartition(":")[2].rstrip("/").rpartition("/")[2] or self.backend

    def generation_spec(self) -> GenerationSpec:
        return GenerationSpec(**self.model_dump(exclude=self._OWN))

    def accepts(self) -> Any:
        """The predicate on prompt rows (None: every row)."""
        if self.select is not None:
            from posttrain.core.plugins import load_object

            return load_object(self.select)
        if self.domain is None:
            return None
        wanted = {self.domain} if isinstance(self.domain, str) else set(self.domain)
        column = self.domain_column
        return lambda row: row.get(column) in wanted


class Config(StageConfig, ToolOptions):
    """Options of a `distill` stage."""

    kind: Literal["distill"] = "distill"
    #: Training prompts.
    source: SourceSpec
    #: Held-out prompts written to eval.jsonl (and decontaminated against).
    eval: SourceSpec | None = None
    teacher: TeacherSpec | list[TeacherSpec]
    sampling: SamplingParams = Field(default_factory=SamplingParams)
    #: Samples per prompt per teacher.
    n: int = Field(4, ge=1)
    rewards: list[RewardSpec] = Field(min_length=1)
    keep: KeepRule = Field(default_factory=KeepRule)
    keep_per_prompt: int = Field(1, ge=1)
    #: Apply `keep_per_prompt` to each teacher: a prompt keeps e.g. both its original and its R1-style response.
    keep_per_teacher: bool = False
    #: Among passing samples, keep the shortest (R1's data favours concise reasoning).
    prefer_shorter: bool = False
    #: Preference pairs (kept vs. rejected answer) written per prompt, at most.
    pairs_per_prompt: int = Field(1, ge=0)
    filters: FilterSpec = Field(default_factory=FilterSpec)
    #: N-gram decontamination against the eval set; null turns it off.
    decontamination: DecontaminationSpec | None = Field(default_factory=DecontaminationSpec)
    #: Prompts per generation call and per resumable step.
    chunk_size: int = Field(64, ge=1)
    #: Extra attempts for a prompt the teacher failed on, before it is recorded as `teacher_error`.
    teacher_retries: int = Field(2, ge=0)
    #: `text`: prompt/completion strings; `chat`: user/assistant message lists.
    format: Literal["text", "chat"] = "text"

    trl_config: ClassVar[str | None] = None
    required_outputs: ClassVar[tuple[str, ...]] = (DATA_FILE, PAIRS_FILE, PROMPTS_FILE, STATS_FILE)

    def expected_outputs(self) -> tuple[str, ...]:
        return (*self.required_outputs, EVAL_FILE) if self.eval is not None else self.required_outputs

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        labels = [t.label() for t in self.teachers]
        if len(set(labels)) != len(labels):
            raise ValueError(f"teacher labels must differ (got {labels}): give each teacher a 'name'")
        known = unique_labels([r.label for r in self.rewards])
        unknown = sorted(set(self.keep.thresholds) - set(known))
        if unknown:
            raise ValueError(f"keep.thresholds names {unknown}, which are not rewards of this stage ({known})")
        return self

    @property
    def teachers(self) -> list[TeacherSpec]:
        return self.teacher if isinstance(self.teacher, list) else [self.teacher]


def run(ctx: StageContext) -> StageResult:
    cfg = ctx.config
    assert isinstance(cfg, Config)
    if ctx.num_processes > 1:
        raise StageError(f"stage {cfg.name!r}: distill runs in one process (set launch.num_processes: 1); "
                         "parallelism comes from the teacher (concurrency, batch_size, vLLM)")
    out = ctx.stage_dir
    out.mkdir(parents=True, exist_ok=True)
    log = ctx.log

    prompts, eval_rows, skipped = _prepare_prompts(cfg, ctx)
    _write_jsonl_atomic(out / PROMPTS_FILE, prompts)
    if eval_rows is not None:
        _write_jsonl_atomic(out / EVAL_FILE, eval_rows)
    fingerprint = hashlib.sha256(json.dumps([r["id"] for r in prompts]).encode()).hexdigest()[:16]

    sampler = _build_sampler(cfg, ctx, eval_rows)
    state = _resume(out, fingerprint, sampler, log)
    stats = state["stats"]
    stats.update(prompts=len(prompts) + sum(skipped.values()), prompts_skipped=skipped,
                 samples_per_prompt=sampler.samples_per_prompt,
                 eval_prompts=None if eval_rows is None else len(eval_rows))
    start_index = state["next_prompt"]
    if start_index:
        log.info("resuming at prompt %d/%d (%d rows kept so far)", start_index, len(prompts), stats["kept"])

    from tqdm.auto import tqdm

    started = time.perf_counter()
    last_log = started
    generated_now = 0
    bar = tqdm(total=len(prompts), initial=start_index, desc=f"distill {cfg.name}", unit="prompt",
               dynamic_ncols=True, mininterval=1.0)
    try:
        for begin in range(start_index, len(prompts), cfg.chunk_size):
            chunk_start = time.perf_counter()
            chunk = prompts[begin:begin + cfg.chunk_size]
            result = sampler.process(chunk)
            offsets = {name: _append_jsonl(out / name, rows)
                       for name, rows in ((DATA_FILE, result.data), (PAIRS_FILE, result.pairs),
                                          (ERRORS_FILE, result.errors))}
            _merge(stats, result)
            stats["prompts_done"] = begin + len(chunk)
            stats["seconds"] = round(stats["seconds"] + time.perf_counter() - chunk_start, 3)
            _summarise(stats)
            write_json_atomic(out / STATS_FILE, stats)
            write_json_atomic(out / PROGRESS_FILE, {"fingerprint": fingerprint, "next_prompt": begin + len(chunk),
                                                      "offsets": offsets, "stats": stats})
            generated_now += result.generated
            rate = generated_now / max(time.perf_counter() - started, 1e-9)
            bar.update(len(chunk))
            bar.set_postfix(samples_s=f"{rate:.0f}", accept=f"{stats['acceptance_rate']:.1%}", refresh=False)
            if time.perf_counter() - last_log > 30:
                last_log = time.perf_counter()
                log.info("%d/%d prompts, %d samples, %d kept (%.1f%%), %.0f samples/s", begin + len(chunk),
                         len(prompts), stats["generated"], stats["kept"], 100 * stats["acceptance_rate"], rate)
    finally:
        bar.close()
    _summarise(stats)
    write_json_atomic(out / STATS_FILE, stats)
    log.info("%d prompts, %d samples generated, %d kept (acceptance %.1f%%, rewards passed %.1f%%, %s samples/s); "
             "rejected: %s", stats["prompts"], stats["generated"], stats["kept"], 100 * stats["acceptance_rate"],
             100 * (stats["pass_rate"] or 0), stats["samples_per_s"],
             ", ".join(f"{k}={v}" for k, v in sorted(stats["rejected"].items())))
    metrics = {k: stats[k] for k in ("prompts", "generated", "kept", "acceptance_rate", "pass_rate", "prompt_yield",
                                     "teacher_errors", "samples_per_s", "eval_prompts")}
    metrics["rejected"] = dict(stats["rejected"])
    if stats.get("tools"):
        metrics["tools"] = dict(stats["tools"])
    outputs = {"data": str(out / DATA_FILE), "pairs": str(out / PAIRS_FILE), "prompts": str(out / PROMPTS_FILE)}
    if eval_rows is not None:
        outputs["eval"] = str(out / EVAL_FILE)
    return StageResult(metrics=metrics, outputs=outputs)


def _prepare_prompts(
    cfg: Config, ctx: StageContext
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None, dict[str, int]]:
    """Train prompts (decontaminated), eval prompts, and how many train prompts were dropped why."""
    from data_pipelines.decontamination import Decontaminator, prompt_text
    from data_pipelines.sources import load_rows

    prompts = load_rows(cfg.source)
    eval_rows = load_rows(cfg.eval) if cfg.eval is not None else None
    skipped: dict[str, int] = {}
    if cfg.decontamination is None:
        return prompts, eval_rows, skipped
    texts = _eval_texts(cfg, eval_rows)
    if not texts:
        ctx.log.warning("decontamination: no eval set to check against (set 'eval:' or decontamination.against)")
        return prompts, eval_rows, skipped
    if "prompt" in cfg.decontamination.fields:
        deco = Decontaminator(texts, cfg.decontamination.ngram)
        clean = [r for r in prompts if deco.match(prompt_text(r["prompt"])) is None]
        if len(clean) < len(prompts):
            skipped["contaminated"] = len(prompts) - len(clean)
            ctx.log.warning("decontamination: dropped %d of %d train prompts sharing a %d-gram with the eval set",
                            len(prompts) - len(clean), len(prompts), cfg.decontamination.ngram)
        prompts = clean
    if not prompts:
        raise StageError(f"stage {cfg.name!r}: every train prompt overlaps the eval set")
    return prompts, eval_rows, skipped


def _eval_texts(cfg: Config, eval_rows: list[dict[str, Any]] | None) -> list[str]:
    from data_pipelines.decontamination import prompt_text
    from data_pipelines.sources import SourceSpec, load_rows

    assert cfg.decontamination is not None
    texts = [prompt_text(r["prompt"]) for r in eval_rows or []]
    for i, raw in enumerate(cfg.decontamination.against):
        try:
            spec = SourceSpec.model_validate(raw)
        except ValueError as exc:
            raise StageError(f"stage {cfg.name!r}: decontamination.against[{i}]: {exc}") from None
        texts += [prompt_text(r["prompt"]) for r in load_rows(spec)]
    return texts


def _build_sampler(cfg: Config, ctx: StageContext, eval_rows: list[dict[str, Any]] | None) -> Any:
    from data_pipelines.decontamination import Decontaminator
    from data_pipelines.filters import SampleFilter
    from data_pipelines.rejection_sampling import RejectionSampler, Teacher
    from posttrain.core.generation import derive_seed, make_generator

    teachers = []
    for spec in cfg.teachers:
        model = spec.model
        ours = spec.loads_weights and (model in (None, "base") or model in ctx.recipe.stage_names())
        if ours:
            model = ctx.resolve_model(model)
        seed = cfg.sampling.seed if cfg.sampling.seed is not None else derive_seed(ctx.seed, cfg.name, spec.label())
        sampling = cfg.sampling.model_copy(update={"seed": seed})
        gen = ctx.with_remote_code(spec.generation_spec(), ours)
        generator = make_generator(gen, model)
        if cfg.tools:
            generator = ctx.tool_loop(generator, cfg)
        teachers.append(Teacher(spec.label(), generator, spec.n or cfg.n, sampling,
                                system_prompt=spec.system_prompt, accepts=spec.accepts(), reasoning=spec.reasoning))
    rewards = ctx.build_rewards(cfg.rewards)

    count_tokens = None
    if cfg.filters.max_tokens is not None or cfg.prefer_shorter:
        count_tokens = _token_counter(cfg.filters.tokenizer or ctx.base_model, cfg.name,
                                      ctx.recipe.model.trust_remote_code)
    contaminated = None
    if cfg.decontamination is not None and "completion" in cfg.decontamination.fields:
        deco = Decontaminator(_eval_texts(cfg, eval_rows), cfg.decontamination.ngram)

        def contaminated(text: str) -> bool:
            return deco.match(text) is not None

    return RejectionSampler(
        teachers, rewards, cfg.keep, SampleFilter(cfg.filters, count_tokens), cfg.keep_per_prompt,
        cfg.prefer_shorter, cfg.pairs_per_prompt, cfg.teacher_retries, cfg.format == "chat" or bool(cfg.tools),
        length=count_tokens or len, contaminated=contaminated, keep_per_teacher=cfg.keep_per_teacher,
    )


def _token_counter(name_or_path: str, stage: str, trust_remote_code: bool = False) -> Any:
    from posttrain.core.models import load_tokenizer

    try:
        tok = load_tokenizer(name_or_path, trust_remote_code=trust_remote_code)
    except OSError as exc:
        raise StageError(f"stage {stage!r}: cannot load tokenizer {name_or_path!r} to measure lengths "
                         f"(set filters.tokenizer): {exc}") from None

    def count(text: str) -> int:
        return len(tok(text, add_special_tokens=False)["input_ids"])

    return count


def _fresh_stats() -> dict[str, Any]:
    stats = {"prompts": 0, "prompts_skipped": {}, "prompts_done": 0, "eval_prompts": None, "samples_per_prompt": 0,
             "generated": 0, "kept": 0, "rejected": {}, "acceptance_rate": 0.0, "passed_rewards": 0,
             "pass_rate": None, "prompts_kept": 0, "prompt_yield": None, "teacher_errors": 0, "reward_errors": {},
             "pass_rate_histogram": {}, "per_teacher": {}, "prompts_without_teacher": 0, "seconds": 0.0,
             "samples_per_s": None}
    _summarise(stats)
    return stats


def _resume(out: Path, fingerprint: str, sampler: Any, log: logging.Logger) -> dict[str, Any]:
    """Progress of an interrupted run (outputs truncated to its last finished chunk), or a fresh start."""
    try:
        state = json.loads((out / PROGRESS_FILE).read_text())
    except (OSError, ValueError):
        state = None
    if state is not None and state.get("fingerprint") != fingerprint:
        log.warning("the prompts changed since the interrupted run: starting this stage's data afresh")
        state = None
    if state is not None:
        short = [name for name in APPENDED if _size(out / name) < int(state["offsets"].get(name, 0))]
        if short:
            log.warning("%s: shorter than %s records (deleted or cut): starting this stage's data afresh",
                        ", ".join(short), PROGRESS_FILE)
            state = None
    if state is None:
        for name in APPENDED:
            (out / name).unlink(missing_ok=True)
        return {"next_prompt": 0, "stats": _fresh_stats()}
    for name in APPENDED:
        path, size = out / name, int(state["offsets"].get(name, 0))
        if not path.exists():
            continue
        with open(path, "r+b") as f:
            f.truncate(size)  # drop rows of a chunk that was cut off before its progress was saved
    if (out / DATA_FILE).exists():
        for line in (out / DATA_FILE).read_text().splitlines():
            sampler.filter.add(json.loads(line)["completion"])
    return state


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _merge(stats: dict[str, Any], result: Any) -> None:
    stats["generated"] += result.generated
    stats["kept"] += len(result.data)
    stats["passed_rewards"] += result.passed
    stats["teacher_errors"] += len(result.errors)
    stats["prompts_kept"] += result.prompts_kept
    stats["prompts_without_teacher"] = stats.get("prompts_without_teacher", 0) + result.unassigned
    for counts, target in ((result.rejected, stats["rejected"]), (result.histogram, stats["pass_rate_histogram"]),
                           (result.reward_errors, stats.setdefault("reward_errors", {})),
                           (result.tools, stats.setdefault("tool_counts", {}))):
        for k, v in counts.items():
            target[k] = target.get(k, 0) + v
    for label, counts in result.per_teacher.items():
        mine = stats["per_teacher"].setdefault(label, {})
        for k, v in counts.items():
            if isinstance(v, dict):  # rejected: {reason: count}
                inner = mine.setdefault(k, {})
                for reason, n in v.items():
                    inner[reason] = inner.get(reason, 0) + n
            else:
                mine[k] = mine.get(k, 0) + v


def _summarise(stats: dict[str, Any]) -> None:
    generated = stats["generated"]
    produced = generated - stats["rejected"].get("teacher_error", 0)
    stats["acceptance_rate"] = round(stats["kept"] / generated, 4) if generated else 0.0
    stats["pass_rate"] = round(stats["passed_rewards"] / produced, 4) if produced else None
    done = stats["prompts_done"]
    stats["prompt_yield"] = round(stats["prompts_kept"] / done, 4) if done else None
    stats["samples_per_s"] = round(generated / stats["seconds"], 1) if stats["seconds"] and generated else None
    for mine in stats["per_teacher"].values():
        made = mine.get("generated", 0)
        mine["acceptance_rate"] = round(mine.get("kept", 0) / made, 4) if made else 0.0
    tools = stats.get("tool_counts") or {}
    if tools.get("samples"):  # with tools: how the teachers used them, over every sample and over the kept ones
        def share(part: str, whole: str) -> float | None:
            return round(tools.get(part, 0) / tools[whole], 4) if tools.get(whole) else None

        stats["tools"] = {"calls_per_sample": share("calls", "samples"), "used": share("used", "samples"),
                          "error_rate": share("errors", "calls"), "kept_used": share("kept_used", "kept")}
    stats["pass_rate_histogram"] = dict(sorted(stats["pass_rate_histogram"].items(),
                                               key=lambda kv: tuple(map(int, kv[0].split("/")))))


def _append_jsonl(path: Path, rows: list[dict[str, Any]]) -> int:
    """Append rows; return the file's length after them (what progress.json records)."""
    with open(path, "a") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()
        return f.tell()


def _write_jsonl_atomic(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)
