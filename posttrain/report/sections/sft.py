"""The report's section on an `sft` stage: loss and token accuracy, MaxVio, the training curves."""

from __future__ import annotations

from posttrain.core.run_folder import LOSS
from posttrain.report.inputs import StageView, is_number
from posttrain.report.markdown import Document, model_name, num, trend
from posttrain.report.training import balance_text, maxvio_figures, training_plots


def report_describe(stage: StageView) -> str:
    rows, steps = stage.metrics.get("rows"), stage.metrics.get("steps")
    on = f" on {rows} prompt-completion rows" if is_number(rows) else ""
    for_steps = f" for {steps} steps" if is_number(steps) else ""
    return (f"Fine-tuned {model_name(stage, 'the base model')} with TRL's SFTTrainer{on}{for_steps}"
            f"{balance_text(stage)}.")


def report_figures(doc: Document, stage: StageView) -> None:
    """Loss and token accuracy first → last, MaxVio against the run without balancing, and the curves."""
    figures = []
    if is_number(stage.metrics.get("train_loss")):
        figures.append(f"- mean training loss: {num(stage.metrics['train_loss'])}")
    if stage.log.has(LOSS):
        figures.append(f"- logged loss: {trend(*stage.log.series(LOSS))}")
    if is_number(stage.metrics.get("eval_loss")):
        figures.append(f"- eval loss: {num(stage.metrics['eval_loss'])}")
    if stage.log.has("mean_token_accuracy"):
        figures.append(f"- token accuracy on training batches: {trend(*stage.log.series('mean_token_accuracy'))}")
    figures += maxvio_figures(stage)
    doc.key_figures(figures)
    training_plots(doc, stage, moe=True)
