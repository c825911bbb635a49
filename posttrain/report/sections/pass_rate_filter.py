"""The report's section on a `pass_rate_filter` stage: prompts kept and dropped, and the pass-rate histogram."""

from __future__ import annotations

from posttrain.core.run_folder import DROPPED_SOLVED, DROPPED_UNSOLVED, KEPT, PASS_AT_1, PASS_RATES
from posttrain.report.inputs import StageView, is_number
from posttrain.report.markdown import Document, model_name, num, pct


def report_describe(stage: StageView) -> str:
    model = model_name(stage, "a model", fallback=stage.metrics.get("model"))
    return (f"Sampled answers with {model} to measure each prompt's pass rate, and kept the prompts it solves "
            f"sometimes but not always (GRPO learns nothing from the others).")


def report_figures(doc: Document, stage: StageView) -> None:
    m = stage.metrics
    figures = []
    if is_number(m.get(KEPT)) and is_number(m.get("prompts")) and m["prompts"]:
        figures.append(f"- **kept {num(m[KEPT])} of {num(m['prompts'])} prompts ({pct(m[KEPT] / m['prompts'])})**")
    for key, what in ((DROPPED_SOLVED, "always solved"), (DROPPED_UNSOLVED, "never solved")):
        if is_number(m.get(key)):
            figures.append(f"- dropped as {what}: {num(m[key])}")
    if is_number(m.get(PASS_AT_1)):
        figures.append(f"- mean pass rate before filtering: {pct(m[PASS_AT_1])}")
    if isinstance(m.get(PASS_RATES), dict):
        figures.append("- prompts by pass rate: " + ", ".join(f"{k}: {v}" for k, v in m[PASS_RATES].items()))
    doc.key_figures(figures or ["- no filter figures reported"])
