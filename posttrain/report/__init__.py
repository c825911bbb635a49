"""DIR/report.md and DIR/plots/*.png from DIR/report.json and the stages' logs; `posttrain report DIR` rebuilds it.

The report is a view of a run, never part of it: every input other than report.json is optional,
and a missing or broken log, or a plot that cannot be drawn, becomes a sentence in the report
("no metrics.jsonl: no curves"), not an exception. It opens with accuracy by stage (the figure a
reader comes for), then has one section per stage in recipe order: what it did, its key figures,
its plots.

Each kind has its own section, two functions

    report_describe(stage: StageView) -> str                  # one paragraph: what the stage did
    report_figures(doc: Document, stage: StageView) -> None   # key figures and plots (only if it ran)

in `sections/<kind>.py` for the built-in kinds (so that drawing a report never imports torch or a
trainer), or in a plugin kind's own module; a kind without them (or whose module cannot be imported)
gets the generic section. The report is handed the kinds (`write_report(run_dir, kinds=KINDS)`)
rather than importing them, and asks them only about kinds it has no section of its own for.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from posttrain.core.run_folder import REPORT_MD
from posttrain.report.compute import compute_section
from posttrain.report.cross_stage import accuracy_section, length_section, maxvio_comparison_section
from posttrain.report.inputs import MetricsLog, StageView, load_stages
from posttrain.report.markdown import Document, all_metrics, overview, status_line
from posttrain.report.training import training_plots

__all__ = ["DESCRIBE_HOOK", "FIGURES_HOOK", "Document", "MetricsLog", "ReportKinds", "StageView", "write_report"]

log = logging.getLogger("posttrain.report")

#: Said at the top of a report written while the run goes on (no plots yet).
PLOTS_LATER = "_The run is in progress: plots are drawn when it ends (or fails, or is interrupted)._"
#: Names of the optional functions a stage module defines for its section (see the module docstring).
DESCRIBE_HOOK = "report_describe"
FIGURES_HOOK = "report_figures"

Describe = Callable[[StageView], str]
Figures = Callable[[Document, StageView], None]


class KindHooks(Protocol):
    def hook(self, name: str) -> Any: ...


class ReportKinds(Protocol):
    """What the report needs of the stage kinds (`posttrain.stages.KINDS` in the pipeline): a kind's hooks,
    KeyError for a kind it does not know."""

    def get(self, kind: str) -> KindHooks: ...


def write_report(run_dir: Path, *, kinds: ReportKinds, plots: bool = True) -> Path:
    """Write DIR/report.md and DIR/plots/*.png; returns the path of report.md.

    `plots=False` writes the text alone (a fraction of a second instead of seconds): the runner rewrites
    report.md so after every stage and draws the plots once, when the run ends, fails or is interrupted."""
    run_dir = Path(run_dir)
    stages = load_stages(run_dir)
    doc = Document(run_dir, draw=plots)
    if plots:
        doc.plots_dir.mkdir(parents=True, exist_ok=True)
    doc.add(f"# posttrain run report: `{run_dir.name}`", "")
    if not plots:
        doc.add(PLOTS_LATER, "")
    doc.attempt("the accuracy-by-stage summary", lambda: accuracy_section(doc, stages))
    doc.attempt("accuracy against response length", lambda: length_section(doc, stages))
    doc.attempt("accuracy against training seconds", lambda: compute_section(doc, stages))
    doc.attempt("the stage overview", lambda: overview(doc, stages))
    for i, stage in enumerate(stages, 1):
        doc.add(f"## {i}. {stage.name} (`{stage.kind}`)", "")
        doc.attempt(f"the section of stage {stage.name!r}", lambda stage=stage: _stage_section(doc, stage, kinds))
    doc.attempt("the MaxVio comparison", lambda: maxvio_comparison_section(doc, stages))
    if plots:
        _remove_stale_plots(doc)
    out = run_dir / REPORT_MD
    tmp = run_dir / (REPORT_MD + ".tmp")
    tmp.write_text(doc.text())
    tmp.replace(out)
    return out


def _stage_section(doc: Document, stage: StageView, kinds: ReportKinds) -> None:
    """Status, what the stage did, and (if it ran) its figures and plots and every metric it reported."""
    describe, figures, note = _section_hooks(kinds, stage.kind)
    doc.add(status_line(stage), "")
    doc.add(describe(stage), "")
    if note:
        doc.add(note, "")
    if stage.status == "failed" or not stage.in_report:
        return
    figures(doc, stage)
    all_metrics(doc, stage)


class _Section:
    """A built-in kind's section module (`sections/<kind>.py`), asked for hooks as a stage kind is."""

    def __init__(self, module: Any):
        self.module = module

    def hook(self, name: str) -> Any:
        return getattr(self.module, name, None)


def _builtin_section(kind: str) -> _Section | None:
    name = f"{__name__}.sections.{kind}"
    if not kind.isidentifier() or importlib.util.find_spec(name) is None:
        return None
    return _Section(importlib.import_module(name))


def _section_hooks(kinds: ReportKinds, kind: str) -> tuple[Describe, Figures, str | None]:
    """The kind's own describe/figures hooks (its module in sections/, else the kind's module), each falling back
    to the generic one, and a note when the kind's module is registered but cannot be imported."""
    try:
        found: KindHooks | None = _builtin_section(kind) or kinds.get(kind)
    except KeyError:
        found, note = None, None
    except Exception as exc:  # a broken or uninstalled kind module: the report still describes the stage
        log.warning("report: stage kind %r unavailable: %s: %s", kind, type(exc).__name__, exc)
        found, note = None, f"_The section of kind `{kind}` is unavailable ({type(exc).__name__}: {exc})._"
    else:
        note = None
    describe = found.hook(DESCRIBE_HOOK) if found is not None else None
    figures = found.hook(FIGURES_HOOK) if found is not None else None
    return describe or describe_generic, figures or figures_generic, note


def describe_generic(stage: StageView) -> str:
    return f"A stage of kind `{stage.kind}` (a plugin): its metrics are listed as reported."


def figures_generic(doc: Document, stage: StageView) -> None:
    """The curves of whatever it logged to metrics.jsonl (a plugin need not log: then nothing)."""
    if stage.log.rows:
        training_plots(doc, stage)


def _remove_stale_plots(doc: Document) -> None:
    """plots/ belongs to the report: drop PNGs an earlier build drew that this one did not."""
    keep = {p.name for p in doc.plots}
    for png in doc.plots_dir.glob("*.png"):
        if png.name not in keep:
            png.unlink(missing_ok=True)
