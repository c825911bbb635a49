"""Accuracy against training compute: where each evaluated model stands in student training seconds.

A recipe that trains one student several ways at equal compute (recipes/tiny-opd.yaml: SFT, on-policy distillation,
SFT then on-policy distillation, SFT then GRPO) is read on one plot. Each eval stage whose model an earlier trainer
stage made is a point: its greedy accuracy and sampled pass@1 (± the standard error over prompts) against the
seconds the trainer stages behind its model spent in training steps, summed along the chain of `model:` references
down to the base (a stage's `student_seconds` where it excludes a teacher's forward passes, else its
`train_seconds`), and the steps likewise. A point is joined to the point of the model it was trained from; an eval
of a model no stage trained (the base at 0 s, a teacher named by path) is a reference line.

`compare_runs` reads the same points from several run folders of one recipe (seeds) and writes the table and plot
docs/results.md shows: the mean over seeds ± its standard error, and each eval stage's paired difference
against a reference eval stage on every seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from posttrain.core.run_folder import SAMPLES_FILE, STUDENT_SECONDS, TRAIN_SECONDS, read_jsonl
from posttrain.report.inputs import StageView, is_number, load_stages
from posttrain.report.markdown import Document, num, pct, points
from posttrain.report.plots import pyplot, save

COMPUTE_PLOT = "accuracy_vs_seconds.png"
EVAL_KIND = "eval"
#: The two figures, as the eval stage's samples.jsonl has them per prompt.
SCORES = {"accuracy": "greedy accuracy", "pass@1": "sampled pass@1"}


@dataclass
class Point:
    """One eval stage: its model's training chain and compute, and its scores per prompt."""

    name: str
    chain: list[str]
    steps: float
    seconds: float
    #: prompt id -> {"accuracy": 0/1, "pass@1": share of samples correct}.
    per_prompt: dict[str, dict[str, float]] = field(default_factory=dict)

    def score(self, key: str) -> float:
        values = [p[key] for p in self.per_prompt.values() if key in p]
        return sum(values) / len(values) if values else float("nan")

    def stderr(self, key: str) -> float:
        return standard_error([p[key] for p in self.per_prompt.values() if key in p])


def standard_error(values: list[float]) -> float:
    """Standard error of the mean of `values` (nan below two)."""
    if len(values) < 2:
        return float("nan")
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values))


def paired(a: Point, b: Point, key: str) -> tuple[float, float]:
    """Mean and standard error of a − b over the prompts both scored."""
    diffs = [a.per_prompt[i][key] - b.per_prompt[i][key] for i in a.per_prompt.keys() & b.per_prompt.keys()
             if key in a.per_prompt[i] and key in b.per_prompt[i]]
    return (sum(diffs) / len(diffs) if diffs else float("nan")), standard_error(diffs)


def compute_points(stages: list[StageView]) -> tuple[list[Point], list[Point]]:
    """(points of evaluated trained models, reference evals of models no stage trained), in recipe order."""
    by_name = {s.name: s for s in stages}
    trained, references = [], []
    for s in stages:
        if s.kind != EVAL_KIND or s.status != "done":
            continue
        chain, steps, seconds = [], 0.0, 0.0
        ref = s.config.get("model")
        while isinstance(ref, str) and ref in by_name and ref not in chain:
            m = by_name[ref].metrics
            spent = m.get(STUDENT_SECONDS, m.get(TRAIN_SECONDS))
            if not is_number(spent) or not is_number(m.get("steps")):
                break
            chain.insert(0, ref)
            steps, seconds = steps + m["steps"], seconds + spent
            ref = by_name[ref].config.get("model")
        resolved = ref is None or ref == "base" or ref not in by_name  # the chain reached the base or a path
        point = Point(s.name, chain, steps, seconds, _per_prompt(s))
        if not point.per_prompt or not resolved:
            continue
        (trained if chain else references).append(point)
    return trained, references


def _per_prompt(stage: StageView) -> dict[str, dict[str, float]]:
    path = stage.dir / SAMPLES_FILE
    threshold = stage.config.get("threshold", 1.0)
    try:
        rows = read_jsonl(path) if path.exists() else []
    except Exception:  # a broken samples file: no point, not a broken report
        return {}
    out: dict[str, dict[str, float]] = {}
    for r in rows:
        scores: dict[str, float] = {}
        if is_number(r.get("greedy_score")):
            scores["accuracy"] = float(r["greedy_score"] >= threshold)
        samples = [s for s in r.get("sample_scores") or [] if is_number(s)]
        if samples:
            scores["pass@1"] = sum(s >= threshold for s in samples) / len(samples)
        if scores:
            out[str(r.get("id"))] = scores
    return out


def compute_section(doc: Document, stages: list[StageView]) -> None:
    """The plot and table, when at least two eval stages evaluate models trained in this run."""
    trained, references = compute_points(stages)
    if len(trained) < 2:
        return
    doc.add("## Accuracy against training seconds", "")
    doc.plot("Accuracy against training seconds", lambda: plot_compute(
        doc.plots_dir / COMPUTE_PLOT, {p.name: [p] for p in trained}, {p.name: [p] for p in references},
        {p.name: p.chain for p in trained}))
    doc.add("| eval stage | trained by | steps | student seconds | greedy accuracy | sampled pass@1 |",
            "|---|---|---|---|---|---|")
    for p in [*references, *trained]:
        cells = [f"{pct(p.score(k))} ± {100 * p.stderr(k):.1f}" if not math.isnan(p.score(k)) else "—"
                 for k in SCORES]
        doc.add(f"| {p.name} | {' → '.join(p.chain) or '—'} | {num(p.steps)} | {num(round(p.seconds, 1))} | "
                + " | ".join(cells) + " |")
    doc.add("", "Seconds are those spent in training steps (sampling included; a teacher's forward passes, loading, "
                "held-out evaluation and saving not), summed over the stages that made the model; ± is the standard "
                "error over prompts.", "")


def plot_compute(path: Path, trained: dict[str, list[Point]], references: dict[str, list[Point]],
                 chains: dict[str, list[str]]) -> Path:
    """Two panels (greedy, sampled): each eval stage at its mean seconds and score over runs (± standard error: over
    prompts for one run, over runs for several), joined to the eval of the model it was trained from."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12.5, 4.6), sharey=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    evaluated = {chain[-1]: name for name, chain in chains.items()}  # trainer stage -> the eval of its model
    drawn: dict[str, int] = {}
    for ax, (key, label) in zip(axes, SCORES.items(), strict=True):
        where = {name: _mean(runs, key) for name, runs in trained.items()}
        for j, (name, runs) in enumerate(references.items()):
            y, _ = _mean_score(runs, key)
            ax.axhline(100 * y, ls="--", lw=1, color="0.5")
            ax.annotate(name, (0.01, 100 * y), xycoords=("axes fraction", "data"), textcoords="offset points",
                        xytext=(0, 3 + 9 * (j % 2)), fontsize=8, color="0.35")
        for i, (name, (x, y, err)) in enumerate(where.items()):
            color = colors[i % len(colors)]
            parent = evaluated.get(chains[name][-2]) if len(chains[name]) > 1 else None
            if parent in where:
                px, py, _ = where[parent]
                ax.plot([px, x], [100 * py, 100 * y], "-", lw=1.5, color=color, alpha=0.6)
            ax.errorbar([x], [100 * y], yerr=[100 * err] if not math.isnan(err) else None, fmt="o", ms=6,
                        color=color, capsize=3, label=f"{name} ({' → '.join(chains[name])})")
            drawn[name] = len(trained[name])
        ax.set_xlim(left=0)
        ax.set_xlabel("student training seconds (summed over the stages behind the model)")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy on held-out prompts (%)")
    axes[1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    runs = max((len(v) for v in trained.values()), default=1)
    fig.suptitle("Accuracy against training seconds" + (f" (mean of {runs} runs, ± standard error over runs)"
                                                       if runs > 1 else " (± standard error over prompts)"))
    return save(fig, path, "Accuracy against training seconds", {"points": drawn})


def _mean_score(runs: list[Point], key: str) -> tuple[float, float]:
    values = [p.score(key) for p in runs]
    if len(values) == 1:
        return values[0], runs[0].stderr(key)
    return sum(values) / len(values), standard_error(values)


def _mean(runs: list[Point], key: str) -> tuple[float, float, float]:
    y, err = _mean_score(runs, key)
    return sum(p.seconds for p in runs) / len(runs), y, err


def compare_runs(run_dirs: list[Path], plot: Path, reference: str) -> str:
    """Markdown: per eval stage, steps, seconds, greedy and sampled scores over `run_dirs` (mean ± standard error over
    runs) and, on each run, the paired difference against eval stage `reference` (± its standard error over
    prompts); the plot is written to `plot`."""
    per_run: list[dict[str, Point]] = []
    trained: dict[str, list[Point]] = {}
    references: dict[str, list[Point]] = {}
    for run in run_dirs:
        found, refs = compute_points(load_stages(run))
        per_run.append({p.name: p for p in [*refs, *found]})
        for group, points_ in ((trained, found), (references, refs)):
            for p in points_:
                group.setdefault(p.name, []).append(p)
    plot_compute(plot, trained, references, {name: runs[0].chain for name, runs in trained.items()})
    lines = ["| eval stage | trained by | steps | student seconds (per run) | greedy accuracy | sampled pass@1 | "
             f"greedy vs {reference}, per run | pass@1 vs {reference}, per run |", "|---|---|---|---|---|---|---|---|"]
    for name, runs in {**references, **trained}.items():
        cells = [f"{pct(y)} ± {100 * err:.1f}" for y, err in (_mean_score(runs, key) for key in SCORES)]
        for key in SCORES:
            diffs = [paired(run[name], run[reference], key) for run in per_run
                     if name != reference and name in run and reference in run]
            cells.append(", ".join(f"{points(d)} ± {100 * e:.1f}" for d, e in diffs) or "—")
        seconds = ", ".join(num(round(p.seconds)) for p in runs)
        lines.append(f"| {name} | {' → '.join(runs[0].chain) or '—'} | {num(runs[0].steps)} | {seconds} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
