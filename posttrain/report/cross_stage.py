"""Sections about several stages at once: accuracy by stage (what a reader comes for), accuracy against response
length, and MaxVio across stages.

They belong to no single kind's section, so they stay in the report package; the accuracy sections read
the eval stages' metrics under the names scripts rely on (`accuracy`, `pass@1`, `pass@k`, `k`, `model`,
`response_length`, `response_length_correct`, `response_length_wrong`).
"""

from __future__ import annotations

from pathlib import Path

from posttrain.core.run_folder import (
    MAX_VIOLATION,
    PASS_AT_1,
    RESPONSE_LENGTH,
    RESPONSE_LENGTH_CORRECT,
    RESPONSE_LENGTH_WRONG,
    TEMPERATURE,
)
from posttrain.report.inputs import StageView, is_number, last_third_mean
from posttrain.report.markdown import Document, num, pct, points, short_path
from posttrain.report.plots import FIGSIZE, pyplot, save, step_axis
from posttrain.report.training import MAXVIO_AXIS, balance_label, gamma

ACCURACY_PLOT = "accuracy_by_stage.png"
LENGTH_PLOT = "accuracy_vs_length.png"
MAXVIO_COMPARISON_PLOT = "maxvio_comparison.png"
#: The kind whose stages make the accuracy-by-stage table.
EVAL_KIND = "eval"
#: Accuracy keys of an eval stage's metrics, with their names in the table and plot.
SCORES = {"accuracy": "greedy accuracy", "pass@1": "sampled pass@1", "pass@k": "pass@k"}


# --------------------------------------------------------------------------------------------------
# Accuracy by stage


def _eval_rows(stages: list[StageView]) -> list[tuple[StageView, dict[str, float]]]:
    rows = []
    for s in stages:
        if s.kind != EVAL_KIND:
            continue
        scores = {k: float(s.metrics[k]) for k in SCORES if is_number(s.metrics.get(k))}
        rows.append((s, scores))
    return rows


def accuracy_section(doc: Document, stages: list[StageView]) -> None:
    """The accuracy-by-stage plot and table, differences against the first eval stage that reported."""
    rows = _eval_rows(stages)
    scored = [(s, sc) for s, sc in rows if sc]
    if not scored:
        why = "no eval stage in this recipe" if not rows else "no eval stage has reported accuracy yet"
        doc.add(f"_No accuracy-by-stage plot: {why}._", "")
        return
    doc.plot("Accuracy by stage", lambda: plot_accuracy(doc.plots_dir / ACCURACY_PLOT, scored))
    k = next((s.metrics.get("k") for s, _ in scored if is_number(s.metrics.get("k"))), None)
    k_text = f"k = {k}" if k is not None else "k"
    doc.add("| eval stage | model | greedy accuracy | sampled pass@1 | pass@k |",
            "|---|---|---|---|---|")
    first = scored[0][1]
    for s, sc in rows:
        cells = []
        for key in SCORES:
            if key not in sc:
                cells.append("—")
                continue
            delta = f" ({points(sc[key] - first[key])})" if key in first and s is not scored[0][0] else ""
            cells.append(pct(sc[key]) + delta)
        model = s.metrics.get("model") or s.config.get("model") or "—"
        doc.add(f"| {s.name} | `{short_path(model)}` | " + " | ".join(cells) + " |")
    doc.add("", f"Greedy: one answer per prompt at temperature 0. Sampled pass@1: mean accuracy over {k_text} "
                f"samples per prompt (DeepSeek-R1's convention). Differences in points are against "
                f"{scored[0][0].name}.",
            "")


def plot_accuracy(path: Path, scored: list[tuple[StageView, dict[str, float]]]) -> Path:
    plt = pyplot()
    keys = [k for k in SCORES if any(k in sc for _, sc in scored)]
    width = 0.8 / len(keys)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.9 * len(scored) + 2), 4.5))
    drawn: dict[str, int] = {}
    for j, key in enumerate(keys):
        xs = [i + (j - (len(keys) - 1) / 2) * width for i, (_, sc) in enumerate(scored) if key in sc]
        ys = [100 * sc[key] for _, sc in scored if key in sc]
        bars = ax.bar(xs, ys, width * 0.95, label=SCORES[key])
        ax.bar_label(bars, fmt="%.1f", padding=2, fontsize=9)
        drawn[SCORES[key]] = len(ys)
    ax.set_xticks(range(len(scored)), [s.name for s, _ in scored])
    ax.set_ylim(0, 108)
    ax.set_ylabel("accuracy on held-out prompts (%)")
    ax.set_xlabel("eval stage (in recipe order)")
    ax.set_title("Accuracy by stage")
    ax.legend(loc="upper left", ncols=len(keys), fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    return save(fig, path, "Accuracy by stage", {"bars": drawn, "stages": [s.name for s, _ in scored]})


# --------------------------------------------------------------------------------------------------
# Accuracy against response length (DeepSeek-V3's distillation study: R1 distillation buys accuracy with length)


def length_section(doc: Document, stages: list[StageView]) -> None:
    """Sampled pass@1 against mean response length, one point per eval stage that measured both (none: no section)."""
    points = [s for s in stages if s.kind == EVAL_KIND and is_number(s.metrics.get(PASS_AT_1))
              and is_number(s.metrics.get(RESPONSE_LENGTH))]
    if not points:
        return
    doc.add("## Accuracy against response length", "")
    doc.plot("Accuracy against response length", lambda: plot_length(doc.plots_dir / LENGTH_PLOT, points))
    doc.add("| eval stage | sampled pass@1 | mean response length (tokens) | correct answers | wrong answers |",
            "|---|---|---|---|---|")
    for s in points:
        m = s.metrics
        cells = [num(m[k]) if is_number(m.get(k)) else "—" for k in (RESPONSE_LENGTH_CORRECT, RESPONSE_LENGTH_WRONG)]
        doc.add(f"| {s.name} | {pct(m[PASS_AT_1])} | {num(m[RESPONSE_LENGTH])} | {cells[0]} | {cells[1]} |")
    temps = sorted({num(s.metrics[TEMPERATURE]) for s in points if is_number(s.metrics.get(TEMPERATURE))})
    at = f" at T = {', '.join(temps)}" if temps else ""
    doc.add("", f"Lengths are mean tokens of the sampled completions{at}, the samples pass@1 is computed on. "
                "DeepSeek-V3 (Table 9) weighs the accuracy that distillation from R1 brings against the longer "
                "answers it teaches.", "")


def plot_length(path: Path, points: list[StageView]) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=FIGSIZE)
    xs = [float(s.metrics[RESPONSE_LENGTH]) for s in points]
    ys = [100 * float(s.metrics[PASS_AT_1]) for s in points]
    if len(points) > 1:
        ax.plot(xs, ys, "-", lw=1, color="0.7", zorder=1)
    for s, x, y in zip(points, xs, ys, strict=True):
        span = [float(s.metrics[k]) for k in (RESPONSE_LENGTH_CORRECT, RESPONSE_LENGTH_WRONG)
                if is_number(s.metrics.get(k))]
        if len(span) == 2:  # correct and wrong answers' lengths, as a bar through the point
            ax.plot(span, [y, y], "-", lw=3, alpha=0.3, color="tab:blue", zorder=2)
        ax.plot([x], [y], "o", ms=8, color="tab:blue", zorder=3)
        ax.annotate(s.name, (x, y), textcoords="offset points", xytext=(6, 6), fontsize=9)
    ax.set_xlabel("mean response length of sampled completions (tokens)")
    ax.set_ylabel("sampled pass@1 (%)")
    ax.set_ylim(-3, 105)
    right = max([*xs, *(float(s.metrics[k]) for s in points for k in (RESPONSE_LENGTH_CORRECT, RESPONSE_LENGTH_WRONG)
                        if is_number(s.metrics.get(k)))])
    ax.set_xlim(0, 1.15 * right or 1)  # room for the labels
    ax.set_title("Accuracy against response length (shaded: correct ↔ wrong answers' lengths)", fontsize=11)
    ax.grid(alpha=0.3)
    data = {"points": {s.name: [x, y / 100] for s, x, y in zip(points, xs, ys, strict=True)}}
    return save(fig, path, "Accuracy against response length", data)


# --------------------------------------------------------------------------------------------------
# MaxVio across stages


def maxvio_comparison_section(doc: Document, stages: list[StageView]) -> None:
    """One plot of every stage's MaxVio when more than one stage logged it (e.g. SFT and GRPO, or γ = 0 vs γ > 0)."""
    curves = [s for s in stages if s.log.has(MAX_VIOLATION)]
    if len(curves) < 2 or not doc.draw:
        return
    plt = pyplot()
    fig, ax = plt.subplots(figsize=FIGSIZE)
    series: dict[str, int] = {}
    unbalanced: set[bool] = set()
    for s in curves:
        steps, values = s.log.series(MAX_VIOLATION)
        label = f"{s.name} ({balance_label(s)})"
        unbalanced.add(gamma(s) == 0)
        ax.plot(steps, values, lw=2, ls="--" if gamma(s) == 0 else "-", label=label)
        series[label] = len(values)
    with_and_without = len(unbalanced) == 2
    title = "MaxVio with and without balancing" if with_and_without else "MaxVio across stages"
    step_axis(ax, "training step (of each stage)")
    ax.set_ylabel(MAXVIO_AXIS)
    ax.set_title(title)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    doc.add("## MoE load balancing " + ("with and without the bias update" if with_and_without else "across stages"),
            "")
    doc.add(*(f"- {s.name} ({balance_label(s)}): mean MaxVio over the last third of steps "
              f"{num(last_third_mean(*s.log.series(MAX_VIOLATION)))}" for s in curves), "")
    doc.image(save(fig, doc.plots_dir / MAXVIO_COMPARISON_PLOT, title, {"series": series}), title)
