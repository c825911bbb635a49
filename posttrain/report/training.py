"""What any stage that logs metrics.jsonl gets: the loss curve, MaxVio and the expert-load heat map.

The trainer stages (sft, reward_model, grpo) draw these, and so does the generic section of a plugin
kind that logs, which is why they live in the report package rather than beside the trainer base.
MoE balancing is described from the stage's `moe_balance` options (γ, α), or its metrics, and compared
with a run without balancing when the stage's metrics name one (see `inputs.balance_baseline`).
"""

from __future__ import annotations

from pathlib import Path

from posttrain.core.run_folder import LOSS, MAX_VIOLATION
from posttrain.report.inputs import MetricsLog, StageView, balance_baseline, is_number, last_third_mean
from posttrain.report.markdown import Document, num, trend
from posttrain.report.plots import FIGSIZE, curve, pyplot, save, step_axis

EVAL_LOSS = "eval_loss"
#: The y-axis label of every MaxVio plot.
MAXVIO_AXIS = "MaxVio = max load / mean load − 1"


def training_plots(doc: Document, stage: StageView, moe: bool = False) -> None:
    """Loss curve, MaxVio and expert load, whichever the stage logged (`moe`: say so when MaxVio is missing)."""
    lg = stage.log
    if not lg.rows:
        doc.missing("No curves", lg.problem)
        return
    if lg.bad_lines:
        doc.add(f"_{lg.bad_lines} line(s) of {lg.path.name} were not JSON and were skipped._", "")
    if not doc.draw:
        return
    loss_plot = plot_loss(doc.plot_path(stage, "loss"), stage)
    if loss_plot is None:
        doc.missing("No loss curve", f"no `{LOSS}` in metrics.jsonl")
    doc.image(loss_plot, f"{stage.name}: loss")
    if lg.has(MAX_VIOLATION):
        baseline = balance_baseline(stage)
        doc.image(plot_maxvio(doc.plot_path(stage, "maxvio"), stage, baseline), f"{stage.name}: MaxVio")
        heat = plot_expert_load(doc.plot_path(stage, "expert_load"), stage, baseline)
        if heat is None:
            doc.missing("No expert-load heat map", "no `moe/load/layer_<i>` in metrics.jsonl")
        doc.image(heat, f"{stage.name}: expert load per layer")
    elif moe:
        doc.missing("No MaxVio curve", f"no `{MAX_VIOLATION}` in metrics.jsonl (not an MoE model?)")


# --------------------------------------------------------------------------------------------------
# MoE balancing in words


def gamma(stage: StageView) -> float | None:
    """The router-bias update speed γ the stage trained with (its metrics win over its options)."""
    balance = stage.config.get("moe_balance")
    value = balance.get("bias_update_speed") if isinstance(balance, dict) else None
    value = stage.metrics.get("bias_update_speed", value)
    return float(value) if is_number(value) else None


def alpha(stage: StageView) -> float | None:
    """The sequence-wise auxiliary loss coefficient α."""
    balance = stage.config.get("moe_balance")
    value = balance.get("seq_aux_loss_coef") if isinstance(balance, dict) else None
    return float(value) if is_number(value) else None


def balance_text(stage: StageView) -> str:
    """The end of the sentence that says what a stage did: how it balanced its experts ("" when unknown)."""
    g, a = gamma(stage), alpha(stage)
    if g is None:
        return ""
    if g == 0:
        return ", with the router-bias update off (γ = 0)"
    extra = f", α = {a:g}" if a else ""
    return f", with auxiliary-loss-free MoE load balancing (bias update speed γ = {g:g}{extra})"


def balance_label(stage: StageView) -> str:
    g = gamma(stage)
    return f"γ = {g:g}" if g is not None else "as trained"


def maxvio_figures(stage: StageView) -> list[str]:
    """Key-figure lines on MaxVio, and on the comparison run when the stage names one."""
    if not stage.log.has(MAX_VIOLATION):
        return []
    steps, values = stage.log.series(MAX_VIOLATION)
    out = [f"- MaxVio (mean over MoE layers), {balance_label(stage)}: {trend(steps, values)}; "
           f"mean over the last third of steps {num(last_third_mean(steps, values))}"]
    base = balance_baseline(stage)
    if base is not None:
        label, blog = base
        if blog.has(MAX_VIOLATION):
            b_steps, b_values = blog.series(MAX_VIOLATION)
            out.append(f"- MaxVio of the comparison run, {label}: {trend(b_steps, b_values)}; "
                       f"mean over the last third {num(last_third_mean(b_steps, b_values))}")
        else:
            out.append(f"- baseline {label}: {blog.problem or 'no moe/max_violation'} ({blog.path})")
    return out


# --------------------------------------------------------------------------------------------------
# Plots


def plot_loss(path: Path, stage: StageView) -> Path | None:
    lg = stage.log
    if not lg.has(LOSS):
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=FIGSIZE)
    series = {"training loss": curve(ax, *lg.series(LOSS), "training loss", "tab:blue")}
    if lg.has(EVAL_LOSS):
        steps, values = lg.series(EVAL_LOSS)
        ax.plot(steps, values, "o-", color="tab:orange", label="eval loss")
        series["eval loss"] = len(values)
    step_axis(ax)
    ax.set_ylabel("loss")
    ax.set_title(f"{stage.name}: loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    return save(fig, path, f"{stage.name}: loss", {"series": series})


def plot_maxvio(path: Path, stage: StageView, baseline: tuple[str, MetricsLog] | None) -> Path:
    """MaxVio per MoE layer (thin) and their mean (thick), with the comparison run's mean dashed."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=FIGSIZE)
    series: dict[str, int] = {}
    g = gamma(stage)
    label = f"{stage.name} (γ = {g:g})" if g is not None else stage.name
    for i, (layer, key) in enumerate(stage.log.max_violation_layers()):
        steps, values = stage.log.series(key)
        ax.plot(steps, values, lw=0.9, alpha=0.45, color="tab:blue", label="single layers" if i == 0 else None)
        series[f"layer_{layer}"] = len(values)
    steps, values = stage.log.series(MAX_VIOLATION)
    ax.plot(steps, values, lw=2.2, color="tab:blue", label=f"{label}: mean over layers")
    series[label] = len(values)
    if baseline is not None and baseline[1].has(MAX_VIOLATION):
        b_steps, b_values = baseline[1].series(MAX_VIOLATION)
        ax.plot(b_steps, b_values, lw=2.2, ls="--", color="tab:red", label=f"{baseline[0]}: mean over layers")
        series[baseline[0]] = len(b_values)
    step_axis(ax)
    ax.set_ylabel(MAXVIO_AXIS)
    title = "MaxVio with and without balancing" if len([s for s in series if not s.startswith("layer_")]) > 1 \
        else "MaxVio per MoE layer"
    ax.set_title(f"{stage.name}: {title}")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    return save(fig, path, f"{stage.name}: MaxVio", {"series": series})


def plot_expert_load(path: Path, stage: StageView, baseline: tuple[str, MetricsLog] | None) -> Path | None:
    """Heat map of the last logged share of tokens per routed expert and layer, beside the comparison run's."""
    step, loads = stage.log.last_loads()
    if not loads:
        return None
    panels = [(f"{stage.name} ({balance_label(stage)})", step, loads)]
    if baseline is not None:
        b_step, b_loads = baseline[1].last_loads()
        if b_loads:
            panels.append((baseline[0], b_step, b_loads))
    plt = pyplot()
    import numpy as np
    from matplotlib.colors import TwoSlopeNorm

    matrices = []
    for _, _, layer_loads in panels:
        layers = sorted(layer_loads)
        width = max(len(v) for v in layer_loads.values())
        m = np.full((len(layers), width), np.nan)
        for r, layer in enumerate(layers):
            m[r, : len(layer_loads[layer])] = [100 * x for x in layer_loads[layer]]
        matrices.append((layers, m))
    n_experts = matrices[0][1].shape[1]
    uniform = 100 / n_experts
    vmax = max(2 * uniform, *(float(np.nanmax(m)) for _, m in matrices))
    # Diverging around the uniform share: blue = under-used, red = over-used, white = balanced.
    norm = TwoSlopeNorm(vcenter=uniform, vmin=0, vmax=vmax)
    fig, axes = plt.subplots(1, len(panels), figsize=(max(4.5, 0.5 * n_experts + 1.5) * len(panels) + 1,
                                                      max(3.0, 0.55 * len(matrices[0][0]) + 2)), squeeze=False,
                             layout="constrained")
    image = None
    for ax, (label, p_step, _), (layers, m) in zip(axes[0], panels, matrices, strict=True):
        image = ax.imshow(m, norm=norm, cmap="coolwarm", aspect="auto")
        ax.set_xticks(range(m.shape[1]), [str(e) for e in range(m.shape[1])])
        ax.set_yticks(range(len(layers)), [f"layer {layer}" for layer in layers])
        ax.set_xlabel("routed expert")
        at = f" at step {int(p_step)}" if is_number(p_step) else ""
        ax.set_title(f"{label}{at}", fontsize=10)
        if m.size <= 256:
            for (r, c), v in np.ndenumerate(m):
                if not np.isnan(v):
                    ax.text(c, r, f"{v:.0f}", ha="center", va="center", fontsize=8)
    cbar = fig.colorbar(image, ax=axes[0].tolist(), shrink=0.9)
    cbar.set_label("share of routed tokens (%)")
    fig.suptitle(f"Expert load per layer (uniform = {uniform:.1f} % per expert; cells in %)", fontsize=11)
    meta = {"panels": [label for label, _, _ in panels], "shape": [list(m.shape) for _, m in matrices]}
    return save(fig, path, f"{stage.name}: expert load", meta, tight=False)
