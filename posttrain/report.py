"""DIR/report.md and DIR/plots/*.png from DIR/report.json and the stages' logs; `posttrain report DIR` rebuilds it.

The report is a view of a run, never part of it: every input other than report.json is optional,
and a missing or broken log, or a plot that cannot be drawn, becomes a sentence in the report
("no metrics.jsonl: no curves"), not an exception. It opens with accuracy by stage (the figure a
reader comes for), then has one section per stage in recipe order: what it did, its key figures,
its plots.

Inputs (see CONTRACTS.md): report.json `{"stages": {NAME: {kind, status, seconds, metrics}}}`,
resolved_recipe.yaml (stage order and options), DIR/<stage>/metrics.jsonl (one flat JSON line per
logging step), DIR/<distill stage>/stats.json. An SFT/GRPO stage's metrics may name a run without
balancing to compare MaxVio with: `balance_baseline: {metrics_file: PATH, label: "γ = 0"}` or
`baseline_metrics_file: PATH` (relative to DIR or to the stage's folder).
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from posttrain.core.errors import PosttrainError
from posttrain.run_folder import METRICS_FILE, PLOTS_DIR, REPORT_JSON, REPORT_MD, RESOLVED_RECIPE, STATS_FILE

log = logging.getLogger("posttrain.report")

ACCURACY_PLOT = "accuracy_by_stage.png"
MAXVIO_COMPARISON_PLOT = "maxvio_comparison.png"

_LOAD_KEY = re.compile(r"^moe/load/layer_(\d+)$")
_MAXVIO_LAYER_KEY = re.compile(r"^moe/max_violation/layer_(\d+)$")
_REWARD_KEY = re.compile(r"^rewards/(.+)/mean$")
#: Keys shown as "training dynamics" for GRPO, in order of interest, with their axis labels.
_GRPO_DYNAMICS = (
    ("kl", "KL to the reference"),
    ("completions/mean_length", "mean completion length (tokens)"),
    ("entropy", "token entropy (nats)"),
    ("dynamic_sampling/groups_dropped", "groups dropped"),
    ("frac_reward_zero_std", "fraction of groups with equal rewards"),
    ("reward_std", "reward std within groups"),
)
#: What TRL's RewardTrainer logs besides the loss.
_REWARD_MODEL_CURVES = (
    ("accuracy", "pairwise accuracy (training batches)"),
    ("eval_accuracy", "pairwise accuracy (held out)"),
    ("margin", "mean reward margin, chosen − rejected"),
    ("eval_margin", "held-out reward margin"),
)


# --------------------------------------------------------------------------------------------------
# Inputs


@dataclass
class Log:
    """The parsed rows of one metrics.jsonl; `problem` says why there are none (missing, unreadable)."""

    path: Path
    rows: list[dict[str, Any]] = field(default_factory=list)
    bad_lines: int = 0
    problem: str | None = None

    def series(self, key: str) -> tuple[list[float], list[float]]:
        """(steps, values) of the rows with a finite number under `key`, in step order."""
        steps, values = [], []
        for i, row in enumerate(self.rows):
            value = row.get(key)
            if _is_number(value) and math.isfinite(value):
                step = row.get("step")
                steps.append(float(step) if _is_number(step) else float(i))
                values.append(float(value))
        return steps, values

    def has(self, key: str) -> bool:
        return bool(self.series(key)[1])

    def all_keys(self) -> set[str]:
        return {k for row in self.rows for k in row}

    def last_loads(self) -> tuple[float | None, dict[int, list[float]]]:
        """Step and per-layer expert load fractions of the last row that logged them."""
        for row in reversed(self.rows):
            loads = {int(m.group(1)): v for k, v in row.items()
                     if (m := _LOAD_KEY.match(k)) and isinstance(v, list) and v and all(map(_is_number, v))}
            if loads:
                return row.get("step"), loads
        return None, {}


def read_log(path: Path) -> Log:
    """A metrics.jsonl, skipping lines that are not JSON objects (a run killed mid-write leaves one)."""
    result = Log(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        result.problem = f"no {path.name}"
        return result
    except OSError as exc:
        result.problem = f"{path.name} is unreadable ({exc.strerror or exc})"
        return result
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            result.bad_lines += 1
            continue
        if isinstance(row, dict):
            result.rows.append(row)
        else:
            result.bad_lines += 1
    if not result.rows:
        result.problem = f"{path.name} has no rows"
    return result


@dataclass
class Stage:
    """One stage as the report sees it: its report.json entry, its recipe options and its logs."""

    name: str
    kind: str
    status: str
    seconds: float | None
    metrics: dict[str, Any]
    config: dict[str, Any]
    dir: Path
    log: Log
    #: Names of all the recipe's stages (to tell a stage reference from a path).
    recipe_stages: tuple[str, ...] = ()

    @property
    def in_report(self) -> bool:
        return self.status != "not run"


def load_stages(run_dir: Path) -> list[Stage]:
    """Stages in recipe order (resolved_recipe.yaml), then any others report.json has."""
    try:
        report = json.loads((run_dir / REPORT_JSON).read_text())
    except (OSError, ValueError) as exc:
        raise PosttrainError(f"{run_dir}: no readable {REPORT_JSON} ({exc}); run `posttrain run` first") from None
    entries = report.get("stages") if isinstance(report, dict) else None
    if not isinstance(entries, dict):
        raise PosttrainError(f"{run_dir / REPORT_JSON}: expected {{\"stages\": {{NAME: ...}}}}, got "
                             f"{type(entries).__name__}; rerun `posttrain run` to rewrite it")
    configs = _recipe_stages(run_dir)
    names = list(configs) + [n for n in entries if n not in configs]
    stages = []
    for name in names:
        entry = entries.get(name)
        entry = entry if isinstance(entry, dict) else {}
        config = configs.get(name, {})
        seconds = entry.get("seconds")
        metrics = entry.get("metrics")
        stages.append(Stage(
            name=name,
            kind=str(entry.get("kind") or config.get("kind") or "unknown"),
            status=str(entry.get("status") or "not run"),
            seconds=float(seconds) if _is_number(seconds) else None,
            metrics=metrics if isinstance(metrics, dict) else {},
            config=config,
            dir=run_dir / name,
            log=read_log(run_dir / name / METRICS_FILE),
            recipe_stages=tuple(names),
        ))
    return stages


def _recipe_stages(run_dir: Path) -> dict[str, dict[str, Any]]:
    """Stage options by name from resolved_recipe.yaml, in recipe order ({} when absent or unreadable)."""
    try:
        import yaml

        recipe = yaml.safe_load((run_dir / RESOLVED_RECIPE).read_text())
        stages = recipe["stages"]
        return {str(s["name"]): s for s in stages if isinstance(s, dict) and "name" in s}
    except Exception:  # optional input: order falls back to report.json's
        return {}


def _read_stats(stage: Stage) -> tuple[dict[str, Any] | None, str | None]:
    path = stage.dir / STATS_FILE
    try:
        stats = json.loads(path.read_text())
    except FileNotFoundError:
        return None, f"no {STATS_FILE} in {stage.dir.name}/"
    except (OSError, ValueError) as exc:
        return None, f"{STATS_FILE} is unreadable ({exc})"
    if not isinstance(stats, dict):
        return None, f"{STATS_FILE} is not a JSON object"
    return stats, None


def _baseline(stage: Stage, run_dir: Path) -> tuple[str, Log] | None:
    """The run without balancing named in the stage's metrics, as (label, log)."""
    spec = stage.metrics.get("balance_baseline")
    label = stage.metrics.get("baseline_label")
    path = None
    if isinstance(spec, dict):
        path = spec.get("metrics_file")
        label = spec.get("label", label)
        if label is None and _is_number(spec.get("bias_update_speed")):
            label = f"γ = {spec['bias_update_speed']:g}"
    elif isinstance(spec, str):
        path = spec
    path = path or stage.metrics.get("baseline_metrics_file")
    if not isinstance(path, str):
        return None
    candidates = [Path(path)] if Path(path).is_absolute() else [run_dir / path, stage.dir / path, Path(path)]
    found = next((p for p in candidates if p.exists()), candidates[0])
    return str(label or "γ = 0 (no balancing)"), read_log(found)


# --------------------------------------------------------------------------------------------------
# The report


@dataclass
class _Builder:
    run_dir: Path
    lines: list[str] = field(default_factory=list)
    plots: list[Path] = field(default_factory=list)

    @property
    def plots_dir(self) -> Path:
        return self.run_dir / PLOTS_DIR

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)

    def image(self, path: Path | None, alt: str) -> None:
        if path is not None:
            self.plots.append(path)
            self.add(f"![{alt}]({PLOTS_DIR}/{path.name})", "")

    def attempt(self, what: str, fn: Callable[[], None]) -> None:
        """Run one part of the report; a failure becomes a sentence, never an exception."""
        try:
            fn()
        except Exception as exc:
            log.warning("report: could not build %s: %s: %s", what, type(exc).__name__, exc, exc_info=True)
            self.add(f"_Could not build {what}: {type(exc).__name__}: {exc}_", "")


def write_report(run_dir: Path) -> Path:
    """Write DIR/report.md and DIR/plots/*.png; returns the path of report.md."""
    run_dir = Path(run_dir)
    stages = load_stages(run_dir)
    b = _Builder(run_dir)
    b.plots_dir.mkdir(parents=True, exist_ok=True)
    b.add(f"# posttrain run report: `{run_dir.name}`", "")
    b.attempt("the accuracy-by-stage summary", lambda: _accuracy_section(b, stages))
    b.attempt("the stage overview", lambda: _overview(b, stages))
    for i, stage in enumerate(stages, 1):
        b.add(f"## {i}. {stage.name} (`{stage.kind}`)", "")
        b.attempt(f"the section of stage {stage.name!r}", lambda stage=stage: _stage_section(b, stage))
    b.attempt("the MaxVio comparison", lambda: _maxvio_comparison_section(b, stages))
    _remove_stale_plots(b)
    out = run_dir / REPORT_MD
    tmp = run_dir / (REPORT_MD + ".tmp")
    tmp.write_text("\n".join(b.lines).rstrip() + "\n")
    tmp.replace(out)
    return out


def _remove_stale_plots(b: _Builder) -> None:
    """plots/ belongs to the report: drop PNGs an earlier build drew that this one did not."""
    keep = {p.name for p in b.plots}
    for png in b.plots_dir.glob("*.png"):
        if png.name not in keep:
            png.unlink(missing_ok=True)


def _overview(b: _Builder, stages: list[Stage]) -> None:
    b.add("## Stages", "", "| # | stage | kind | status | seconds |", "|---|---|---|---|---|")
    for i, s in enumerate(stages, 1):
        b.add(f"| {i} | {s.name} | {s.kind} | {s.status} | {_seconds(s.seconds)} |")
    total = sum(s.seconds or 0.0 for s in stages)
    b.add("", f"Time spent in this invocation: {_seconds(total)} s (skipped stages count 0).", "")


def _stage_section(b: _Builder, stage: Stage) -> None:
    b.add(_status_line(stage), "")
    describe, figures = _KINDS.get(stage.kind, (_describe_other, _figures_other))
    b.add(describe(stage), "")
    if stage.status == "failed" or not stage.in_report:
        return
    figures(b, stage)
    _other_metrics(b, stage)


def _status_line(stage: Stage) -> str:
    if stage.status == "done":
        return f"Status: done in {_seconds(stage.seconds)} s."
    if stage.status == "skipped":
        return ("Status: skipped in this invocation (it finished earlier with the same config); "
                "figures are from that run.")
    if stage.status == "failed":
        error = stage.metrics.get("error", "no error message recorded")
        return f"Status: **failed** after {_seconds(stage.seconds)} s: `{error}`"
    if stage.status == "not run":
        return "Status: not run (not in report.json: an earlier stage failed, or `--stages` left it out)."
    return f"Status: {stage.status}."


def _other_metrics(b: _Builder, stage: Stage) -> None:
    """The stage's scalar metrics from report.json, so that nothing it reported is hidden."""
    rows = []
    for key, value in stage.metrics.items():
        if isinstance(value, str | int | float | bool) and key != "error":
            rows.append((key, value))
        elif isinstance(value, dict):  # one level of breakdown, e.g. {"rejected": {reason: count}}
            rows += [(f"{key}.{k}", v) for k, v in value.items() if isinstance(v, str | int | float | bool)]
    if rows:
        b.add("<details><summary>All metrics in report.json</summary>", "", "| metric | value |", "|---|---|")
        b.add(*(f"| {k} | {_num(v) if _is_number(v) else v} |" for k, v in rows))
        b.add("", "</details>", "")


def _missing(b: _Builder, what: str, why: str | None) -> None:
    b.add(f"_{what}: {why or 'not logged'}._", "")


# --- accuracy by stage ------------------------------------------------------------------------------


def _eval_rows(stages: list[Stage]) -> list[tuple[Stage, dict[str, float]]]:
    rows = []
    for s in stages:
        if s.kind != "eval":
            continue
        scores = {k: float(s.metrics[k]) for k in ("accuracy", "pass@1", "pass@k") if _is_number(s.metrics.get(k))}
        rows.append((s, scores))
    return rows


def _accuracy_section(b: _Builder, stages: list[Stage]) -> None:
    rows = _eval_rows(stages)
    scored = [(s, sc) for s, sc in rows if sc]
    if not scored:
        why = "no eval stage in this recipe" if not rows else "no eval stage has reported accuracy yet"
        b.add(f"_No accuracy-by-stage plot: {why}._", "")
        return
    b.image(_plot_accuracy(b.plots_dir / ACCURACY_PLOT, scored), "Accuracy by stage")
    k = next((s.metrics.get("k") for s, _ in scored if _is_number(s.metrics.get("k"))), None)
    k_text = f"k = {k}" if k is not None else "k"
    b.add("| eval stage | model | greedy accuracy | sampled pass@1 | pass@k |",
          "|---|---|---|---|---|")
    first = scored[0][1]
    for s, sc in rows:
        cells = []
        for key in ("accuracy", "pass@1", "pass@k"):
            if key not in sc:
                cells.append("—")
                continue
            delta = f" ({_points(sc[key] - first[key])})" if key in first and s is not scored[0][0] else ""
            cells.append(_pct(sc[key]) + delta)
        model = s.metrics.get("model") or s.config.get("model") or "—"
        b.add(f"| {s.name} | `{_short_path(model)}` | " + " | ".join(cells) + " |")
    b.add("", f"Greedy: one answer per prompt at temperature 0. Sampled pass@1: mean accuracy over {k_text} "
             f"samples per prompt (DeepSeek-R1's convention). Differences in points are against {scored[0][0].name}.",
          "")


def _plot_accuracy(path: Path, scored: list[tuple[Stage, dict[str, float]]]) -> Path:
    plt = _pyplot()
    labels = {"accuracy": "greedy accuracy", "pass@1": "sampled pass@1", "pass@k": "pass@k"}
    keys = [k for k in labels if any(k in sc for _, sc in scored)]
    width = 0.8 / len(keys)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.9 * len(scored) + 2), 4.5))
    drawn: dict[str, int] = {}
    for j, key in enumerate(keys):
        xs = [i + (j - (len(keys) - 1) / 2) * width for i, (_, sc) in enumerate(scored) if key in sc]
        ys = [100 * sc[key] for _, sc in scored if key in sc]
        bars = ax.bar(xs, ys, width * 0.95, label=labels[key])
        ax.bar_label(bars, fmt="%.1f", padding=2, fontsize=9)
        drawn[labels[key]] = len(ys)
    ax.set_xticks(range(len(scored)), [s.name for s, _ in scored])
    ax.set_ylim(0, 108)
    ax.set_ylabel("accuracy on held-out prompts (%)")
    ax.set_xlabel("eval stage (in recipe order)")
    ax.set_title("Accuracy by stage")
    ax.legend(loc="upper left", ncols=len(keys), fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path, "Accuracy by stage", {"bars": drawn, "stages": [s.name for s, _ in scored]})


# --- per kind -----------------------------------------------------------------------------------


def _describe_distill(stage: Stage) -> str:
    stats, _ = _read_stats(stage)
    if stats and _is_number(stats.get("generated")) and _is_number(stats.get("prompts")):
        return (f"Sampled {stats['generated']} completions for {stats['prompts']} prompts from the teacher and kept "
                f"{stats.get('kept', '?')} that passed rejection sampling (answer check, format and filters).")
    return "Sampled completions from the teacher and kept those that passed rejection sampling."


def _figures_distill(b: _Builder, stage: Stage) -> None:
    stats, problem = _read_stats(stage)
    if stats is None:
        _missing(b, "No acceptance figures", problem)
        return
    kept, generated = stats.get("kept"), stats.get("generated")
    rejected = stats.get("rejected") if isinstance(stats.get("rejected"), dict) else {}
    rejected = {str(k): v for k, v in rejected.items() if _is_number(v)}
    figures = [f"- prompts: {_num(stats.get('prompts', '?'))}", f"- completions generated: {_num(generated or '?')}",
               f"- kept: {_num(kept if kept is not None else '?')}"]
    if _is_number(kept) and _is_number(generated) and generated > 0:
        figures.append(f"- **acceptance rate: {_pct(kept / generated)}** (kept / generated)")
    if _is_number(stats.get("pass_rate")):
        figures.append(f"- samples that passed the rewards: {_pct(stats['pass_rate'])} (before the keep-per-prompt "
                       f"limit and the quality filters)")
    if _is_number(stats.get("prompt_yield")):
        figures.append(f"- prompts with at least one kept answer: {_pct(stats['prompt_yield'])}")
    skipped = stats.get("prompts_skipped")
    if isinstance(skipped, dict) and skipped:
        figures.append("- prompts skipped: " + ", ".join(f"{k} {_num(v)}" for k, v in skipped.items()))
    for key, label in (("eval_prompts", "held-out eval prompts written"), ("pairs", "preference pairs"),
                       ("teacher_errors", "teacher errors"),
                       ("samples_per_s", "samples per second")):
        if _is_number(stats.get(key)):
            figures.append(f"- {label}: {_num(stats[key])}")
    b.add("Key figures:", "", *figures, "")
    if rejected:
        total = sum(rejected.values())
        b.add("| rejection reason | count | share of rejections |", "|---|---|---|")
        for reason, count in sorted(rejected.items(), key=lambda kv: -kv[1]):
            b.add(f"| {reason} | {_num(count)} | {_pct(count / total) if total else '—'} |")
        b.add("")
    else:
        b.add("_No rejections recorded._", "")
    hist = _histogram(stats)
    b.image(_plot_distill(b.plots_dir / f"{stage.name}_distill.png", stage.name, kept, rejected, hist),
            f"{stage.name}: kept and rejected")
    if hist is None:
        b.add("_No pass-rate histogram in stats.json._", "")


def _histogram(stats: dict[str, Any]) -> tuple[list[str], list[float]] | None:
    """A pass-rate-per-prompt histogram from stats.json: {"k/n" or bin: prompts}, or a list of counts."""
    for key, value in stats.items():
        if "hist" not in key.lower():
            continue
        if isinstance(value, dict) and value and all(map(_is_number, value.values())):
            items = sorted(value.items(), key=lambda kv: _bin_order(str(kv[0])))
            return [str(k) for k, _ in items], [float(v) for _, v in items]
        if isinstance(value, list) and value and all(map(_is_number, value)):
            n = len(value)
            return [f"{i / n:.2g}–{(i + 1) / n:.2g}" for i in range(n)], [float(v) for v in value]
    return None


def _bin_order(label: str) -> tuple[float, str]:
    """Sort key for histogram bins: "3/4" → 0.75, "0.5" → 0.5; anything else after, by name."""
    try:
        num, _, den = label.partition("/")
        return (float(num) / float(den) if den else float(num)), label
    except (ValueError, ZeroDivisionError):
        return math.inf, label


def _plot_distill(path: Path, name: str, kept: Any, rejected: dict[str, float],
                  hist: tuple[list[str], list[float]] | None) -> Path | None:
    if not rejected and not _is_number(kept) and hist is None:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2 if hist else 1, figsize=(11 if hist else 6.5, 4.2), squeeze=False)
    ax = axes[0][0]
    labels = (["kept"] if _is_number(kept) else []) + [f"rejected: {r}" for r in rejected]
    counts = ([float(kept)] if _is_number(kept) else []) + list(rejected.values())
    colors = (["tab:green"] if _is_number(kept) else []) + ["tab:red"] * len(rejected)
    bars = ax.barh(labels[::-1], counts[::-1], color=colors[::-1])
    ax.bar_label(bars, fmt="%d", padding=3, fontsize=9)
    ax.set_xlabel("completions")
    ax.set_title(f"{name}: kept and rejected completions")
    ax.margins(x=0.15)
    meta: dict[str, Any] = {"bars": dict(zip(labels, counts, strict=True))}
    if hist:
        ax2 = axes[0][1]
        ax2.bar(range(len(hist[1])), hist[1], color="tab:blue")
        ax2.set_xticks(range(len(hist[0])), hist[0], rotation=45 if len(hist[0]) > 6 else 0, fontsize=8)
        ax2.set_xlabel("answers per prompt that passed the rewards")
        ax2.set_ylabel("prompts")
        ax2.set_title("How often the teacher was right, per prompt")
        meta["histogram"] = dict(zip(hist[0], hist[1], strict=True))
    return _save(fig, path, f"{name}: rejection sampling", meta)


def _describe_sft(stage: Stage) -> str:
    model = _model_name(stage, "the base model")
    rows, steps = stage.metrics.get("rows"), stage.metrics.get("steps")
    on = f" on {rows} prompt-completion rows" if _is_number(rows) else ""
    for_steps = f" for {steps} steps" if _is_number(steps) else ""
    return f"Fine-tuned {model} with TRL's SFTTrainer{on}{for_steps}{_balance_text(stage)}."


def _figures_sft(b: _Builder, stage: Stage) -> None:
    figures = []
    if _is_number(stage.metrics.get("train_loss")):
        figures.append(f"- mean training loss: {_num(stage.metrics['train_loss'])}")
    if stage.log.has("loss"):
        figures.append(f"- logged loss: {_trend(*stage.log.series('loss'))}")
    if _is_number(stage.metrics.get("eval_loss")):
        figures.append(f"- eval loss: {_num(stage.metrics['eval_loss'])}")
    if stage.log.has("mean_token_accuracy"):
        figures.append(f"- token accuracy on training batches: {_trend(*stage.log.series('mean_token_accuracy'))}")
    figures += _maxvio_figures(stage, b.run_dir)
    if figures:
        b.add("Key figures:", "", *figures, "")
    _training_plots(b, stage)


def _describe_reward_model(stage: Stage) -> str:
    model = _model_name(stage, "a model")
    return (f"Trained a Bradley-Terry reward model from {model} with TRL's RewardTrainer on chosen/rejected pairs; "
            f"pairwise accuracy is how often it scores the chosen answer above the rejected one on held-out pairs.")


def _figures_reward_model(b: _Builder, stage: Stage) -> None:
    figures = []
    acc = stage.metrics.get("pairwise_accuracy")
    if _is_number(acc):
        figures.append(f"- **pairwise accuracy (held out): {_pct(acc)}** (chance: 50.0 %)")
    else:
        figures.append("- pairwise accuracy: not reported")
    for key in ("train_loss", "eval_loss", "pairs", "eval_pairs"):
        if _is_number(stage.metrics.get(key)):
            figures.append(f"- {key.replace('_', ' ')}: {_num(stage.metrics[key])}")
    if stage.log.has("loss"):
        figures.append(f"- logged loss: {_trend(*stage.log.series('loss'))}")
    if stage.log.has("accuracy"):
        figures.append(f"- pairwise accuracy on training batches: {_trend(*stage.log.series('accuracy'))}")
    b.add("Key figures:", "", *figures, "")
    b.image(_plot_panels(b.plots_dir / f"{stage.name}_accuracy.png", stage, _REWARD_MODEL_CURVES,
                         "pairwise accuracy and margin"), f"{stage.name}: pairwise accuracy")
    _training_plots(b, stage)


def _describe_grpo(stage: Stage) -> str:
    names = _reward_names(stage)
    scored = f" with the rewards {', '.join(f'`{n}`' for n in names)}" if names else ""
    return (f"Trained {_model_name(stage, 'the policy')} with GRPO (TRL's GRPOTrainer): sampled a group of completions "
            f"per prompt, scored them{scored}, and reinforced the completions that beat their group's mean"
            f"{_balance_text(stage)}.")


def _figures_grpo(b: _Builder, stage: Stage) -> None:
    lg = stage.log
    figures = []
    if lg.has("reward"):
        figures.append(f"- **reward** (weighted sum): {_trend(*lg.series('reward'))}")
    for name in _reward_names(stage):
        if lg.has(f"rewards/{name}/mean"):
            figures.append(f"- reward `{name}`: {_trend(*lg.series(f'rewards/{name}/mean'))}")
    if lg.has("kl"):
        steps, kl = lg.series("kl")
        figures.append(f"- KL to the reference: {_trend(steps, kl)}, mean {_num(_mean(kl))}")
    elif lg.rows:
        figures.append("- KL: not logged (β = 0: no reference model)")
    if lg.has("completions/mean_length"):
        figures.append(f"- mean completion length (tokens): {_trend(*lg.series('completions/mean_length'))}")
    if lg.has("entropy"):
        figures.append(f"- entropy: {_trend(*lg.series('entropy'))}")
    if lg.has("dynamic_sampling/groups_dropped"):
        _, dropped = lg.series("dynamic_sampling/groups_dropped")
        figures.append(f"- groups dropped by dynamic sampling: {_num(sum(dropped))} in total over {len(dropped)} "
                       f"logged steps")
    if lg.has("frac_reward_zero_std"):
        zero_std = _mean(lg.series("frac_reward_zero_std")[1])
        figures.append(f"- groups with equal rewards (no signal): mean {_pct(zero_std)}")
    figures += _maxvio_figures(stage, b.run_dir)
    if figures:
        b.add("Key figures:", "", *figures, "")
    if not lg.rows:
        _missing(b, "No curves", lg.problem)
        return
    b.image(_plot_rewards(b.plots_dir / f"{stage.name}_rewards.png", stage), f"{stage.name}: rewards")
    b.image(_plot_panels(b.plots_dir / f"{stage.name}_dynamics.png", stage, _GRPO_DYNAMICS, "training dynamics"),
            f"{stage.name}: training dynamics")
    _training_plots(b, stage)


def _describe_eval(stage: Stage) -> str:
    model = _model_name(stage, "a model")
    n = next((stage.metrics[k] for k in ("prompts", "num_prompts", "n") if _is_number(stage.metrics.get(k))), None)
    held = f" on {n} held-out prompts" if n is not None else " on held-out prompts"
    return (f"Scored {model}{held}: greedy accuracy (one answer per prompt) and sampled pass@1 "
            f"(mean accuracy over k samples per prompt).")


def _figures_eval(b: _Builder, stage: Stage) -> None:
    figures = []
    names = {"accuracy": "greedy accuracy", "pass@1": "sampled pass@1", "pass@k": "pass@k"}
    for key, label in names.items():
        if _is_number(stage.metrics.get(key)):
            value = _pct(stage.metrics[key])
            figures.append(f"- **{label}: {value}**" if key == "accuracy" else f"- {label}: {value}")
    if not figures:
        figures.append("- no accuracy reported")
    b.add("Key figures:", "", *figures, "")


def _describe_other(stage: Stage) -> str:
    return f"A stage of kind `{stage.kind}` (a plugin): its metrics are listed as reported."


def _figures_other(b: _Builder, stage: Stage) -> None:
    if stage.log.rows:
        _training_plots(b, stage)


_KINDS: dict[str, tuple[Callable[[Stage], str], Callable[[_Builder, Stage], None]]] = {
    "distill": (_describe_distill, _figures_distill),
    "sft": (_describe_sft, _figures_sft),
    "reward_model": (_describe_reward_model, _figures_reward_model),
    "grpo": (_describe_grpo, _figures_grpo),
    "eval": (_describe_eval, _figures_eval),
}


def _training_plots(b: _Builder, stage: Stage) -> None:
    """Loss curve, MaxVio and expert load, whichever the stage logged."""
    lg = stage.log
    if not lg.rows:
        _missing(b, "No curves", lg.problem)
        return
    if lg.bad_lines:
        b.add(f"_{lg.bad_lines} line(s) of {lg.path.name} were not JSON and were skipped._", "")
    loss_plot = _plot_loss(b.plots_dir / f"{stage.name}_loss.png", stage)
    if loss_plot is None:
        _missing(b, "No loss curve", "no `loss` in metrics.jsonl")
    b.image(loss_plot, f"{stage.name}: loss")
    if lg.has("moe/max_violation"):
        b.image(_plot_maxvio(b.plots_dir / f"{stage.name}_maxvio.png", stage, _baseline(stage, b.run_dir)),
                f"{stage.name}: MaxVio")
        heat = _plot_expert_load(b.plots_dir / f"{stage.name}_expert_load.png", stage, _baseline(stage, b.run_dir))
        if heat is None:
            _missing(b, "No expert-load heat map", "no `moe/load/layer_<i>` in metrics.jsonl")
        b.image(heat, f"{stage.name}: expert load per layer")
    elif stage.kind in ("sft", "grpo"):
        _missing(b, "No MaxVio curve", "no `moe/max_violation` in metrics.jsonl (not an MoE model?)")


# --- MoE balancing ----------------------------------------------------------------------------------


def _balance_text(stage: Stage) -> str:
    gamma, alpha = _gamma(stage), _alpha(stage)
    if gamma is None:
        return ""
    if gamma == 0:
        return ", with the router-bias update off (γ = 0)"
    extra = f", α = {alpha:g}" if alpha else ""
    return f", with auxiliary-loss-free MoE load balancing (bias update speed γ = {gamma:g}{extra})"


def _gamma(stage: Stage) -> float | None:
    balance = stage.config.get("moe_balance")
    value = balance.get("bias_update_speed") if isinstance(balance, dict) else None
    value = stage.metrics.get("bias_update_speed", value)
    return float(value) if _is_number(value) else None


def _alpha(stage: Stage) -> float | None:
    balance = stage.config.get("moe_balance")
    value = balance.get("seq_aux_loss_coef") if isinstance(balance, dict) else None
    return float(value) if _is_number(value) else None


def _maxvio_figures(stage: Stage, run_dir: Path) -> list[str]:
    if not stage.log.has("moe/max_violation"):
        return []
    steps, values = stage.log.series("moe/max_violation")
    out = [f"- MaxVio (mean over MoE layers), {_balance_label(stage)}: {_trend(steps, values)}; "
           f"mean over the last third of steps {_num(_last_third_mean(steps, values))}"]
    base = _baseline(stage, run_dir)
    if base is not None:
        label, blog = base
        if blog.has("moe/max_violation"):
            b_steps, b_values = blog.series("moe/max_violation")
            out.append(f"- MaxVio of the comparison run, {label}: {_trend(b_steps, b_values)}; "
                       f"mean over the last third {_num(_last_third_mean(b_steps, b_values))}")
        else:
            out.append(f"- baseline {label}: {blog.problem or 'no moe/max_violation'} ({blog.path})")
    return out


def _plot_maxvio(path: Path, stage: Stage, baseline: tuple[str, Log] | None) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.3))
    series: dict[str, int] = {}
    gamma = _gamma(stage)
    label = f"{stage.name} (γ = {gamma:g})" if gamma is not None else stage.name
    layer_keys = sorted((int(m.group(1)), k) for k in stage.log.all_keys() if (m := _MAXVIO_LAYER_KEY.match(k)))
    for i, (layer, key) in enumerate(layer_keys):
        steps, values = stage.log.series(key)
        ax.plot(steps, values, lw=0.9, alpha=0.45, color="tab:blue",
                label="single layers" if i == 0 else None)
        series[f"layer_{layer}"] = len(values)
    steps, values = stage.log.series("moe/max_violation")
    ax.plot(steps, values, lw=2.2, color="tab:blue", label=f"{label}: mean over layers")
    series[label] = len(values)
    if baseline is not None and baseline[1].has("moe/max_violation"):
        b_steps, b_values = baseline[1].series("moe/max_violation")
        ax.plot(b_steps, b_values, lw=2.2, ls="--", color="tab:red", label=f"{baseline[0]}: mean over layers")
        series[baseline[0]] = len(b_values)
    _step_axis(ax)
    ax.set_ylabel("MaxVio = max load / mean load − 1")
    title = "MaxVio with and without balancing" if len([s for s in series if not s.startswith("layer_")]) > 1 \
        else "MaxVio per MoE layer"
    ax.set_title(f"{stage.name}: {title}")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    return _save(fig, path, f"{stage.name}: MaxVio", {"series": series})


def _plot_expert_load(path: Path, stage: Stage, baseline: tuple[str, Log] | None) -> Path | None:
    step, loads = stage.log.last_loads()
    if not loads:
        return None
    panels = [(f"{stage.name} ({_balance_label(stage)})", step, loads)]
    if baseline is not None:
        b_step, b_loads = baseline[1].last_loads()
        if b_loads:
            panels.append((baseline[0], b_step, b_loads))
    plt = _pyplot()
    import numpy as np
    from matplotlib.colors import TwoSlopeNorm

    matrices = []
    for _, _, layer_loads in panels:
        layers = sorted(layer_loads)
        width = max(len(v) for v in layer_loads.values())
        m = np.full((len(layers), width), np.nan)
        for r, layer in enumerate(layers):
            m[r, : len(layer_loads[layer])] = [100 * x for x in layer_loads[layer]]
        matrices.append((layers, m))
    n_experts = matrices[0][1].shape[1]
    uniform = 100 / n_experts
    vmax = max(2 * uniform, *(float(np.nanmax(m)) for _, m in matrices))
    # Diverging around the uniform share: blue = under-used, red = over-used, white = balanced.
    norm = TwoSlopeNorm(vcenter=uniform, vmin=0, vmax=vmax)
    fig, axes = plt.subplots(1, len(panels), figsize=(max(4.5, 0.5 * n_experts + 1.5) * len(panels) + 1,
                                                      max(3.0, 0.55 * len(matrices[0][0]) + 2)), squeeze=False,
                             layout="constrained")
    image = None
    for ax, (label, p_step, _), (layers, m) in zip(axes[0], panels, matrices, strict=True):
        image = ax.imshow(m, norm=norm, cmap="coolwarm", aspect="auto")
        ax.set_xticks(range(m.shape[1]), [str(e) for e in range(m.shape[1])])
        ax.set_yticks(range(len(layers)), [f"layer {layer}" for layer in layers])
        ax.set_xlabel("routed expert")
        at = f" at step {int(p_step)}" if _is_number(p_step) else ""
        ax.set_title(f"{label}{at}", fontsize=10)
        if m.size <= 256:
            for (r, c), v in np.ndenumerate(m):
                if not np.isnan(v):
                    ax.text(c, r, f"{v:.0f}", ha="center", va="center", fontsize=8)
    cbar = fig.colorbar(image, ax=axes[0].tolist(), shrink=0.9)
    cbar.set_label("share of routed tokens (%)")
    fig.suptitle(f"Expert load per layer (uniform = {uniform:.1f} % per expert; cells in %)", fontsize=11)
    meta = {"panels": [label for label, _, _ in panels], "shape": [list(m.shape) for _, m in matrices]}
    return _save(fig, path, f"{stage.name}: expert load", meta, tight=False)


def _balance_label(stage: Stage) -> str:
    gamma = _gamma(stage)
    return f"γ = {gamma:g}" if gamma is not None else "as trained"


def _maxvio_comparison_section(b: _Builder, stages: list[Stage]) -> None:
    """One plot of every stage's MaxVio when more than one stage logged it (e.g. SFT and GRPO, or γ = 0 vs γ > 0)."""
    curves = [s for s in stages if s.log.has("moe/max_violation")]
    if len(curves) < 2:
        return
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.3))
    series: dict[str, int] = {}
    unbalanced: set[bool] = set()
    for s in curves:
        steps, values = s.log.series("moe/max_violation")
        label = f"{s.name} ({_balance_label(s)})"
        unbalanced.add(_gamma(s) == 0)
        ax.plot(steps, values, lw=2, ls="--" if _gamma(s) == 0 else "-", label=label)
        series[label] = len(values)
    with_and_without = len(unbalanced) == 2
    title = "MaxVio with and without balancing" if with_and_without else "MaxVio across stages"
    _step_axis(ax, "training step (of each stage)")
    ax.set_ylabel("MaxVio = max load / mean load − 1")
    ax.set_title(title)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    b.add("## MoE load balancing " + ("with and without the bias update" if with_and_without else "across stages"), "")
    b.add(*(f"- {s.name} ({_balance_label(s)}): mean MaxVio over the last third of steps "
            f"{_num(_last_third_mean(*s.log.series('moe/max_violation')))}" for s in curves), "")
    b.image(_save(fig, b.plots_dir / MAXVIO_COMPARISON_PLOT, title, {"series": series}), title)


# --- curves -----------------------------------------------------------------------------------------


def _plot_loss(path: Path, stage: Stage) -> Path | None:
    lg = stage.log
    if not lg.has("loss"):
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.3))
    series = {"training loss": _curve(ax, *lg.series("loss"), "training loss", "tab:blue")}
    if lg.has("eval_loss"):
        steps, values = lg.series("eval_loss")
        ax.plot(steps, values, "o-", color="tab:orange", label="eval loss")
        series["eval loss"] = len(values)
    _step_axis(ax)
    ax.set_ylabel("loss")
    ax.set_title(f"{stage.name}: loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    return _save(fig, path, f"{stage.name}: loss", {"series": series})


def _plot_rewards(path: Path, stage: Stage) -> Path | None:
    lg = stage.log
    names = [n for n in _reward_names(stage) if lg.has(f"rewards/{n}/mean")]
    if not names and not lg.has("reward"):
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.3))
    series: dict[str, int] = {}
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, name in enumerate(names):
        color = colors[(i + 1) % len(colors)]
        steps, mean = lg.series(f"rewards/{name}/mean")
        series[name] = _curve(ax, steps, mean, f"reward `{name}`", color)
        std_steps, std = lg.series(f"rewards/{name}/std")
        if std and std_steps == steps:
            ax.fill_between(steps, [m - s for m, s in zip(mean, std, strict=True)],
                            [m + s for m, s in zip(mean, std, strict=True)], color=color, alpha=0.12)
    if lg.has("reward"):
        series["reward (weighted sum)"] = _curve(ax, *lg.series("reward"), "reward (weighted sum)", "black")
    _step_axis(ax)
    ax.set_ylabel("mean reward of the sampled completions")
    ax.set_title(f"{stage.name}: reward per component" + (" (band: ± std)" if names else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    return _save(fig, path, f"{stage.name}: rewards", {"series": series})


def _plot_panels(path: Path, stage: Stage, candidates: tuple[tuple[str, str], ...], title: str) -> Path | None:
    """Up to four logged series, one small panel each (those the stage did not log are left out)."""
    panels = [(k, label) for k, label in candidates if stage.log.has(k)][:4]
    if not panels:
        return None
    plt = _pyplot()
    cols = 2 if len(panels) > 1 else 1
    rows = (len(panels) + 1) // 2
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 3.3 * rows), squeeze=False)
    series: dict[str, int] = {}
    for ax, (key, label) in zip(axes.flat, panels, strict=False):
        series[key] = _curve(ax, *stage.log.series(key), key, "tab:purple")
        _step_axis(ax)
        ax.set_ylabel(key)
        ax.set_title(label, fontsize=11)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0] and series[key] >= 40:  # only the smoothed curves need a key
            ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(f"{stage.name}: {title}")
    return _save(fig, path, f"{stage.name}: {title}", {"series": series})


def _step_axis(ax: Any, label: str = "training step") -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel(label)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _curve(ax: Any, steps: list[float], values: list[float], label: str, color: str) -> int:
    """Raw values; with many noisy points, thin raw values under a centred moving average."""
    if len(values) >= 40:
        half = max(1, len(values) // 40)
        smooth = [_mean(values[max(0, i - half): i + half + 1]) for i in range(len(values))]
        ax.plot(steps, values, lw=0.8, alpha=0.35, color=color)
        ax.plot(steps, smooth, lw=2, color=color, label=f"{label} (moving average of {2 * half + 1}; thin: raw)")
    else:
        ax.plot(steps, values, "o-" if len(values) < 8 else "-", lw=2, ms=4, color=color, label=label)
    return len(values)


# --------------------------------------------------------------------------------------------------
# Helpers


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 10, "axes.titlesize": 12, "axes.labelsize": 10, "figure.dpi": 110})
    return plt


def _save(fig: Any, path: Path, title: str, data: dict[str, Any], tight: bool = True) -> Path:
    """Save and close; the PNG carries a JSON description of what it shows (tEXt chunk `posttrain`)."""
    import matplotlib.pyplot as plt

    try:
        if tight:
            fig.tight_layout()
        fig.savefig(path, dpi=110, bbox_inches="tight",
                    metadata={"Title": title, "posttrain": json.dumps(data, ensure_ascii=False)})
    finally:
        plt.close(fig)
    return path


def _reward_names(stage: Stage) -> list[str]:
    names = sorted({m.group(1) for k in stage.log.all_keys() if (m := _REWARD_KEY.match(k))})
    if names:
        return names
    rewards = stage.config.get("rewards")
    if isinstance(rewards, list):
        return [str(r.get("name")) if isinstance(r, dict) else str(r) for r in rewards]
    return []


def _model_name(stage: Stage, default: str) -> str:
    """The model a stage started from (or, for eval, scored), as the recipe named it."""
    model = stage.config.get("model")
    if model is None and stage.kind == "eval":
        model = stage.metrics.get("model")  # eval's metrics name the model it scored; others' their output
    if model == "base":
        return "the base model"
    if not model:
        return default
    if model in stage.recipe_stages:
        return f"the model of stage `{model}`"
    return f"`{_short_path(model)}`"


def _short_path(value: Any) -> str:
    text = str(value)
    parts = Path(text).parts
    return str(Path(*parts[-3:])) if len(parts) > 3 else text


def _trend(steps: list[float], values: list[float]) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{_num(values[0])} (step {_num(steps[0])})"
    return f"{_num(values[0])} (step {_num(steps[0])}) → {_num(values[-1])} (step {_num(steps[-1])})"


def _last_third_mean(steps: list[float], values: list[float]) -> float:
    tail = [v for s, v in zip(steps, values, strict=True) if s > steps[-1] * 2 / 3] or values[-1:]
    return _mean(tail)


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _num(value: Any) -> str:
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else f"{value:.4g}"
    return str(value)


def _pct(fraction: float) -> str:
    return f"{100 * fraction:.1f} %"


def _points(delta: float) -> str:
    return f"{100 * delta:+.1f} pts"


def _seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"
