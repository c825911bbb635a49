"""The report's section on an `eval` stage: greedy accuracy, sampled pass@1 (per temperature), response length."""

from __future__ import annotations

from posttrain.core.run_folder import (
    ACCURACY,
    BENCHMARK,
    PASS_AT_1,
    PASS_AT_1_MEAN,
    RESPONSE_LENGTH,
    RESPONSE_LENGTH_CORRECT,
    RESPONSE_LENGTH_WRONG,
    TEMPERATURE,
    TEMPERATURES,
    at_temperature,
)
from posttrain.report.cross_stage import SCORES
from posttrain.report.inputs import StageView, is_number
from posttrain.report.markdown import Document, model_name, num, pct
from posttrain.report.tools import tool_figures


def report_describe(stage: StageView) -> str:
    # An eval stage's metrics name the model it scored (other stages' name their output).
    model = model_name(stage, "a model", fallback=stage.metrics.get("model"))
    n = next((stage.metrics[k] for k in ("prompts", "num_prompts", "n") if is_number(stage.metrics.get(k))), None)
    preset = stage.metrics.get(BENCHMARK) or stage.config.get(BENCHMARK)
    what = f"prompts of the benchmark preset `{preset}`" if preset else "held-out prompts"
    held = f" on {n} {what}" if n is not None else f" on {what}"
    return (f"Scored {model}{held}: greedy accuracy (one answer per prompt) and sampled pass@1 "
            f"(mean accuracy over k samples per prompt).")


def report_figures(doc: Document, stage: StageView) -> None:
    m = stage.metrics
    figures = []
    for key, label in SCORES.items():
        if is_number(m.get(key)):
            value = pct(m[key])
            if key == PASS_AT_1 and is_number(m.get(TEMPERATURE)):
                label += f" (T = {num(m[TEMPERATURE])})"
            figures.append(f"- **{label}: {value}**" if key == ACCURACY else f"- {label}: {value}")
    temps = [t for t in m.get(TEMPERATURES) or [] if is_number(t)]
    per_t = [f"T = {num(t)}: {pct(m[at_temperature(PASS_AT_1, t)])}" for t in temps
             if is_number(m.get(at_temperature(PASS_AT_1, t)))]
    if per_t and is_number(m.get(PASS_AT_1_MEAN)):
        figures.append(f"- sampled pass@1 by temperature: {', '.join(per_t)}; mean {pct(m[PASS_AT_1_MEAN])}")
    if is_number(m.get(RESPONSE_LENGTH)):
        parts = [f"{num(m[k])} when {what}" for k, what in ((RESPONSE_LENGTH_CORRECT, "correct"),
                                                             (RESPONSE_LENGTH_WRONG, "wrong")) if is_number(m.get(k))]
        figures.append(f"- response length: {num(m[RESPONSE_LENGTH])} tokens on average"
                       + (f" ({', '.join(parts)})" if parts else ""))
    figures += tool_figures(m)
    doc.key_figures(figures or ["- no accuracy reported"])
