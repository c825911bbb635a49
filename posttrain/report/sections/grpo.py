"""The report's section on a `grpo` stage: reward per component, training dynamics, loss and MaxVio.

Read from what TRL's GRPOTrainer logs to metrics.jsonl (reward, rewards/<name>/mean|std, kl, ...) and
what posttrain adds (dynamic sampling, MoE balancing, tool use); `posttrain.stages.grpo` exposes these hooks.
"""

from __future__ import annotations

from pathlib import Path

from posttrain.core.run_folder import (
    DISTILL_TERM,
    DISTILL_TERM_REVERSE_KL,
    GROUPS_DROPPED,
    MTP_ACCEPTANCE,
    REWARD,
    TOOL_USED,
    reward_mean_key,
    reward_of_mean_key,
    reward_std_key,
)
from posttrain.report.inputs import StageView, is_number, mean
from posttrain.report.markdown import Document, model_name, num, pct, ref_name, trend
from posttrain.report.plots import FIGSIZE, curve, plot_panels, pyplot, save, step_axis
from posttrain.report.tools import plot_tool_use, tool_curve_figures
from posttrain.report.training import balance_text, maxvio_figures, training_plots

KL = "kl"
MEAN_LENGTH = "completions/mean_length"
ENTROPY = "entropy"
ZERO_STD = "frac_reward_zero_std"
#: Keys shown as "training dynamics", in order of interest, with their panel titles.
DYNAMICS = (
    (KL, "KL to the reference"),
    (DISTILL_TERM_REVERSE_KL, "reverse KL to the teacher per token"),
    (MTP_ACCEPTANCE, "MTP draft acceptance (speculative rollouts)"),
    (MEAN_LENGTH, "mean completion length (tokens)"),
    (ENTROPY, "token entropy (nats)"),
    (GROUPS_DROPPED, "groups dropped"),
    (ZERO_STD, "fraction of groups with equal rewards"),
    ("reward_std", "reward std within groups"),
)


def report_describe(stage: StageView) -> str:
    names = reward_names(stage)
    scored = f" with the rewards {', '.join(f'`{n}`' for n in names)}" if names else ""
    return (f"Trained {model_name(stage, 'the policy')} with GRPO (TRL's GRPOTrainer): sampled a group of completions "
            f"per prompt, scored them{scored}, and reinforced the completions that beat their group's mean"
            f"{_distillation_text(stage)}{balance_text(stage)}.")


def _distillation_text(stage: StageView) -> str:
    """How the stage distilled beside the rewards ("" without a teacher)."""
    term = stage.config.get("distillation")
    if not isinstance(term, dict) or not term.get("teacher"):
        return ""
    weight = term.get("weight", 0.1)
    return (f"; each token's advantage also got {num(weight)} × the gap between the log-probabilities of the teacher "
            f"({ref_name(stage, term['teacher'], 'the teacher')}) and the policy (on-policy distillation as a dense "
            "reward)")


def report_figures(doc: Document, stage: StageView) -> None:
    lg = stage.log
    figures = []
    if lg.has(REWARD):
        figures.append(f"- **reward** (weighted sum): {trend(*lg.series(REWARD))}")
    for name in reward_names(stage):
        if lg.has(reward_mean_key(name)):
            figures.append(f"- reward `{name}`: {trend(*lg.series(reward_mean_key(name)))}")
    if lg.has(KL):
        steps, kl = lg.series(KL)
        beta = stage.metrics.get("beta")
        coef = f" (β = {num(beta)}, k3 estimator)" if is_number(beta) else ""
        figures.append(f"- KL to the reference{coef}: {trend(steps, kl)}, mean {num(mean(kl))}")
    elif lg.rows:
        figures.append("- KL: not logged (β = 0: no reference model)")
    if lg.has(DISTILL_TERM_REVERSE_KL):
        steps, rkl = lg.series(DISTILL_TERM_REVERSE_KL)
        figures.append(f"- **distillation term**: reverse KL to the teacher per token {trend(steps, rkl)}; its mean "
                       f"share of each token's advantage {trend(*lg.series(DISTILL_TERM))}")
    if lg.has(MEAN_LENGTH):
        figures.append(f"- mean completion length (tokens): {trend(*lg.series(MEAN_LENGTH))}")
    if lg.has(ENTROPY):
        figures.append(f"- entropy: {trend(*lg.series(ENTROPY))}")
    if lg.has(MTP_ACCEPTANCE):  # speculative rollouts: whether the drafter keeps up with the policy
        figures.append(f"- MTP draft acceptance: {trend(*lg.series(MTP_ACCEPTANCE))}")
    if lg.has(GROUPS_DROPPED):
        _, dropped = lg.series(GROUPS_DROPPED)
        figures.append(f"- groups dropped by dynamic sampling: {num(sum(dropped))} in total over {len(dropped)} "
                       f"logged steps")
    if lg.has(ZERO_STD):
        zero_std = mean(lg.series(ZERO_STD)[1])
        figures.append(f"- groups with equal rewards (no signal): mean {pct(zero_std)}")
    figures += tool_curve_figures(stage)
    figures += maxvio_figures(stage)
    doc.key_figures(figures)
    if not lg.rows:
        doc.missing("No curves", lg.problem)
        return
    doc.plot(f"{stage.name}: rewards", lambda: plot_rewards(doc.plot_path(stage, "rewards"), stage))
    doc.plot(f"{stage.name}: training dynamics",
             lambda: plot_panels(doc.plot_path(stage, "dynamics"), stage, DYNAMICS, "training dynamics"))
    if lg.has(TOOL_USED):
        doc.plot(f"{stage.name}: tool use", lambda: plot_tool_use(doc.plot_path(stage, "tools"), stage))
    training_plots(doc, stage, moe=True)


def reward_names(stage: StageView) -> list[str]:
    """The reward functions TRL logged a mean for, else those the recipe names."""
    names = sorted({n for k in stage.log.all_keys() if (n := reward_of_mean_key(k)) is not None})
    if names:
        return names
    rewards = stage.config.get("rewards")
    if isinstance(rewards, list):
        return [str(r.get("name")) if isinstance(r, dict) else str(r) for r in rewards]
    return []


def plot_rewards(path: Path, stage: StageView) -> Path | None:
    """Each reward's batch mean (± std band) and the weighted sum the policy was trained on."""
    lg = stage.log
    names = [n for n in reward_names(stage) if lg.has(reward_mean_key(n))]
    if not names and not lg.has(REWARD):
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=FIGSIZE)
    series: dict[str, int] = {}
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, name in enumerate(names):
        color = colors[(i + 1) % len(colors)]
        steps, avg = lg.series(reward_mean_key(name))
        series[name] = curve(ax, steps, avg, f"reward `{name}`", color)
        std_steps, std = lg.series(reward_std_key(name))
        if std and std_steps == steps:
            ax.fill_between(steps, [m - s for m, s in zip(avg, std, strict=True)],
                            [m + s for m, s in zip(avg, std, strict=True)], color=color, alpha=0.12)
    if lg.has(REWARD):
        series["reward (weighted sum)"] = curve(ax, *lg.series(REWARD), "reward (weighted sum)", "black")
    step_axis(ax)
    ax.set_ylabel("mean reward of the sampled completions")
    ax.set_title(f"{stage.name}: reward per component" + (" (band: ± std)" if names else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    return save(fig, path, f"{stage.name}: rewards", {"series": series})
