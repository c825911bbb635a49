from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

import datasets
import pytest

from data_pipelines.tasks.arithmetic import sampled_solution, solution_text, train_prompts
from posttrain.recipe import parse_recipe
from posttrain.run.runner import run_recipe
from posttrain.stages import KINDS
from posttrain.stages.reward_model import pairwise_metrics, split_by_prompt
from tests.posttrain.conftest import BuiltReport
from tests.posttrain.report.fake_run import png_info, stage_sections
from tests.posttrain.stages.interrupt import last_checkpoint, sigterm_once_written, start_run

RECIPE = """\
output_dir: {out}
seed: 0
model: {{name_or_path: {base}}}
stages:
  - name: rm
    kind: reward_model
    data: {data}
    eval_fraction: 0.2
{extra}    trl: {{max_steps: {steps}, per_device_train_batch_size: 16, learning_rate: 1.0e-3, logging_steps: 5,
           eval_steps: 10, save_steps: {save}, lr_scheduler_type: constant}}
"""


def broken_format(a: int, b: int, rng: random.Random) -> str:
    """A right answer in a broken layout: no <think>, no </think>, or no box (what the format reward rejects)."""
    good = solution_text(a, b)
    kind = rng.randrange(3)
    if kind == 0:
        return good.replace("<think>", "")
    if kind == 1:
        return good.replace("</think>", "")
    return good.replace("\\boxed{", "").replace("}.", ".")


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Distill-style pairs: 3 in 4 rejected for their format, 1 in 4 for a slipped digit (reward_math)."""
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("rm") / "pairs.jsonl"
    with open(path, "w") as f:
        for i, r in enumerate(train_prompts(240, seed=3)):
            if i % 4:
                rejected, reason = broken_format(r["a"], r["b"], rng), "reward_format"
            else:
                rejected = solution_text(r["a"], r["b"])
                while rejected == solution_text(r["a"], r["b"]):
                    rejected = sampled_solution(r["a"], r["b"], rng, slip=0.5, malformed=0.0)
                reason = "reward_math"
            f.write(json.dumps({"prompt": r["prompt"], "chosen": solution_text(r["a"], r["b"]),
                                "rejected": rejected, "rejected_reason": reason}) + "\n")
    return path


def recipe(out: Path, base: Path, data: Path, steps: int = 30, save: int = 100, extra: str = "") -> str:
    return RECIPE.format(out=out, base=base, data=data, steps=steps, save=save, extra=extra)


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_reward_model_learns_the_preference_and_reports_held_out_accuracy(
    tmp_path: Path, tiny_base: Path, pairs: Path
) -> None:
    from transformers import AutoConfig

    from rewards.registry import get_reward
    from rewards.reward_model import STATS_FILE

    report = run_recipe(parse_recipe(recipe(tmp_path, tiny_base, pairs), kinds=KINDS))
    entry = report["stages"]["rm"]
    assert entry["status"] == "done", entry
    m = entry["metrics"]
    assert m["pairs"] + m["eval_pairs"] == 240 and 20 <= m["eval_pairs"] <= 80
    assert m["steps"] == 30
    # Layout is learnable in 30 steps; the held-out figure is measured on prompts never trained on.
    assert m["pairwise_accuracy"] > 0.7, m
    assert m["pairwise_accuracy_by_reason"]["reward_format"] > 0.8, m
    assert set(m["pairwise_accuracy_by_reason"]) == {"reward_format", "reward_math"}
    assert m["reward_margin"] > 0 and m["eval_loss"] < 0.69

    # What the report plots: TRL's training curves and held-out rows on the same steps.
    logged = rows(tmp_path / "rm" / "metrics.jsonl")
    train_rows = [r for r in logged if "loss" in r]
    assert [r["step"] for r in train_rows] == [5, 10, 15, 20, 25, 30]
    assert {"accuracy", "margin"} <= set(train_rows[0])
    eval_rows = [r for r in logged if "eval_accuracy" in r]
    assert [r["step"] for r in eval_rows] == [10, 20, 30] and "eval_margin" in eval_rows[0]
    assert eval_rows[-1]["eval_accuracy"] == m["pairwise_accuracy"]  # exact, not TRL's mean of batch means

    # The saved model is a one-output classifier that the `reward_model` reward loads by path and that
    # scores the held-out pairs exactly as the stage measured them.
    model_dir = tmp_path / "rm" / "model"
    assert AutoConfig.from_pretrained(model_dir).num_labels == 1
    stats = json.loads((model_dir / STATS_FILE).read_text())
    assert stats["std"] > 0 and stats["measured_on"] == "held_out"
    all_pairs = rows(pairs)
    _, held = split_by_prompt(datasets.Dataset.from_list(all_pairs), 0.2, 0)
    reward = get_reward("reward_model", model=str(model_dir), batch_size=7)
    chosen = reward(list(held["chosen"]), prompts=list(held["prompt"]))
    rejected = reward(list(held["rejected"]), prompts=list(held["prompt"]))
    assert pairwise_metrics(chosen, rejected)["pairwise_accuracy"] == m["pairwise_accuracy"]

    # An unchanged rerun skips the stage.
    again = run_recipe(parse_recipe(recipe(tmp_path, tiny_base, pairs), kinds=KINDS))
    assert again["stages"]["rm"]["status"] == "skipped"
    assert again["stages"]["rm"]["metrics"]["pairwise_accuracy"] == m["pairwise_accuracy"]


def test_judge_data_is_written_from_the_training_pairs_only(tmp_path: Path, tiny_base: Path, pairs: Path) -> None:
    extra = "    judge_data: {max_examples: 50}\n"
    report = run_recipe(parse_recipe(recipe(tmp_path, tiny_base, pairs, steps=2, extra=extra), kinds=KINDS))
    entry = report["stages"]["rm"]
    assert entry["status"] == "done", entry
    examples = rows(tmp_path / "rm" / "judge_data.jsonl")
    assert len(examples) == entry["metrics"]["judge_examples"] == 50
    _, held = split_by_prompt(datasets.Dataset.from_list(rows(pairs)), 0.2, 0)
    held_prompts = set(held["prompt"])
    assert not any(e["prompt"].split("\n")[0] in held_prompts for e in examples)
    good = [e for e in examples if e["source"] == "chosen"]
    assert good and all(e["completion"].endswith("Verdict: Score: 10/10") for e in good)
    # The verdict is the verifiers' weighted mean (math 0.8, format 0.2) and the reasoning says why.
    verdicts = {(" correct." in e["completion"].split("Format")[0], "Format correct" in e["completion"]):
                e["completion"][-5:]
                for e in examples}
    assert verdicts == {(True, True): "10/10", (False, True): " 2/10", (True, False): " 8/10", (False, False): " 0/10"}


def test_without_held_out_pairs_the_stats_come_from_training_pairs(tmp_path: Path, tiny_base: Path,
                                                                   pairs: Path) -> None:
    text = recipe(tmp_path, tiny_base, pairs, steps=2).replace("eval_fraction: 0.2", "eval_fraction: 0.0")
    report = run_recipe(parse_recipe(text, kinds=KINDS))
    entry = report["stages"]["rm"]
    assert entry["status"] == "done", entry
    assert entry["metrics"]["eval_pairs"] == 0 and "pairwise_accuracy" not in entry["metrics"]
    stats = json.loads((tmp_path / "rm" / "model" / "reward_stats.json").read_text())
    assert stats["measured_on"] == "train" and stats["pairs"] == 240


def test_pairs_without_the_needed_columns_fail_clearly(tmp_path: Path, tiny_base: Path) -> None:
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps({"prompt": "q", "good": "a", "bad": "b"}) + "\n")
    report = run_recipe(parse_recipe(recipe(tmp_path / "out", tiny_base, data), kinds=KINDS))
    entry = report["stages"]["rm"]
    assert entry["status"] == "failed"
    assert "no column(s) ['chosen', 'rejected']" in entry["metrics"]["error"]


def test_split_keeps_each_prompts_pairs_together_and_is_stable() -> None:
    data = datasets.Dataset.from_list([{"prompt": f"p{i // 3}", "chosen": "c", "rejected": "r"} for i in range(300)])
    train, held = split_by_prompt(data, 0.2, seed=0)
    assert len(train) + len(held) == 300 and set(train["prompt"]).isdisjoint(held["prompt"])
    assert 0.1 < len(held) / 300 < 0.3
    assert split_by_prompt(data, 0.2, seed=0)[1]["prompt"] == held["prompt"]
    assert split_by_prompt(data, 0.2, seed=1)[1]["prompt"] != held["prompt"]
    few = datasets.Dataset.from_list([{"prompt": "a", "chosen": "c", "rejected": "r"},
                                      {"prompt": "b", "chosen": "c", "rejected": "r"}])
    tr, ho = split_by_prompt(few, 0.01, seed=0)
    assert len(tr) == 1 and len(ho) == 1  # something is always measured


def test_pairwise_metrics() -> None:
    out = pairwise_metrics([1.0, 2.0, 0.0, 0.5], [0.0, 1.0, 1.0, 0.5], ["math", "math", "format", "format"])
    assert out["pairwise_accuracy"] == 0.5  # a tie is not a win
    assert out["reward_margin"] == pytest.approx(0.25)
    assert out["pairwise_accuracy_by_reason"] == {"format": 0.0, "math": 1.0}


@pytest.mark.slow
def test_sigterm_then_rerun_resumes_from_the_reward_model_checkpoint(
    tmp_path: Path, tiny_base: Path, pairs: Path, python: str
) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(recipe(tmp_path / "out", tiny_base, pairs, steps=60, save=1000))
    metrics = tmp_path / "out" / "rm" / "metrics.jsonl"
    sigterm_once_written(start_run(python, path), metrics, 3)
    checkpoint, stopped_at = last_checkpoint(tmp_path / "out" / "rm")
    assert 10 <= stopped_at < 60

    rerun = subprocess.run([python, "-m", "posttrain.cli", "run", str(path)], capture_output=True, text=True,
                           timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resuming from {checkpoint}" in rerun.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["stages"]["rm"]["metrics"]["steps"] == 60
    steps = [r["step"] for r in rows(metrics) if "loss" in r]
    assert steps[-1] == 60 and any(s > stopped_at for s in steps)


def test_report_section(full_report: BuiltReport) -> None:
    sec = stage_sections(full_report.md)
    assert "**pairwise accuracy (held out): 87.0 %**" in sec["reward_model"]
    assert "pairwise accuracy on training batches: 0.53 (step 10) → 0.8 (step 100)" in sec["reward_model"]
    assert png_info(full_report.run / "plots" / "reward_model_accuracy.png")["data"]["series"] == {"accuracy": 10,
                                                                                                   "margin": 10}
