"""The report's section on an `on_policy_distill` stage: the loss, the reverse KL per token and the student-teacher
agreement on the student's own samples and on held-out prompts, the student's seconds, MaxVio."""

from __future__ import annotations

from posttrain.core.run_folder import (
    LOSS,
    OPD_AGREEMENT,
    OPD_REVERSE_KL,
    STUDENT_SECONDS,
    TEACHER_SECONDS,
    TRAIN_SECONDS,
)
from posttrain.report.inputs import StageView, is_number
from posttrain.report.markdown import Document, model_name, num, pct, ref_name, trend
from posttrain.report.plots import plot_panels
from posttrain.report.training import balance_text, maxvio_figures, training_plots

HELD_OUT = "eval_"
_CURVES = (
    (OPD_REVERSE_KL, "reverse KL(student ‖ teacher) per token, training samples"),
    (HELD_OUT + OPD_REVERSE_KL, "reverse KL per token, held-out prompts"),
    (OPD_AGREEMENT, "student-teacher agreement, training samples"),
    (HELD_OUT + OPD_AGREEMENT, "student-teacher agreement, held-out prompts"),
)


def report_describe(stage: StageView) -> str:
    m = stage.metrics
    beta = m.get("beta", (stage.config.get("trl") or {}).get("beta", 1.0))
    divergence = {0.0: "the forward KL", 1.0: "the reverse KL"}.get(beta, f"the generalised JSD (β = {num(beta)})") \
        if is_number(beta) else "the generalised JSD"
    rows = f" {m['rows']}" if is_number(m.get("rows")) else ""
    steps = f" for {m['steps']} steps" if is_number(m.get("steps")) else ""
    teacher = ref_name(stage, stage.config.get("teacher"), "the teacher")
    return (f"Distilled {model_name(stage, 'the base model')} on-policy from {teacher} with TRL's DistillationTrainer"
            f"{steps}: the student answered{rows} prompts itself, the teacher scored every token of its answers, and "
            f"the student moved towards the teacher's next-token distribution under {divergence}"
            f"{balance_text(stage)}. Agreement is the share of answer tokens where the two models' most likely next "
            "token is the same.")


def report_figures(doc: Document, stage: StageView) -> None:
    """Reverse KL and agreement (training samples, held out), the seconds, loss and MaxVio."""
    m, lg = stage.metrics, stage.log
    figures = []
    for label, prefix in (("held-out prompts", "heldout"), ("training samples", "train")):
        first, last = m.get(f"{prefix}_agreement_first"), m.get(f"{prefix}_agreement_last")
        if is_number(first) and is_number(last):
            figures.append(f"- **student-teacher agreement, {label}: {pct(first)} → {pct(last)}**")
        first, last = m.get(f"{prefix}_reverse_kl_first"), m.get(f"{prefix}_reverse_kl_last")
        if is_number(first) and is_number(last):
            figures.append(f"- reverse KL per token, {label}: {num(first)} → {num(last)} nats")
    if lg.has(LOSS):
        figures.append(f"- logged loss: {trend(*lg.series(LOSS))}")
    if is_number(m.get(TRAIN_SECONDS)) and is_number(m.get(STUDENT_SECONDS)):
        teacher = f", the teacher's forward passes {num(m[TEACHER_SECONDS])} s" if is_number(m.get(TEACHER_SECONDS)) \
            else ""
        figures.append(f"- seconds in training steps: {num(m[TRAIN_SECONDS])}, of which the student's "
                       f"{num(m[STUDENT_SECONDS])}{teacher}")
    figures += maxvio_figures(stage)
    doc.key_figures(figures)
    doc.plot(f"{stage.name}: reverse KL and agreement",
             lambda: plot_panels(doc.plot_path(stage, "distillation"), stage, _CURVES, "reverse KL and agreement"))
    training_plots(doc, stage, moe=True)
