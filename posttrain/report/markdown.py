"""The text of report.md: the document being built, the parts every stage shares, and how figures are written.

A stage kind's own section (see `posttrain.report`) writes into a `Document` with `add`, `key_figures`,
`image` and `missing`; the overview table, the status line and the "all metrics" table are the same for
every kind and live here, as do the number formats, so that every section reads alike.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from posttrain.core.run_folder import PLOTS_DIR
from posttrain.report.inputs import NOT_RUN, StageView, is_number

log = logging.getLogger("posttrain.report")


@dataclass
class Document:
    """report.md as it is built: its lines, and the plots they reference (any other PNG in plots/ is stale)."""

    run_dir: Path
    lines: list[str] = field(default_factory=list)
    plots: list[Path] = field(default_factory=list)
    #: False while a run goes on: the text is rewritten after every stage, the plots (matplotlib: seconds per
    #: build) are drawn only when the run ends, fails or is interrupted; `plot` then draws nothing.
    draw: bool = True

    @property
    def plots_dir(self) -> Path:
        return self.run_dir / PLOTS_DIR

    def plot_path(self, stage: StageView, what: str) -> Path:
        """Where a stage's plot goes: plots/<stage>_<what>.png (stage names are unique, so plots are too)."""
        return self.plots_dir / f"{stage.name}_{what}.png"

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)

    def key_figures(self, figures: list[str]) -> None:
        """A "Key figures:" list (markdown bullets), when there is any."""
        if figures:
            self.add("Key figures:", "", *figures, "")

    def plot(self, alt: str, draw: Callable[[], Path | None]) -> Path | None:
        """Draw a plot with `draw` and reference it; with `draw` off, neither (None)."""
        if not self.draw:
            return None
        path = draw()
        self.image(path, alt)
        return path

    def image(self, path: Path | None, alt: str) -> None:
        """Reference a plot (None: a plot that had nothing to show, left out)."""
        if path is not None:
            self.plots.append(path)
            self.add(f"![{alt}]({PLOTS_DIR}/{path.name})", "")

    def missing(self, what: str, why: str | None) -> None:
        """Say what is not there and why, in place of a figure or plot."""
        self.add(f"_{what}: {why or 'not logged'}._", "")

    def attempt(self, what: str, fn: Callable[[], None]) -> None:
        """Run one part of the report; a failure becomes a sentence, never an exception."""
        try:
            fn()
        except Exception as exc:
            log.warning("report: could not build %s: %s: %s", what, type(exc).__name__, exc, exc_info=True)
            self.add(f"_Could not build {what}: {type(exc).__name__}: {exc}_", "")

    def text(self) -> str:
        return "\n".join(self.lines).rstrip() + "\n"


# --------------------------------------------------------------------------------------------------
# What every stage's section has


def overview(doc: Document, stages: list[StageView]) -> None:
    doc.add("## Stages", "", "| # | stage | kind | status | seconds |", "|---|---|---|---|---|")
    for i, s in enumerate(stages, 1):
        doc.add(f"| {i} | {s.name} | {s.kind} | {s.status} | {seconds(s.seconds)} |")
    total = sum(s.seconds or 0.0 for s in stages)
    doc.add("", f"Time spent in this invocation: {seconds(total)} s (skipped stages count 0).", "")


def status_line(stage: StageView) -> str:
    if stage.status == "done":
        return f"Status: done in {seconds(stage.seconds)} s."
    if stage.status == "skipped":
        return ("Status: skipped in this invocation (it finished earlier with the same config); "
                "figures are from that run.")
    if stage.status == "failed":
        error = stage.metrics.get("error", "no error message recorded")
        return f"Status: **failed** after {seconds(stage.seconds)} s: `{error}`"
    if stage.status == NOT_RUN:
        return "Status: not run (not in report.json: an earlier stage failed, or `--stages` left it out)."
    return f"Status: {stage.status}."


def all_metrics(doc: Document, stage: StageView) -> None:
    """The stage's scalar metrics from report.json, so that nothing it reported is hidden."""
    rows = []
    for key, value in stage.metrics.items():
        if isinstance(value, str | int | float | bool) and key != "error":
            rows.append((key, value))
        elif isinstance(value, dict):  # one level of breakdown, e.g. {"rejected": {reason: count}}
            rows += [(f"{key}.{k}", v) for k, v in value.items() if isinstance(v, str | int | float | bool)]
    if rows:
        doc.add("<details><summary>All metrics in report.json</summary>", "", "| metric | value |", "|---|---|")
        doc.add(*(f"| {k} | {num(v) if is_number(v) else v} |" for k, v in rows))
        doc.add("", "</details>", "")


def model_name(stage: StageView, default: str, fallback: Any = None) -> str:
    """The model a stage started from, as the recipe named it (`fallback` when the recipe names none)."""
    model = stage.config.get("model")
    return ref_name(stage, model if model is not None else fallback, default)


def ref_name(stage: StageView, ref: Any, default: str) -> str:
    """A model reference of `stage`'s options in words: the base model, an earlier stage's model, or a path."""
    if ref == "base":
        return "the base model"
    if not ref:
        return default
    if ref in stage.recipe_stages:
        return f"the model of stage `{ref}`"
    return f"`{short_path(ref)}`"


# --------------------------------------------------------------------------------------------------
# Formats


def trend(steps: list[float], values: list[float]) -> str:
    """First → last value of a logged series, with their steps."""
    if not values:
        return "—"
    if len(values) == 1:
        return f"{num(values[0])} (step {num(steps[0])})"
    return f"{num(values[0])} (step {num(steps[0])}) → {num(values[-1])} (step {num(steps[-1])})"


def short_path(value: Any) -> str:
    """The last three parts of a path: enough to tell models apart, short enough for a table."""
    text = str(value)
    parts = Path(text).parts
    return str(Path(*parts[-3:])) if len(parts) > 3 else text


def num(value: Any) -> str:
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else f"{value:.4g}"
    return str(value)


def pct(fraction: float) -> str:
    return f"{100 * fraction:.1f} %"


def points(delta: float) -> str:
    return f"{100 * delta:+.1f} pts"


def seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"
