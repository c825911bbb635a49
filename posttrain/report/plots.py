"""matplotlib helpers every section draws with: one look for all plots, and PNGs that say what they show.

matplotlib is imported on first use (Agg, no display), so reading a run folder stays cheap. Every PNG
carries a JSON description of what it drew (tEXt chunk `posttrain`: series and their lengths, bars),
which tests and scripts read back instead of comparing pixels.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from posttrain.report.inputs import StageView, mean

#: Size of a single-axes plot (inches).
FIGSIZE = (7.5, 4.3)
#: From this many points a curve is drawn smoothed over thin raw values.
SMOOTH_FROM = 40


def pyplot() -> Any:
    """matplotlib.pyplot with the Agg backend and the report's font sizes."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 10, "axes.titlesize": 12, "axes.labelsize": 10, "figure.dpi": 110})
    return plt


def save(fig: Any, path: Path, title: str, data: dict[str, Any], tight: bool = True) -> Path:
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


def step_axis(ax: Any, label: str = "training step") -> None:
    """An x axis of training steps (whole numbers only)."""
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel(label)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def curve(ax: Any, steps: list[float], values: list[float], label: str, color: str) -> int:
    """Raw values; with many noisy points, thin raw values under a centred moving average. Returns the count."""
    if len(values) >= SMOOTH_FROM:
        half = max(1, len(values) // SMOOTH_FROM)
        smooth = [mean(values[max(0, i - half): i + half + 1]) for i in range(len(values))]
        ax.plot(steps, values, lw=0.8, alpha=0.35, color=color)
        ax.plot(steps, smooth, lw=2, color=color, label=f"{label} (moving average of {2 * half + 1}; thin: raw)")
    else:
        ax.plot(steps, values, "o-" if len(values) < 8 else "-", lw=2, ms=4, color=color, label=label)
    return len(values)


def plot_panels(path: Path, stage: StageView, candidates: tuple[tuple[str, str], ...], title: str) -> Path | None:
    """Up to four logged series, one small panel each (those the stage did not log are left out)."""
    panels = [(k, label) for k, label in candidates if stage.log.has(k)][:4]
    if not panels:
        return None
    plt = pyplot()
    cols = 2 if len(panels) > 1 else 1
    rows = (len(panels) + 1) // 2
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 3.3 * rows), squeeze=False)
    series: dict[str, int] = {}
    for ax, (key, label) in zip(axes.flat, panels, strict=False):
        series[key] = curve(ax, *stage.log.series(key), key, "tab:purple")
        step_axis(ax)
        ax.set_ylabel(key)
        ax.set_title(label, fontsize=11)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0] and series[key] >= SMOOTH_FROM:  # only smoothed curves need a key
            ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(f"{stage.name}: {title}")
    return save(fig, path, f"{stage.name}: {title}", {"series": series})
