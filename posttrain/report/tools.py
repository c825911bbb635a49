"""How a model used its tools, in the report: the figures of an eval stage, and GRPO's curves over its steps.

The keys are run_folder's `tools/...` (posttrain/core/tools.py computes them); the grpo and eval sections call
these when the stage used tools.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from posttrain.core.run_folder import (
    TOOL_ACCURACY_WITH_CALL,
    TOOL_ACCURACY_WITHOUT_CALL,
    TOOL_CALLS,
    TOOL_ERROR_RATE,
    TOOL_SECONDS,
    TOOL_TURNS,
    TOOL_USED,
)
from posttrain.report.inputs import StageView, is_number, mean
from posttrain.report.markdown import num, pct, trend
from posttrain.report.plots import curve, pyplot, save, step_axis


def tool_figures(metrics: dict[str, Any]) -> list[str]:
    """An eval stage's tool figures (none when it ran no tools)."""
    if not is_number(metrics.get(TOOL_USED)):
        return []
    out = [f"- completions that called a tool: {pct(metrics[TOOL_USED])}; tool calls per completion "
           f"{num(metrics.get(TOOL_CALLS))}, turns {num(metrics.get(TOOL_TURNS))}"]
    if is_number(metrics.get(TOOL_ERROR_RATE)):
        out.append(f"- tool calls that failed (error, timeout, killed): {pct(metrics[TOOL_ERROR_RATE])}")
    split = [f"{pct(metrics[k])} {what}" for k, what in ((TOOL_ACCURACY_WITH_CALL, "with a tool call"),
                                                          (TOOL_ACCURACY_WITHOUT_CALL, "without"))
             if is_number(metrics.get(k))]
    if split:
        out.append(f"- sampled accuracy: {', '.join(split)}")
    return out


def tool_curve_figures(stage: StageView) -> list[str]:
    """GRPO's tool figures: first → last logged value of each."""
    lg = stage.log
    out = []
    for key, label in ((TOOL_USED, "completions that called a tool"), (TOOL_CALLS, "tool calls per completion"),
                       (TOOL_ERROR_RATE, "tool calls that failed"), (TOOL_ACCURACY_WITH_CALL, "accuracy with a call"),
                       (TOOL_ACCURACY_WITHOUT_CALL, "accuracy without a call")):
        if lg.has(key):
            out.append(f"- {label}: {trend(*lg.series(key))}")
    if lg.has(TOOL_SECONDS) and lg.has("step_time"):
        share = mean(lg.series(TOOL_SECONDS)[1]) / max(mean(lg.series("step_time")[1]), 1e-9)
        out.append(f"- time inside tool calls: {pct(share)} of a step on average")
    return out


def plot_tool_use(path: Path, stage: StageView) -> Path | None:
    """Four panels over GRPO's steps: how often the policy called a tool, how many calls, how many failed, and the
    accuracy of the completions with a call against those without."""
    lg = stage.log
    if not lg.has(TOOL_USED):
        return None
    plt = pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(12, 6.6))
    series: dict[str, int] = {}
    panels = (((TOOL_USED, "share with a tool call"),), ((TOOL_CALLS, "calls per completion"),),
              ((TOOL_ERROR_RATE, "share of calls that failed"),),
              ((TOOL_ACCURACY_WITH_CALL, "with a call"), (TOOL_ACCURACY_WITHOUT_CALL, "without a call")))
    titles = ("completions that called a tool", "tool calls per completion", "tool calls that failed",
              "accuracy (normalised reward ≥ 1)")
    colors = ("tab:purple", "tab:orange")
    for ax, keys, title in zip(axes.flat, panels, titles, strict=True):
        for (key, label), color in zip(keys, colors, strict=False):
            if lg.has(key):
                series[key] = curve(ax, *lg.series(key), label, color)
        step_axis(ax)
        ax.set_title(title, fontsize=11)
        ax.grid(alpha=0.3)
        if len(keys) > 1:
            ax.legend(fontsize=8)
    fig.suptitle(f"{stage.name}: tool use")
    return save(fig, path, f"{stage.name}: tool use", {"series": series})
