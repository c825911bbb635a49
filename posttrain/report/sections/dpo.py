"""The report's section on a `dpo` stage: held-out preference accuracy and margin, the curves, MaxVio."""

from __future__ import annotations

from posttrain.core.run_folder import DPO_ACCURACY, DPO_MARGIN, LOSS
from posttrain.report.inputs import StageView, is_number
from posttrain.report.markdown import Document, model_name, num, pct, trend
from posttrain.report.plots import plot_panels
from posttrain.report.training import balance_text, maxvio_figures, training_plots

_CURVES = (
    (DPO_ACCURACY, "preference accuracy (training batches)"),
    ("eval_" + DPO_ACCURACY, "preference accuracy (held out)"),
    (DPO_MARGIN, "implicit reward margin, chosen − rejected"),
    ("eval_" + DPO_MARGIN, "held-out implicit reward margin"),
)


def report_describe(stage: StageView) -> str:
    beta = stage.metrics.get("beta")
    beta_text = f", β = {num(beta)}" if is_number(beta) else ""
    ref = stage.config.get("reference")
    ref_text = f"`{ref}`" if ref else "the starting model"
    return (f"Trained {model_name(stage, 'the base model')} with DPO (TRL's DPOTrainer{beta_text}) on chosen/rejected "
            f"pairs against a frozen reference ({ref_text}){balance_text(stage)}. The implicit reward of an answer is "
            f"β·log(π/π_ref); preference accuracy is how often the chosen answer's beats the rejected one's on "
            f"held-out pairs.")


def report_figures(doc: Document, stage: StageView) -> None:
    """Held-out preference accuracy and margin, the training curves, loss and MaxVio."""
    m, lg = stage.metrics, stage.log
    figures = []
    if is_number(m.get("pairwise_accuracy")):
        figures.append(f"- **preference accuracy (held out): {pct(m['pairwise_accuracy'])}** (chance: 50.0 %)")
    if is_number(m.get("reward_margin")):
        figures.append(f"- implicit reward margin (held out): {num(m['reward_margin'])} (chosen "
                       f"{num(m.get('chosen_reward'))}, rejected {num(m.get('rejected_reward'))})")
    for key in ("train_loss", "eval_loss", "pairs", "eval_pairs"):
        if is_number(m.get(key)):
            figures.append(f"- {key.replace('_', ' ')}: {num(m[key])}")
    if lg.has(LOSS):
        figures.append(f"- logged loss: {trend(*lg.series(LOSS))}")
    if lg.has(DPO_ACCURACY):
        figures.append(f"- preference accuracy on training batches: {trend(*lg.series(DPO_ACCURACY))}")
    figures += maxvio_figures(stage)
    doc.key_figures(figures)
    doc.plot(f"{stage.name}: preference accuracy and margin",
             lambda: plot_panels(doc.plot_path(stage, "preferences"), stage, _CURVES, "preference accuracy and margin"))
    training_plots(doc, stage, moe=True)
