from __future__ import annotations

import json
import random
import shutil
import subprocess
from pathlib import Path

import datasets
import pytest
import torch

from data_pipelines.tasks.arithmetic import sampled_solution, solution_text, train_prompts
from posttrain.core.models import load_causal_lm, load_tokenizer
from posttrain.recipe import parse_recipe
from posttrain.report import write_report
from posttrain.run.runner import run_recipe
from posttrain.stages import KINDS
from posttrain.stages.reward_model import split_by_prompt
from tests.posttrain.report.fake_run import stage_sections
from tests.posttrain.stages.interrupt import last_checkpoint, sigterm_once_written, start_run

RECIPE = """\
output_dir: {out}
seed: 0
model: {{name_or_path: {base}}}
stages:
  - name: dpo
    kind: dpo
    data: {data}
    eval_fraction: 0.2
{extra}    trl: {{max_steps: {steps}, per_device_train_batch_size: 16, per_device_eval_batch_size: 7,
           learning_rate: 1.0e-3, beta: 0.1, logging_steps: {log}, eval_steps: 10, save_steps: {save},
           lr_scheduler_type: constant}}
"""


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Distill-style pairs: 3 in 4 rejected for their layout (no <think>, no </think>, no box), 1 in 4 for a slip."""
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("dpo") / "pairs.jsonl"
    with open(path, "w") as f:
        for i, r in enumerate(train_prompts(200, seed=3)):
            good = solution_text(r["a"], r["b"])
            if i % 4:
                broken = (good.replace("<think>", ""), good.replace("</think>", ""),
                          good.replace("\\boxed{", "").replace("}.", "."))
                rejected = broken[rng.randrange(3)]
            else:
                rejected = good
                while rejected == good:
                    rejected = sampled_solution(r["a"], r["b"], rng, slip=0.5, malformed=0.0)
            f.write(json.dumps({"prompt": r["prompt"], "chosen": good, "rejected": rejected}) + "\n")
    return path


def recipe(out: Path, base: Path, data: Path | str, steps: int = 30, save: int = 100, log: int = 5,
           extra: str = "") -> str:
    return RECIPE.format(out=out, base=base, data=data, steps=steps, save=save, log=log, extra=extra)


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def implicit_rewards(policy: Path, reference: Path, pairs: list[dict], beta: float) -> list[float]:
    """β·(log π/π_ref of chosen − of rejected) per pair, computed here from the saved models (the stage's figures
    must agree with it, whatever batches TRL used)."""
    tok = load_tokenizer(str(policy))
    models = [load_causal_lm(str(p)).eval() for p in (policy, reference)]

    def logp(model: torch.nn.Module, prompt: str, completion: str) -> float:
        prompt_ids = tok(prompt)["input_ids"]
        ids = tok(prompt + completion + tok.eos_token)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, :-1].float().log_softmax(-1)
        return sum(logits[i - 1, ids[i]].item() for i in range(len(prompt_ids), len(ids)))

    out = []
    for p in pairs:
        ratios = [logp(m, p["prompt"], p["chosen"]) - logp(m, p["prompt"], p["rejected"]) for m in models]
        out.append(beta * (ratios[0] - ratios[1]))
    return out


def test_dpo_learns_the_preference_and_reports_exact_held_out_figures(
    tmp_path: Path, tiny_base: Path, pairs: Path
) -> None:
    report = run_recipe(parse_recipe(recipe(tmp_path, tiny_base, pairs), kinds=KINDS))
    entry = report["stages"]["dpo"]
    assert entry["status"] == "done", entry
    m = entry["metrics"]
    assert m["pairs"] + m["eval_pairs"] == 200 and 20 <= m["eval_pairs"] <= 70 and m["steps"] == 30
    # The layout errors are learnable in 30 steps, and the figure is on prompts never trained on.
    assert m["pairwise_accuracy"] > 0.7 and m["reward_margin"] > 0, m

    # Exact over every held-out pair (7 per eval batch: TRL's mean of batch means would differ), and what the
    # implicit rewards of the saved policy against the starting model say.
    _, held = split_by_prompt(datasets.Dataset.from_list(rows(pairs)), 0.2, 0)
    margins = implicit_rewards(tmp_path / "dpo" / "model", tiny_base, held.to_list(), 0.1)
    assert sum(d > 0 for d in margins) / len(margins) == pytest.approx(m["pairwise_accuracy"], abs=1.01 / len(held))
    assert sum(margins) / len(margins) == pytest.approx(m["reward_margin"], rel=0.02, abs=1e-3)

    logged = rows(tmp_path / "dpo" / "metrics.jsonl")
    train_rows = [r for r in logged if "loss" in r]
    assert [r["step"] for r in train_rows] == [5, 10, 15, 20, 25, 30]
    assert {"rewards/accuracies", "rewards/margins", "moe/max_violation", "moe/load/layer_1"} <= set(train_rows[0])
    eval_rows = [r for r in logged if "eval_rewards/accuracies" in r]
    assert [r["step"] for r in eval_rows] == [10, 20, 30]
    assert "rewards/accuracies" not in eval_rows[0]  # training batches' figures stay in training rows
    assert eval_rows[-1]["eval_rewards/accuracies"] == pytest.approx(m["pairwise_accuracy"], abs=1e-4)
    assert m["max_violation_last_third"] >= 0

    shutil.rmtree(tmp_path / "plots")
    mid_run = write_report(tmp_path, kinds=KINDS, plots=False).read_text()  # as the runner writes it between stages
    assert "Could not build" not in mid_run and not (tmp_path / "plots").exists()
    sec = stage_sections(write_report(tmp_path, kinds=KINDS).read_text())["dpo"]
    assert "with DPO (TRL's DPOTrainer, β = 0.1)" in sec and "frozen reference (the starting model)" in sec
    assert f"**preference accuracy (held out): {100 * m['pairwise_accuracy']:.1f} %**" in sec
    assert "plots/dpo_preferences.png" in sec and "plots/dpo_maxvio.png" in sec

    again = run_recipe(parse_recipe(recipe(tmp_path, tiny_base, pairs), kinds=KINDS))
    assert again["stages"]["dpo"]["status"] == "skipped"


def test_the_reference_is_the_starting_model_unless_named(tmp_path: Path, tiny_base: Path, pairs: Path) -> None:
    other = tmp_path / "other_base"
    model = load_causal_lm(str(tiny_base))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(other)
    load_tokenizer(str(tiny_base)).save_pretrained(other)

    first = {}
    for name, extra in (("own", ""), ("named", f"    reference: {other}\n")):
        report = run_recipe(parse_recipe(recipe(tmp_path / name, tiny_base, pairs, steps=1, log=1, extra=extra),
                                         kinds=KINDS))
        assert report["stages"]["dpo"]["status"] == "done", report
        first[name] = next(r for r in rows(tmp_path / name / "dpo" / "metrics.jsonl") if "loss" in r)
    # Before its first update the policy is the starting model: log-ratios against it are exactly zero.
    assert first["own"]["rewards/chosen"] == 0 and first["own"]["rewards/margins"] == 0
    assert first["named"]["rewards/chosen"] != 0 and first["named"]["loss"] != pytest.approx(0.6931, abs=1e-4)


def test_dpo_with_lora_saves_the_adapter_and_the_merged_model(tmp_path: Path, tiny_base: Path, pairs: Path) -> None:
    extra = "    lora: {r: 4, alpha: 8}\n"
    report = run_recipe(parse_recipe(recipe(tmp_path, tiny_base, pairs, steps=2, extra=extra), kinds=KINDS))
    entry = report["stages"]["dpo"]
    assert entry["status"] == "done", entry
    assert (tmp_path / "dpo" / "adapter" / "adapter_config.json").exists()
    merged = load_causal_lm(str(tmp_path / "dpo" / "model")).state_dict()
    start = load_causal_lm(str(tiny_base)).state_dict()
    assert any(not torch.equal(v, start[k]) for k, v in merged.items())


def test_pairs_without_the_needed_columns_fail_clearly(tmp_path: Path, tiny_base: Path) -> None:
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps({"prompt": "q", "good": "a", "bad": "b"}) + "\n")
    report = run_recipe(parse_recipe(recipe(tmp_path / "out", tiny_base, data), kinds=KINDS))
    entry = report["stages"]["dpo"]
    assert entry["status"] == "failed"
    assert "no column(s) ['chosen', 'rejected']" in entry["metrics"]["error"]


@pytest.mark.slow
def test_sigterm_then_rerun_resumes_from_the_dpo_checkpoint(
    tmp_path: Path, tiny_base: Path, pairs: Path, python: str
) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(recipe(tmp_path / "out", tiny_base, pairs, steps=60, save=1000, log=2))
    metrics = tmp_path / "out" / "dpo" / "metrics.jsonl"
    sigterm_once_written(start_run(python, path), metrics, 3)
    checkpoint, stopped_at = last_checkpoint(tmp_path / "out" / "dpo")
    assert 4 <= stopped_at < 60

    rerun = subprocess.run([python, "-m", "posttrain.cli", "run", str(path)], capture_output=True, text=True,
                           timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resuming from {checkpoint}" in rerun.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["stages"]["dpo"]["metrics"]["steps"] == 60
    steps = [r["step"] for r in rows(metrics) if "loss" in r]
    assert steps[-1] == 60 and any(s > stopped_at for s in steps)
