"""The run report: built from run folders written here the way the stages write them."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from PIL import Image

from posttrain.core.errors import PosttrainError
from posttrain.report import write_report
from tests.mini_recipes import distill_only

SFT_STEPS = list(range(10, 310, 10))
GRPO_STEPS = list(range(5, 185, 5))
MOE_LAYERS = (1, 2, 3)  # layer 0 is dense, as in the tiny DeepSeek-V3
EXPERTS = 8


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
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


def _sft_rows(gamma: float) -> list[dict[str, Any]]:
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


def _grpo_rows() -> list[dict[str, Any]]:
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
    _write_jsonl(run / "sft" / "metrics.jsonl", _sft_rows(gamma=0.001))
    _write_jsonl(run / "sft_gamma0" / "metrics.jsonl", _sft_rows(gamma=0.0))
    _write_jsonl(run / "reward_model" / "metrics.jsonl",
                 [{"step": s, "loss": 0.69 - 0.001 * s, "accuracy": 0.5 + 0.003 * s, "margin": 0.01 * s}
                  for s in range(10, 110, 10)])
    _write_jsonl(run / "grpo" / "metrics.jsonl", _grpo_rows())
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


def test_full_run_report(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    md = write_report(run).read_text()

    # It opens with the accuracy-by-stage plot.
    body = [line for line in md.splitlines() if line.strip()]
    assert body[0].startswith("# ")
    assert body[1] == "![Accuracy by stage](plots/accuracy_by_stage.png)"

    # One section per stage, in recipe order.
    heads = [h for h in sections(md) if h[0].isdigit()]
    assert heads == ["1. distill (`distill`)", "2. eval_base (`eval`)", "3. sft (`sft`)", "4. eval_sft (`eval`)",
                     "5. reward_model (`reward_model`)", "6. grpo (`grpo`)", "7. eval_grpo (`eval`)"]
    sec = {h.split(" ")[1]: text for h, text in sections(md).items() if h[0].isdigit()}

    # Accuracy table: percentages and differences against the first eval stage, from the inputs.
    assert "| eval_sft | `x/sft/model` | 58.4 % (+58.4 pts) | 25.9 % (+25.9 pts) | 61.0 % |" in md
    assert "| eval_grpo | `x/grpo/model` | 57.8 % (+57.8 pts) | 33.2 % (+33.2 pts) | 66.0 % |" in md
    assert "over k = 4 samples" in md
    assert "**greedy accuracy: 58.4 %**" in sec["eval_sft"]

    # Distill: acceptance rate and every rejection reason with its count and share.
    assert "Sampled 8000 completions for 2000 prompts" in sec["distill"]
    assert "**acceptance rate: 23.8 %**" in sec["distill"]
    assert "samples that passed the rewards: 63.0 %" in sec["distill"]
    assert "prompts with at least one kept answer: 95.0 %" in sec["distill"]
    total = sum(STATS["rejected"].values())
    for reason, count in STATS["rejected"].items():
        assert f"| {reason} | {count} | {100 * count / total:.1f} % |" in sec["distill"]

    # SFT: loss first → last, MaxVio with and without balancing, computed here from the logs.
    sft_rows = _sft_rows(0.001)
    base_rows = _sft_rows(0.0)
    assert f"{sft_rows[0]['loss']:.4g} (step 10) → {sft_rows[-2]['loss']:.4g} (step 300)" in sec["sft"]
    assert f"mean over the last third of steps {last_third_mean(sft_rows, 'moe/max_violation'):.4g}" in sec["sft"]
    assert (f"MaxVio of the comparison run, γ = 0 (no balancing): {base_rows[0]['moe/max_violation']:.4g} (step 10)"
            in sec["sft"])
    assert f"mean over the last third {last_third_mean(base_rows, 'moe/max_violation'):.4g}" in sec["sft"]
    assert "bias update speed γ = 0.001, α = 0.0001" in sec["sft"]

    # Reward model and GRPO figures.
    assert "**pairwise accuracy (held out): 87.0 %**" in sec["reward_model"]
    assert "pairwise accuracy on training batches: 0.53 (step 10) → 0.8 (step 100)" in sec["reward_model"]
    grpo_rows = _grpo_rows()
    assert f"reward `math`: {grpo_rows[0]['rewards/math/mean']:.4g} (step 5)" in sec["grpo"]
    assert f"→ {grpo_rows[-1]['rewards/format/mean']:.4g} (step 180)" in sec["grpo"]
    dropped = sum(r["dynamic_sampling/groups_dropped"] for r in grpo_rows)
    assert f"groups dropped by dynamic sampling: {dropped} in total over {len(grpo_rows)}" in sec["grpo"]
    assert "KL to the reference: 0 (step 5)" in sec["grpo"]
    assert "mean completion length (tokens): 31 (step 5)" in sec["grpo"]

    # Every referenced PNG exists, is a valid image, and shows what the data holds.
    plots = {p.name for p in (run / "plots").glob("*.png")}
    referenced = {line.split("(plots/")[1].rstrip(")") for line in md.splitlines() if "](plots/" in line}
    assert referenced == plots
    assert {"accuracy_by_stage.png", "distill_distill.png", "sft_loss.png", "sft_maxvio.png", "sft_expert_load.png",
            "reward_model_loss.png", "reward_model_accuracy.png",
            "grpo_rewards.png", "grpo_dynamics.png", "grpo_loss.png", "grpo_maxvio.png",
            "grpo_expert_load.png", "maxvio_comparison.png"} == plots
    for name in plots:
        info = png_info(run / "plots" / name)
        assert info["size"][0] >= 500 and info["size"][1] >= 300, name

    acc = png_info(run / "plots" / "accuracy_by_stage.png")["data"]
    assert acc["stages"] == ["eval_base", "eval_sft", "eval_grpo"]
    assert acc["bars"] == {"greedy accuracy": 3, "sampled pass@1": 3, "pass@k": 2}
    maxvio = png_info(run / "plots" / "sft_maxvio.png")["data"]["series"]
    assert maxvio["sft (γ = 0.001)"] == len(SFT_STEPS) and maxvio["γ = 0 (no balancing)"] == len(SFT_STEPS)
    assert {f"layer_{layer}" for layer in MOE_LAYERS} <= set(maxvio)
    heat = png_info(run / "plots" / "sft_expert_load.png")["data"]
    assert heat["shape"] == [[len(MOE_LAYERS), EXPERTS], [len(MOE_LAYERS), EXPERTS]]
    assert heat["panels"] == ["sft (γ = 0.001)", "γ = 0 (no balancing)"]
    rewards = png_info(run / "plots" / "grpo_rewards.png")["data"]["series"]
    assert rewards == {"format": len(GRPO_STEPS), "math": len(GRPO_STEPS), "reward (weighted sum)": len(GRPO_STEPS)}
    distill = png_info(run / "plots" / "distill_distill.png")["data"]
    assert distill["bars"]["kept"] == 1900 and distill["bars"]["rejected: format"] == 300
    assert list(distill["histogram"]) == ["0/4", "1/4", "2/4", "3/4", "4/4"]  # in pass-rate order
    assert distill["histogram"] == STATS["pass_rate_histogram"]
    comparison = png_info(run / "plots" / "maxvio_comparison.png")
    assert set(comparison["data"]["series"]) == {"sft (γ = 0.001)", "grpo (γ = 0.001)"}
    assert comparison["title"] == "MaxVio across stages" and "MoE load balancing across stages" in sections(md)
    assert png_info(run / "plots" / "reward_model_accuracy.png")["data"]["series"] == {"accuracy": 10, "margin": 10}
    # Breakdowns in report.json metrics are listed too, one level deep.
    assert "| balance_baseline.label | γ = 0 (no balancing) |" in sec["sft"]


def test_two_sft_stages_are_compared(tmp_path: Path) -> None:
    run = tmp_path / "ablation"
    stages = [{"name": "sft_gamma0", "kind": "sft", "moe_balance": {"bias_update_speed": 0.0}},
              {"name": "sft", "kind": "sft", "moe_balance": {"bias_update_speed": 0.001}}]
    run.mkdir()
    (run / "resolved_recipe.yaml").write_text(yaml.safe_dump({"stages": stages}))
    (run / "report.json").write_text(json.dumps({"stages": {
        s["name"]: {"kind": "sft", "status": "done", "seconds": 1.0, "metrics": {}} for s in stages}}))
    _write_jsonl(run / "sft_gamma0" / "metrics.jsonl", _sft_rows(0.0))
    _write_jsonl(run / "sft" / "metrics.jsonl", _sft_rows(0.001))
    md = write_report(run).read_text()
    assert "with the router-bias update off (γ = 0)" in md
    assert "No accuracy-by-stage plot: no eval stage in this recipe" in md
    info = png_info(run / "plots" / "maxvio_comparison.png")
    assert info["title"] == "MaxVio with and without balancing"
    assert info["data"]["series"] == {"sft_gamma0 (γ = 0)": len(SFT_STEPS), "sft (γ = 0.001)": len(SFT_STEPS)}
    comparison = sections(md)["MoE load balancing with and without the bias update"]
    assert f"sft_gamma0 (γ = 0): mean MaxVio over the last third of steps " \
           f"{last_third_mean(_sft_rows(0.0), 'moe/max_violation'):.4g}" in comparison


def test_missing_and_broken_inputs_do_not_crash(tmp_path: Path) -> None:
    run = tmp_path / "partial"
    run.mkdir()
    report = {"stages": {
        "distill": {"kind": "distill", "status": "done", "seconds": 2.0, "metrics": {}},
        "sft": {"kind": "sft", "status": "done", "seconds": 9.0, "metrics": {"baseline_metrics_file": "nowhere.jsonl"}},
        "grpo": {"kind": "grpo", "status": "failed", "seconds": 3.0, "metrics": {"error": "StageError: no model"}},
        "eval_x": {"kind": "eval", "status": "skipped", "seconds": 0.0, "metrics": {}},
        "custom": {"kind": "my_plugin", "status": "done", "seconds": 1.0, "metrics": {"widgets": 7}},
    }}
    (run / "report.json").write_text(json.dumps(report))
    (run / "distill").mkdir()
    (run / "distill" / "stats.json").write_text("{not json")
    # A run killed mid-write: a truncated last line, a non-numeric value, a NaN, loads of uneven length.
    (run / "sft").mkdir()
    (run / "sft" / "metrics.jsonl").write_text(
        json.dumps({"step": 10, "loss": 2.0, "moe/max_violation": 0.5, "moe/load/layer_1": [0.5, 0.5],
                    "moe/load/layer_2": [0.2, 0.3, 0.5]}) + "\n"
        + json.dumps({"step": 20, "loss": "oops", "moe/max_violation": float("nan")}) + "\n"
        + json.dumps({"step": 30, "loss": 1.5}) + "\n"
        + '{"step": 40, "lo'
    )
    md = write_report(run).read_text()
    sec = {h.split(" ")[1]: text for h, text in sections(md).items() if h[0].isdigit()}
    assert "No accuracy-by-stage plot: no eval stage has reported accuracy yet" in md
    assert "No acceptance figures: stats.json is unreadable" in sec["distill"]
    assert "1 line(s) of metrics.jsonl were not JSON and were skipped" in sec["sft"]
    assert "2 (step 10) → 1.5 (step 30)" in sec["sft"]
    assert "baseline γ = 0 (no balancing): no nowhere.jsonl" in sec["sft"]
    assert "**failed** after 3.0 s: `StageError: no model`" in sec["grpo"]
    assert "- no accuracy reported" in sec["eval_x"]
    assert "| widgets | 7 |" in sec["custom"] and "No curves" not in sec["custom"]  # a plugin need not log
    assert "Could not build" not in md
    heat = png_info(run / "plots" / "sft_expert_load.png")["data"]
    assert heat["shape"] == [[2, 3]]


def test_rebuild_drops_plots_whose_data_is_gone(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    write_report(run)
    assert (run / "plots" / "grpo_rewards.png").exists()
    (run / "grpo" / "metrics.jsonl").unlink()
    md = write_report(run).read_text()
    assert not (run / "plots" / "grpo_rewards.png").exists()
    assert "No curves: no metrics.jsonl" in sections(md)["6. grpo (`grpo`)"]


def test_stages_not_yet_run_still_get_a_section(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    stages = [{"name": "distill", "kind": "distill"}, {"name": "sft", "kind": "sft"}]
    (run / "resolved_recipe.yaml").write_text(yaml.safe_dump({"stages": stages}))
    (run / "report.json").write_text(json.dumps({"stages": {
        "distill": {"kind": "distill", "status": "failed", "seconds": 0.5, "metrics": {"error": "boom"}}}}))
    md = write_report(run).read_text()
    assert "## 2. sft (`sft`)" in md
    assert "Status: not run" in sections(md)["2. sft (`sft`)"]


def test_no_report_json_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(PosttrainError, match="run `posttrain run` first"):
        write_report(tmp_path)


def test_cli_rebuilds_the_report(tmp_path: Path, python: str) -> None:
    run = make_run(tmp_path)
    proc = subprocess.run([python, "-m", "posttrain.cli", "report", str(run)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert str(run / "report.md") in proc.stdout
    assert (run / "plots" / "accuracy_by_stage.png").exists()

    proc = subprocess.run([python, "-m", "posttrain.cli", "report", str(tmp_path / "empty")], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2
    assert "no readable report.json" in proc.stderr and "Traceback" not in proc.stderr


def test_report_of_a_real_run(tmp_path: Path, python: str) -> None:
    """`posttrain run` writes the report from what the real distill stage logged."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(distill_only(tmp_path / "run", prompts=40, samples=4))
    proc = subprocess.run([python, "-m", "posttrain.cli", "run", str(recipe)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "run"
    stats = json.loads((run / "distill" / "stats.json").read_text())
    sec = sections((run / "report.md").read_text())["1. distill (`distill`)"]
    assert f"**acceptance rate: {100 * stats['kept'] / stats['generated']:.1f} %**" in sec
    for reason, count in stats["rejected"].items():
        assert f"| {reason} | {count} |" in sec
    drawn = png_info(run / "plots" / "distill_distill.png")["data"]
    in_order = [(f"{k}/4", stats["pass_rate_histogram"][f"{k}/4"]) for k in range(5)
                if f"{k}/4" in stats["pass_rate_histogram"]]
    assert list(drawn["histogram"].items()) == in_order
