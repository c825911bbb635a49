"""The report's section on a `distill` stage: how many teacher samples were kept, why the rest were rejected.

Read from DIR/<stage>/stats.json (see `DistillStats`); `posttrain.stages.distill` exposes these hooks.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from posttrain.core.run_folder import DistillStats
from posttrain.report.inputs import StageView, is_number, read_stats
from posttrain.report.markdown import Document, num, pct
from posttrain.report.plots import pyplot, save

#: Optional counts in stats.json, listed with these labels when present.
_EXTRA_COUNTS = (("eval_prompts", "held-out eval prompts written"), ("pairs", "preference pairs"),
                 ("teacher_errors", "teacher errors"), ("samples_per_s", "samples per second"))


def report_describe(stage: StageView) -> str:
    stats, _ = read_stats(stage)
    if stats and is_number(stats.get("generated")) and is_number(stats.get("prompts")):
        return (f"Sampled {stats['generated']} completions for {stats['prompts']} prompts from the teacher and kept "
                f"{stats.get('kept', '?')} that passed rejection sampling (answer check, format and filters).")
    return "Sampled completions from the teacher and kept those that passed rejection sampling."


def report_figures(doc: Document, stage: StageView) -> None:
    """Acceptance rate, pass rates, every rejection reason with its share, and the kept/rejected plot."""
    stats, problem = read_stats(stage)
    if stats is None:
        doc.missing("No acceptance figures", problem)
        return
    kept, generated = stats.get("kept"), stats.get("generated")
    rejected = stats.get("rejected") if isinstance(stats.get("rejected"), dict) else {}
    rejected = {str(k): v for k, v in rejected.items() if is_number(v)}
    figures = [f"- prompts: {num(stats.get('prompts', '?'))}", f"- completions generated: {num(generated or '?')}",
               f"- kept: {num(kept if kept is not None else '?')}"]
    if is_number(kept) and is_number(generated) and generated > 0:
        figures.append(f"- **acceptance rate: {pct(kept / generated)}** (kept / generated)")
    if is_number(stats.get("pass_rate")):
        figures.append(f"- samples that passed the rewards: {pct(stats['pass_rate'])} (before the keep-per-prompt "
                       f"limit and the quality filters)")
    if is_number(stats.get("prompt_yield")):
        figures.append(f"- prompts with at least one kept answer: {pct(stats['prompt_yield'])}")
    skipped = stats.get("prompts_skipped")
    if isinstance(skipped, dict) and skipped:
        figures.append("- prompts skipped: " + ", ".join(f"{k} {num(v)}" for k, v in skipped.items()))
    for key, label in _EXTRA_COUNTS:
        if is_number(stats.get(key)):
            figures.append(f"- {label}: {num(stats[key])}")
    doc.key_figures(figures)
    if rejected:
        total = sum(rejected.values())
        doc.add("| rejection reason | count | share of rejections |", "|---|---|---|")
        for reason, count in sorted(rejected.items(), key=lambda kv: -kv[1]):
            doc.add(f"| {reason} | {num(count)} | {pct(count / total) if total else '—'} |")
        doc.add("")
    else:
        doc.add("_No rejections recorded._", "")
    hist = _histogram(stats)
    doc.plot(f"{stage.name}: kept and rejected",
             lambda: _plot(doc.plot_path(stage, "distill"), stage.name, kept, rejected, hist))
    if hist is None:
        doc.add("_No pass-rate histogram in stats.json._", "")


def _histogram(stats: DistillStats) -> tuple[list[str], list[float]] | None:
    """A pass-rate-per-prompt histogram from stats.json: {"k/n" or bin: prompts}, or a list of counts."""
    for key, value in stats.items():
        if "hist" not in key.lower():
            continue
        if isinstance(value, dict) and value and all(map(is_number, value.values())):
            items = sorted(value.items(), key=lambda kv: _bin_order(str(kv[0])))
            return [str(k) for k, _ in items], [float(v) for _, v in items]
        if isinstance(value, list) and value and all(map(is_number, value)):
            n = len(value)
            return [f"{i / n:.2g}–{(i + 1) / n:.2g}" for i in range(n)], [float(v) for v in value]
    return None


def _bin_order(label: str) -> tuple[float, str]:
    """Sort key for histogram bins: "3/4" → 0.75, "0.5" → 0.5; anything else after, by name."""
    try:
        numerator, _, denominator = label.partition("/")
        return (float(numerator) / float(denominator) if denominator else float(numerator)), label
    except (ValueError, ZeroDivisionError):
        return math.inf, label


def _plot(path: Path, name: str, kept: Any, rejected: dict[str, float],
          hist: tuple[list[str], list[float]] | None) -> Path | None:
    """Kept vs each rejection reason (bars), beside the pass-rate histogram when stats.json has one."""
    if not rejected and not is_number(kept) and hist is None:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, 2 if hist else 1, figsize=(11 if hist else 6.5, 4.2), squeeze=False)
    ax = axes[0][0]
    labels = (["kept"] if is_number(kept) else []) + [f"rejected: {r}" for r in rejected]
    counts = ([float(kept)] if is_number(kept) else []) + list(rejected.values())
    colors = (["tab:green"] if is_number(kept) else []) + ["tab:red"] * len(rejected)
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
    return save(fig, path, f"{name}: rejection sampling", meta)
