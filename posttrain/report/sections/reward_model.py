"""The report's section on a `reward_model` stage: held-out pairwise accuracy, the accuracy and margin curves."""

from __future__ import annotations

from posttrain.core.run_folder import LOSS
from posttrain.report.inputs import StageView, is_number
from posttrain.report.markdown import Document, model_name, num, pct, trend
from posttrain.report.plots import plot_panels
from posttrain.report.training import training_plots

_CURVES = (
    ("accuracy", "pairwise accuracy (training batches)"),
    ("eval_accuracy", "pairwise accuracy (held out)"),
    ("margin", "mean reward margin, chosen − rejected"),
    ("eval_margin", "held-out reward margin"),
)


def report_describe(stage: StageView) -> str:
    return (f"Trained a Bradley-Terry reward model from {model_name(stage, 'a model')} with TRL's RewardTrainer on "
            f"chosen/rejected pairs; pairwise accuracy is how often it scores the chosen answer above the rejected "
            f"one on held-out pairs.")


def report_figures(doc: Document, stage: StageView) -> None:
    """Held-out pairwise accuracy against chance, the accuracy and margin curves, and the loss."""
    figures = []
    acc = stage.metrics.get("pairwise_accuracy")
    if is_number(acc):
        figures.append(f"- **pairwise accuracy (held out): {pct(acc)}** (chance: 50.0 %)")
    else:
        figures.append("- pairwise accuracy: not reported")
    for key in ("train_loss", "eval_loss", "pairs", "eval_pairs"):
        if is_number(stage.metrics.get(key)):
            figures.append(f"- {key.replace('_', ' ')}: {num(stage.metrics[key])}")
    if stage.log.has(LOSS):
        figures.append(f"- logged loss: {trend(*stage.log.series(LOSS))}")
    if stage.log.has("accuracy"):
        figures.append(f"- pairwise accuracy on training batches: {trend(*stage.log.series('accuracy'))}")
    doc.key_figures(figures)
    doc.plot(f"{stage.name}: pairwise accuracy",
             lambda: plot_panels(doc.plot_path(stage, "accuracy"), stage, _CURVES, "pairwise accuracy and margin"))
    training_plots(doc, stage)
