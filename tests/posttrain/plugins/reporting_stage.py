"""A test stage kind with its own report section: the counting stage, described and plotted its own way."""

from __future__ import annotations

from posttrain.report import Document, StageView
from posttrain.report.plots import pyplot, save
from tests.posttrain.plugins.counting_stage import Config as Config
from tests.posttrain.plugins.counting_stage import run as run


def report_describe(stage: StageView) -> str:
    return f"Counted to {stage.metrics.get('rows', '?')}, one row at a time."


def report_figures(doc: Document, stage: StageView) -> None:
    rows = stage.metrics["rows"]
    doc.key_figures([f"- **rows: {rows}**"])
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(range(rows), [1] * rows)  # a TypeError for a non-integer count: the report must survive it
    doc.image(save(fig, doc.plot_path(stage, "rows"), f"{stage.name}: rows", {"rows": rows}), f"{stage.name}: rows")
