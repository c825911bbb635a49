from __future__ import annotations

import json
import math
import pickle
import random
from pathlib import Path
from typing import Any

import pytest

from data_pipelines.tasks.arithmetic import solution_text, train_prompts
from posttrain.core.errors import PluginError
from posttrain.recipe import parse_recipe
from posttrain.run.runner import run_recipe
from posttrain.stages import KINDS
from rewards.registry import get_reward
from rewards.reward_model import STATS_FILE, RewardModelReward

RM_STAGE = """\
  - name: rm
    kind: reward_model
    data: {pairs}
    trl: {{max_steps: 30, per_device_train_batch_size: 16, learning_rate: 1.0e-3, lr_scheduler_type: constant,
           logging_steps: 10, eval_steps: 30, save_steps: 100}}
"""
GOOD = solution_text(52, 37)
BROKEN = GOOD.replace("</think>", "")


def scripted_judge(prompts: list[str], n: int, sampling: Any = None) -> list[list[str]]:
    """A judge for the `scripted` generation backend: 9/10 for a boxed answer, 1/10 otherwise."""
    return [["Checked.\nVerdict: Score: 9/10" if "\\boxed{" in p.split("Reference:")[0] else "Verdict: Score: 1/10"]
            * n for p in prompts]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, tiny_base: Path) -> tuple[Path, str]:
    """A recipe whose reward_model stage has trained on chosen (R1 layout) vs rejected (broken layout) pairs."""
    root = tmp_path_factory.mktemp("rmreward")
    rng = random.Random(0)
    rows = []
    for r in train_prompts(200, seed=5):
        good = solution_text(r["a"], r["b"])
        bad = good.replace(rng.choice(["<think>", "</think>", "\\boxed{"]), "")
        rows.append({"prompt": r["prompt"], "chosen": good, "rejected": bad, "solution": r["solution"]})
    pairs = root / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    head = f"output_dir: {root / 'out'}\nseed: 0\nmodel: {{name_or_path: {tiny_base}}}\nstages:\n"
    head += RM_STAGE.format(pairs=pairs)
    report = run_recipe(parse_recipe(head, kinds=KINDS))
    assert report["stages"]["rm"]["status"] == "done", report
    assert report["stages"]["rm"]["metrics"]["pairwise_accuracy"] > 0.8
    return root / "out" / "rm" / "model", head


def test_scores_a_trained_checkpoint_by_path_and_prefers_what_it_learned(run: tuple[Path, str]) -> None:
    model, _ = run
    reward = get_reward("reward_model", model=str(model))
    scores, errors = reward.score_with_errors([GOOD, BROKEN], prompts=["Compute 52+37."] * 2)
    assert scores[0] > scores[1]
    assert errors == [None, None]


def test_batching_and_order_do_not_change_the_scores(run: tuple[Path, str]) -> None:
    model, _ = run
    completions = [GOOD, BROKEN, "<think>1</think> 1", GOOD + " Let me add more words to make this one longer.",
                   "x", BROKEN + " and more"]
    prompts = ["Compute 52+37."] * len(completions)
    one = RewardModelReward(str(model), batch_size=1)(completions, prompts=prompts)
    many = RewardModelReward(str(model), batch_size=4)(completions, prompts=prompts)
    reverse = RewardModelReward(str(model), batch_size=64)(completions[::-1], prompts=prompts)[::-1]
    assert many == pytest.approx(one, abs=1e-4)
    assert reverse == pytest.approx(one, abs=1e-4)
    assert len(set(round(s, 4) for s in one)) > 3  # really scored, not a constant


def test_normalisation(run: tuple[Path, str]) -> None:
    model, _ = run
    completions, prompts = [GOOD, BROKEN], ["Compute 52+37."] * 2
    raw = RewardModelReward(str(model))(completions, prompts=prompts)
    sig = RewardModelReward(str(model), normalize="sigmoid")(completions, prompts=prompts)
    assert sig == pytest.approx([1 / (1 + math.exp(-r)) for r in raw]) and all(0 < s < 1 for s in sig)
    stats = json.loads((model / STATS_FILE).read_text())
    z = RewardModelReward(str(model), normalize="zscore")(completions, prompts=prompts)
    assert z == pytest.approx([(r - stats["mean"]) / stats["std"] for r in raw])
    given = RewardModelReward(str(model), normalize="zscore", mean=1.0, std=2.0)(completions, prompts=prompts)
    assert given == pytest.approx([(r - 1.0) / 2.0 for r in raw])


def test_bad_checkpoints_and_options_are_clear_errors(run: tuple[Path, str], tiny_base: Path, tmp_path: Path) -> None:
    model, _ = run
    with pytest.raises(PluginError, match="normalize must be"):
        RewardModelReward(str(model), normalize="softmax")  # type: ignore[arg-type]
    with pytest.raises(PluginError, match="give `model`"):
        RewardModelReward("")
    with pytest.raises(PluginError, match=r"no config\.json"):
        RewardModelReward(str(tmp_path))(["x"])
    with pytest.raises(PluginError, match="num_labels=2"):
        RewardModelReward(str(tiny_base))(["x"])  # a causal LM, not a reward model
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in model.iterdir():
        if f.name != STATS_FILE:
            (bare / f.name).write_bytes(f.read_bytes())
    with pytest.raises(PluginError, match="needs `mean` and `std`"):
        RewardModelReward(str(bare), normalize="zscore")(["x"])
    with pytest.raises(PluginError, match="std must be positive"):
        RewardModelReward(str(model), normalize="zscore", mean=0.0, std=0.0)(["x"])
    # Through the registry a failure is per row, with the error kept.
    wrapped = get_reward("reward_model", model=str(tmp_path))
    scores, errors = wrapped.score_with_errors(["x"])
    assert scores == [None] and "no config.json" in errors[0]


def test_the_reward_pickles_without_its_model(run: tuple[Path, str]) -> None:
    model, _ = run
    reward = RewardModelReward(str(model))
    first = reward([GOOD])
    clone = pickle.loads(pickle.dumps(reward))
    assert clone._model is None
    assert clone([GOOD]) == pytest.approx(first)


def test_grpo_uses_the_reward_model_and_genrm_with_weights_next_to_math(run: tuple[Path, str],
                                                                        tmp_path: Path) -> None:
    _, head = run
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": r["prompt"], "solution": r["solution"]}) + "\n"
                               for r in train_prompts(16, seed=9)))
    grpo = f"""\
  - name: grpo
    kind: grpo
    model: base
    data: {prompts}
    rewards:
      - {{name: math, kwargs: {{workers: 0}}}}
      - {{name: reward_model, weight: 0.5, kwargs: {{model: rm, normalize: sigmoid}}}}
      - name: genrm
        weight: 0.25
        kwargs: {{backend: scripted, model: "tests.rewards.test_reward_model:scripted_judge", template: compact}}
    trl: {{max_steps: 2, per_device_train_batch_size: 8, num_generations: 4, max_completion_length: 12,
           learning_rate: 1.0e-3, logging_steps: 1, save_steps: 100}}
"""
    report = run_recipe(parse_recipe(head + grpo, kinds=KINDS))
    assert report["stages"]["rm"]["status"] == "skipped"  # the trained reward model is reused
    assert report["stages"]["grpo"]["status"] == "done", report["stages"]["grpo"]
    out = Path(report["stages"]["grpo"]["metrics"]["model"]).parent
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in rows if "reward" in r]
    assert len(logged) == 2
    for r in logged:
        parts = {k: r[f"rewards/{k}/mean"] for k in ("math", "reward_model", "genrm")}
        assert 0 < parts["reward_model"] < 1  # sigmoid-normalised
        assert 0.1 <= parts["genrm"] <= 0.9  # the scripted judge says 1/10 or 9/10 per completion
        assert r["reward"] == pytest.approx(parts["math"] + 0.5 * parts["reward_model"] + 0.25 * parts["genrm"],
                                            rel=1e-4)
