"""A fake run folder, written the way `posttrain run recipes/tiny-r1.yaml` and its stages write one, and helpers
that read a built report back (its sections, the description each PNG carries)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import yaml
from PIL import Image

SFT_STEPS = list(range(10, 310, 10))
GRPO_STEPS = list(range(5, 185, 5))
MOE_LAYERS = (1, 2, 3)  # layer 0 is dense, as in the tiny DeepSeek-V3
EXPERTS = 8


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _loads(step: int, skew: float) -> dict[str, list[float]]:
    """Per-layer load fractions: one expert over-used by `skew`, the others sharing the rest."""
    out = {}
    for layer in MOE_LAYERS:
        hot = (step // 10 + layer) % EXPERTS
        top = 1 / EXPERTS * (1 + skew)
        rest = (1 - top) / (EXPERTS - 1)
        out[f"moe/load/layer_{layer}"] = [round(top if e == hot else rest, 5) for e in range(EXPERTS)]
    return out


def sft_rows(gamma: float) -> list[dict[str, Any]]:
    rows = []
    for i, step in enumerate(SFT_STEPS):
        maxvio = 0.9 * math.exp(-i / 6) + 0.08 if gamma > 0 else 0.5 + 0.016 * i
        row = {"step": step, "loss": round(3.2 * math.exp(-i / 8) + 0.05, 5), "grad_norm": 1.0,
               "learning_rate": 2e-3, "moe/max_violation": round(maxvio, 5)}
        row.update({f"moe/max_violation/layer_{layer}": round(maxvio * (0.8 + 0.1 * layer), 5) for layer in MOE_LAYERS})
        row.update(_loads(step, maxvio))
        rows.append(row)
    # TRL's end-of-training log line: no `loss`, no MoE figures.
    rows.append({"step": SFT_STEPS[-1], "train_runtime": 180.2, "train_loss": 0.61})
    return rows


def grpo_rows() -> list[dict[str, Any]]:
    rows = []
    for i, step in enumerate(GRPO_STEPS):
        math_r = 0.27 + 0.1 * i / len(GRPO_STEPS)
        fmt_r = 0.9 + 0.002 * i
        rows.append({
            "step": step, "loss": 0.001 * (i % 3), "reward": round(math_r + 0.2 * fmt_r, 5), "reward_std": 0.3,
            "rewards/math/mean": round(math_r, 5), "rewards/math/std": 0.4,
            "rewards/format/mean": round(fmt_r, 5), "rewards/format/std": 0.1,
            "kl": round(0.0005 * i, 6), "completions/mean_length": 31 - 0.1 * i, "entropy": 0.18 - 0.001 * i,
            "dynamic_sampling/groups_dropped": i % 4, "frac_reward_zero_std": 0.25,
            "moe/max_violation": 0.12, **_loads(step, 0.12),
        })
    return rows


# As the distill stage writes it (keep_per_prompt 1 of n = 4; histogram keys "passed/n", in arrival order).
STATS = {"prompts": 2000, "generated": 8000, "kept": 1900, "pairs": 1800, "passed_rewards": 5040,
         "pass_rate": 0.63, "prompt_yield": 0.95, "teacher_errors": 0,
         "rejected": {"math": 2500, "format": 300, "duplicate": 160, "keep_per_prompt": 3140},
         "pass_rate_histogram": {"3/4": 750, "4/4": 500, "1/4": 200, "0/4": 100, "2/4": 450}}
EVALS = {
    "eval_base": {"accuracy": 0.0, "pass@1": 0.0, "model": "runs/x/base_model"},
    "eval_sft": {"accuracy": 0.584, "pass@1": 0.259, "pass@k": 0.61, "k": 4, "model": "runs/x/sft/model"},
    "eval_grpo": {"accuracy": 0.578, "pass@1": 0.332, "pass@k": 0.66, "k": 4, "model": "runs/x/grpo/model"},
}


def make_run(root: Path) -> Path:
    """A run folder as `posttrain run recipes/tiny-r1.yaml` leaves it, with an SFT baseline at γ = 0."""
    run = root / "tiny-r1"
    stages = [
        {"name": "distill", "kind": "distill"},
        {"name": "eval_base", "kind": "eval", "model": "base"},
        {"name": "sft", "kind": "sft", "data": "distill", "moe_balance": {"bias_update_speed": 0.001,
                                                                          "seq_aux_loss_coef": 0.0001}},
        {"name": "eval_sft", "kind": "eval", "model": "sft"},
        {"name": "reward_model", "kind": "reward_model", "model": "sft"},
        {"name": "grpo", "kind": "grpo", "model": "sft", "moe_balance": {"bias_update_speed": 0.001},
         "rewards": [{"name": "math"}, {"name": "format"}]},
        {"name": "eval_grpo", "kind": "eval", "model": "grpo"},
    ]
    run.mkdir(parents=True)
    (run / "resolved_recipe.yaml").write_text(yaml.safe_dump({"output_dir": str(run), "stages": stages}))
    metrics = {
        "distill": {"kept": 1900, "acceptance_rate": 0.2375},
        "sft": {"train_loss": 0.61, "steps": 300, "rows": 5040, "model": str(run / "sft/model"),
                "balance_baseline": {"metrics_file": "sft_gamma0/metrics.jsonl", "label": "γ = 0 (no balancing)"}},
        "reward_model": {"pairwise_accuracy": 0.87, "train_loss": 0.35},
        "grpo": {"steps": 180, "model": str(run / "grpo/model")},
        **EVALS,
    }
    seconds = {"distill": 1.5, "eval_base": 20.0, "sft": 181.0, "eval_sft": 22.0, "reward_model": 40.0,
               "grpo": 250.0, "eval_grpo": 21.0}
    report = {"stages": {s["name"]: {"kind": s["kind"], "status": "done", "seconds": seconds[s["name"]],
                                     "metrics": metrics[s["name"]]} for s in stages}}
    (run / "report.json").write_text(json.dumps(report, indent=2))
    (run / "distill").mkdir()
    (run / "distill" / "stats.json").write_text(json.dumps(STATS))
    write_jsonl(run / "sft" / "metrics.jsonl", sft_rows(gamma=0.001))
    write_jsonl(run / "sft_gamma0" / "metrics.jsonl", sft_rows(gamma=0.0))
    write_jsonl(run / "reward_model" / "metrics.jsonl",
                 [{"step": s, "loss": 0.69 - 0.001 * s, "accuracy": 0.5 + 0.003 * s, "margin": 0.01 * s}
                  for s in range(10, 110, 10)])
    write_jsonl(run / "grpo" / "metrics.jsonl", grpo_rows())
    return run


def sections(md: str) -> dict[str, str]:
    """Markdown text under each `## ` heading."""
    out, current = {}, None
    for line in md.splitlines():
        if line.startswith("## "):
            current = line[3:]
            out[current] = ""
        elif current is not None:
            out[current] += line + "\n"
    return out


def png_info(path: Path) -> dict[str, Any]:
    """The PNG's size and the description the report embeds (what series/bars it drew)."""
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.format == "PNG"
        return {"size": img.size, "title": img.info.get("Title"), "data": json.loads(img.info["posttrain"])}


def last_third_mean(rows: list[dict[str, Any]], key: str) -> float:
    points = [(r["step"], r[key]) for r in rows if key in r]
    last = points[-1][0]
    tail = [v for s, v in points if s > last * 2 / 3]
    return sum(tail) / len(tail)



def stage_sections(md: str) -> dict[str, str]:
    """Markdown text of each stage's section, by stage name."""
    return {h.split(" ")[1]: text for h, text in sections(md).items() if h[0].isdigit()}
