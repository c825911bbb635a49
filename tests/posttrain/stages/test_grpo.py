from __future__ import annotations

import json
import logging
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from posttrain.core.models import load_causal_lm, load_tokenizer
from posttrain.recipe import parse_recipe
from posttrain.run.runner import run_recipe
from posttrain.stages import KINDS
from posttrain.stages.grpo import LOSS_PRESETS
from posttrain.training.dynamic_sampling import DynamicSamplingConfig, concat_rollouts, zero_variance_groups
from posttrain.training.grpo_trainer import ThinkOpeners, ZeroStreaks
from posttrain.training.moe_balance import find_routers
from rewards.format import FormatReward
from tests.posttrain.stages.interrupt import last_checkpoint, sigterm_once_written, start_run

PLUGINS = "tests.posttrain.plugins.grpo_rewards"
RECIPE = """\
output_dir: {out}
seed: 0
model: {{name_or_path: {base}}}
stages:
  - name: grpo
    kind: grpo
    data: {data}
    rewards: {rewards}
{extra}    trl: {{max_steps: {steps}, per_device_train_batch_size: 8, num_generations: 4, max_completion_length: 12,
           learning_rate: 1.0e-3, logging_steps: 1, save_steps: {save}{trl}}}
"""


@pytest.fixture(scope="module")
def prompts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("grpo") / "prompts.jsonl"
    with open(path, "w") as f:
        for i in range(40):
            a, b = 10 + 7 * i, 3 + 5 * i
            f.write(json.dumps({"prompt": f"Compute {a}+{b}.", "solution": str(a + b)}) + "\n")
    return path


def recipe(out: Path, base: Path, data: Path, *, rewards: str = f"[{{name: '{PLUGINS}:length'}}]",
           steps: int = 1, save: int = 100, extra: str = "", trl: str = "") -> str:
    return RECIPE.format(out=out, base=base, data=data, rewards=rewards, steps=steps, save=save, extra=extra,
                         trl=trl)


def metric_rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "grpo" / "metrics.jsonl").read_text().splitlines()]


def changed_weights(out: Path, base: Path) -> set[str]:
    trained = load_causal_lm(str(out / "grpo" / "model")).state_dict()
    start = load_causal_lm(str(base)).state_dict()
    return {k for k, v in trained.items() if not torch.equal(v, start[k])}


@pytest.mark.parametrize("loss", sorted(LOSS_PRESETS))
def test_each_loss_variant_takes_a_step_that_changes_the_weights(
    loss: str, tmp_path: Path, tiny_base: Path, prompts: Path
) -> None:
    # A random model rarely stops within 12 tokens: keep truncated completions in the loss (DAPO masks them).
    text = recipe(tmp_path, tiny_base, prompts, extra=f"    loss: {loss}\n", trl=", mask_truncated_completions: false")
    report = run_recipe(parse_recipe(text, kinds=KINDS))
    entry = report["stages"]["grpo"]
    assert entry["status"] == "done", entry
    assert entry["metrics"]["steps"] == 1
    changed = changed_weights(tmp_path, tiny_base)
    assert "model.layers.0.self_attn.kv_b_proj.weight" in changed
    assert "lm_head.weight" in changed


def test_kl_to_the_reference_rebuilds_it_from_the_saved_model(tmp_path: Path, tiny_base: Path, prompts: Path) -> None:
    report = run_recipe(parse_recipe(recipe(tmp_path, tiny_base, prompts, steps=2, trl=", beta: 0.1"), kinds=KINDS))
    assert report["stages"]["grpo"]["status"] == "done", report
    rows = [r for r in metric_rows(tmp_path) if "loss" in r]
    assert rows[-1]["kl"] > 0  # the policy moved away from the reference after the first step
    assert changed_weights(tmp_path, tiny_base)


def test_reward_weights_combine_as_specified(tmp_path: Path, tiny_base: Path, prompts: Path) -> None:
    rewards = f"[{{name: '{PLUGINS}:length', weight: 1.0}}, {{name: '{PLUGINS}:digits', weight: -0.5}}]"
    report = run_recipe(parse_recipe(recipe(tmp_path, tiny_base, prompts, rewards=rewards, steps=2), kinds=KINDS))
    assert report["stages"]["grpo"]["status"] == "done", report
    for row in (r for r in metric_rows(tmp_path) if "reward" in r):
        length, digits = row["rewards/length/mean"], row["rewards/digits/mean"]
        assert row["reward"] == pytest.approx(1.0 * length - 0.5 * digits, rel=1e-4)
        assert length > 0


def test_moe_balancing_runs_during_rl(tmp_path: Path, tiny_base: Path, prompts: Path) -> None:
    text = recipe(tmp_path, tiny_base, prompts, steps=2, extra="    moe_balance: {bias_update_speed: 0.01}\n")
    assert run_recipe(parse_recipe(text, kinds=KINDS))["stages"]["grpo"]["status"] == "done"
    rows = [r for r in metric_rows(tmp_path) if "loss" in r]
    assert all(r["moe/max_violation"] >= 0 for r in rows) and "moe/max_violation/layer_1" in rows[0]
    model = load_causal_lm(str(tmp_path / "grpo" / "model"))
    biases = torch.stack([r.e_score_correction_bias for _, r in find_routers(model)])
    # Two updates of ±γ (or 0 for an expert exactly at the mean): every bias is a multiple of γ, some moved.
    assert biases.abs().max() > 0 and biases.abs().max() <= 0.02 + 1e-6
    assert torch.allclose(biases / 0.01, (biases / 0.01).round(), atol=1e-4)


# --------------------------------------------------------------------------------------------------
# Rewards that fail


@pytest.mark.parametrize("kwargs", ["{model: someone/reward-modle}", "{model: '{tmp}/not_a_model'}"])
def test_a_reward_model_that_cannot_load_fails_the_stage_before_the_first_step(
        kwargs: str, tmp_path: Path, tiny_base: Path, prompts: Path) -> None:
    # A hub name with a typo while offline (validate cannot tell), or a folder that holds no model.
    (tmp_path / "not_a_model").mkdir()
    kwargs = kwargs.replace("{tmp}", str(tmp_path))
    rewards = f"[{{name: '{PLUGINS}:length'}}, {{name: reward_model, kwargs: {kwargs}}}]"
    start = time.monotonic()
    report = run_recipe(parse_recipe(recipe(tmp_path / "out", tiny_base, prompts, rewards=rewards, steps=2),
                                     kinds=KINDS))
    entry = report["stages"]["grpo"]
    assert entry["status"] == "failed", entry
    error = entry["metrics"]["error"]
    assert error.startswith("reward_model: ") and "\n" not in error
    assert ("'someone/reward-modle'" if "someone" in kwargs else f"{tmp_path / 'not_a_model'} ") in error
    assert not (tmp_path / "out" / "grpo" / "metrics.jsonl").exists()  # no training step was taken
    assert time.monotonic() - start < 60  # no hub retries


def test_a_reward_failing_on_every_row_stops_grpo_with_its_first_error(
        tmp_path: Path, tiny_base: Path, prompts: Path) -> None:
    rewards = f"[{{name: '{PLUGINS}:length'}}, {{name: '{PLUGINS}:judge_down'}}]"
    report = run_recipe(parse_recipe(recipe(tmp_path, tiny_base, prompts, rewards=rewards, steps=3), kinds=KINDS))
    entry = report["stages"]["grpo"]
    assert entry["status"] == "failed", entry
    assert entry["metrics"]["error"] == (
        "reward judge_down: 8 of 8 rows failed over the last 1 scoring round(s), more than max_reward_error_rate "
        "0.5; its first error: ConnectionError: judge at http://127.0.0.1:9/v1 refused the connection")
    assert not (tmp_path / "grpo" / "model").exists()


@pytest.mark.parametrize(("max_rate", "status"), [(None, "done"), (0.1, "failed")])
def test_reward_errors_below_the_threshold_train_on(
        max_rate: float | None, status: str, tmp_path: Path, tiny_base: Path, prompts: Path) -> None:
    # One row in eight fails in every scoring round: 12.5% is under the default 0.5, over 0.1.
    rewards = f"[{{name: '{PLUGINS}:FirstRowFails'}}]"
    extra = "" if max_rate is None else f"    max_reward_error_rate: {max_rate}\n    reward_error_window: 2\n"
    report = run_recipe(parse_recipe(recipe(tmp_path, tiny_base, prompts, rewards=rewards, steps=2, extra=extra),
                                     kinds=KINDS))
    entry = report["stages"]["grpo"]
    assert entry["status"] == status, entry
    if status == "failed":
        assert "reward FirstRowFails: 1 of 8 rows failed" in entry["metrics"]["error"]
        assert entry["metrics"]["error"].endswith("its first error: the first row of the batch is bad")
    else:
        assert entry["metrics"]["steps"] == 2


def test_zero_streaks_count_all_zero_rounds_and_report_once() -> None:
    streaks = ZeroStreaks(3)
    nan = float("nan")
    rounds = [[0.0, 0.0], [0.0, nan], [0.0, 1.0], [0.0, 0.0], [nan, nan], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]
    # A round with a non-zero score ends the streak; one with no score at all (the error guard's) leaves it.
    assert [streaks.update("math", r) for r in rounds] == [False, False, False, False, False, False, True, False]
    assert streaks.update("format", [0.0, None]) is False and streaks.streaks["format"] == 1
    assert not any(ZeroStreaks(0).update("math", [0.0]) for _ in range(30))


def test_a_reward_at_zero_on_every_row_is_warned_about_once_and_unreadable_answers_never_stop_grpo(
        tmp_path: Path, tiny_base: Path, prompts: Path) -> None:
    """Every row 0.0 with an error (answers the reward cannot read): counted in the error rate, not a failure of
    the reward, so training goes on; after `zero_reward_warning_rounds` rounds at 0, one warning with a sample."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("posttrain.grpo")
    logger.addHandler(handler)
    rewards = f"[{{name: '{PLUGINS}:length'}}, {{name: '{PLUGINS}:NothingReadable'}}]"
    try:
        report = run_recipe(parse_recipe(recipe(tmp_path, tiny_base, prompts, rewards=rewards, steps=3,
                                                extra="    zero_reward_warning_rounds: 2\n"), kinds=KINDS))
    finally:
        logger.removeHandler(handler)
    assert report["stages"]["grpo"]["status"] == "done", report["stages"]["grpo"]
    warnings = [r.getMessage() for r in records if "scored 0.0 on every completion" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("reward NothingReadable scored 0.0 on every completion for 2 scoring rounds")
    assert "A completion: '" in warnings[0] and "its row: {'solution': '" in warnings[0]
    rows = [r for r in metric_rows(tmp_path) if "rewards/NothingReadable/error_rate" in r]
    assert rows and all(r["rewards/NothingReadable/error_rate"] == 1.0 for r in rows)


def test_the_reward_error_options_keep_older_stages_config_hash() -> None:
    from posttrain.stages.grpo import Config

    base = {"name": "g", "kind": "grpo", "data": "d", "rewards": [{"name": "math"}]}
    assert "max_reward_error_rate" not in Config(**base).model_dump()
    assert Config(**base, max_reward_error_rate=0.2).model_dump()["max_reward_error_rate"] == 0.2
    assert "zero_reward_warning_rounds" not in Config(**base).model_dump()
    assert Config(**base, zero_reward_warning_rounds=5).model_dump()["zero_reward_warning_rounds"] == 5


# --------------------------------------------------------------------------------------------------
# Dynamic sampling


def test_zero_variance_groups_are_the_groups_with_all_equal_advantages() -> None:
    adv = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0, -1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1e-6])
    assert zero_variance_groups(adv, 4).tolist() == [True, False, False]


def test_concat_rollouts_pads_prompts_on_the_left_and_completions_on_the_right() -> None:
    a = {"prompt_ids": torch.tensor([[5, 6]]), "completion_ids": torch.tensor([[7, 8, 9]]), "n": 1}
    b = {"prompt_ids": torch.tensor([[1, 2, 3]]), "completion_ids": torch.tensor([[4]]), "n": 1}
    out = concat_rollouts([a, b], pad_token_id=0)
    assert out["prompt_ids"].tolist() == [[0, 5, 6], [1, 2, 3]]
    assert out["completion_ids"].tolist() == [[7, 8, 9], [4, 0, 0]]
    assert out["n"] == 1


def test_dynamic_sampling_drops_exactly_the_zero_variance_groups(tmp_path: Path, tiny_base: Path) -> None:
    from trl import GRPOConfig, GRPOTrainer

    from posttrain.core.models import load_tokenizer
    from posttrain.training.dynamic_sampling import DynamicSamplingMixin
    from rewards.registry import get_reward

    class Trainer(DynamicSamplingMixin, GRPOTrainer):
        pass

    from datasets import Dataset

    varied = [{"prompt": f"Compute {i}+{i + 1}."} for i in range(20)]
    flat = [{"prompt": f"Flat {i}."} for i in range(2)]
    args = GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=16, num_generations=4,
                      max_completion_length=8, bf16=False, report_to=[], seed=0)
    tokenizer = load_tokenizer(str(tiny_base), padding_side="left")
    trainer = Trainer(model=load_causal_lm(str(tiny_base)), args=args, processing_class=tokenizer,
                      reward_funcs=[get_reward(f"{PLUGINS}:flat_for_marked")], train_dataset=Dataset.from_list(varied))
    trainer.setup_dynamic_sampling(DynamicSamplingConfig(enabled=True, max_refills=1), varied, seed=0)
    trainer.model.train()
    # Four groups: two flat (every completion rewarded 0.5), two that vary.
    inputs = [row for p in [flat[0], varied[0], flat[1], varied[1]] for row in [p] * 4]
    batch = trainer._generate_and_score_completions(inputs)
    prompts = tokenizer.batch_decode(batch["prompt_ids"], skip_special_tokens=True)
    assert len(prompts) == 16
    assert not any("Flat" in p for p in prompts)  # both flat groups gone...
    assert not zero_variance_groups(batch["advantages"], 4).any()  # ...and replaced by groups with signal
    assert [prompts[i] for i in (0, 4)] == ["Compute 0+1.", "Compute 1+2."]  # the kept groups come first
    metrics = trainer._metrics["train"]
    assert metrics["dynamic_sampling/groups_dropped"] == [2.0]
    assert metrics["dynamic_sampling/refills"] == [1.0]
    assert metrics["dynamic_sampling/zero_variance_kept"] == [0.0]
    assert batch["completion_ids"].shape[0] == batch["completion_mask"].shape[0] == 16


def test_dynamic_sampling_in_a_run_logs_the_dropped_groups(tmp_path: Path, tiny_base: Path) -> None:
    data = tmp_path / "mixed.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Flat {i}." if i % 2 else f"Compute {i}+1."}) + "\n"
                            for i in range(16)))
    text = recipe(tmp_path / "out", tiny_base, data, rewards=f"[{{name: '{PLUGINS}:flat_for_marked'}}]", steps=2,
                  extra="    dynamic_sampling: {enabled: true, max_refills: 2}\n")
    report = run_recipe(parse_recipe(text, kinds=KINDS))
    assert report["stages"]["grpo"]["status"] == "done", report
    rows = [r for r in metric_rows(tmp_path / "out") if "reward" in r]
    assert sum(r["dynamic_sampling/groups_dropped"] for r in rows) > 0
    assert report["stages"]["grpo"]["metrics"]["groups_dropped_per_step"] > 0


# --------------------------------------------------------------------------------------------------
# Scale and resume


@pytest.mark.slow
def test_two_processes_under_accelerate(tmp_path: Path, tiny_base: Path, prompts: Path) -> None:
    text = recipe(tmp_path, tiny_base, prompts, steps=2,
                  extra="    launch: {num_processes: 2}\n    moe_balance: {bias_update_speed: 0.01}\n")
    report = run_recipe(parse_recipe(text, kinds=KINDS))
    entry = report["stages"]["grpo"]
    assert entry["status"] == "done", entry
    assert entry["metrics"]["steps"] == 2
    assert entry["metrics"]["bias_sync_max_diff"] == 0.0
    assert changed_weights(tmp_path, tiny_base)


@pytest.mark.slow
def test_sigterm_then_rerun_resumes_from_the_grpo_checkpoint(
    tmp_path: Path, tiny_base: Path, prompts: Path, python: str
) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(recipe(tmp_path / "out", tiny_base, prompts, steps=16, save=1000))
    sigterm_once_written(start_run(python, path), tmp_path / "out" / "grpo" / "metrics.jsonl", 3)
    checkpoint, stopped_at = last_checkpoint(tmp_path / "out" / "grpo")
    assert 3 <= stopped_at < 16

    rerun = subprocess.run([python, "-m", "posttrain.cli", "run", str(path)], capture_output=True, text=True,
                           timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resuming from {checkpoint}" in rerun.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["stages"]["grpo"]["metrics"]["steps"] == 16
    steps = [r["step"] for r in metric_rows(tmp_path / "out") if "loss" in r]
    assert steps[-1] == 16 and stopped_at + 1 in steps  # logging went on from the checkpoint


CHAT_PROMPT = [{"role": "user", "content": "Compute 1+2."}]


class _Rewards:
    """What TRL's `_calculate_rewards` does with the completions: hand them to the rewards."""

    def __init__(self, tokenizer: Any, chat_template_kwargs: dict[str, Any] | None = None):
        self.processing_class = tokenizer
        self.chat_template_kwargs = chat_template_kwargs or {}

    def _calculate_rewards(self, inputs: Any, prompts: list[Any], completions: list[Any], ids: Any) -> list[float]:
        return FormatReward()(completions, prompts=prompts)


class _GRPO(_Rewards):
    """What GRPOTrainer._calculate_rewards does first: the completions the rewards get carry the opener."""

    def _calculate_rewards(self, inputs: Any, prompts: list[Any], completions: list[Any], ids: Any) -> list[float]:
        openers = ThinkOpeners(self.processing_class, self.chat_template_kwargs)
        return super()._calculate_rewards(inputs, prompts, openers.apply(prompts, completions), ids)


def test_grpo_rewards_see_the_opener_of_conversational_prompts(family_base: Callable[[str], Path]) -> None:
    completion = [{"role": "assistant", "content": "1+2=3</think> The answer is 3."}]
    thinking = load_tokenizer(str(family_base("qwen3")))
    # Without the stage's help the format reward cannot see the `<think>` that ended the rendered prompt.
    assert _Rewards(thinking)._calculate_rewards([{}], [CHAT_PROMPT], [completion], None) == [0.0]
    assert _GRPO(thinking)._calculate_rewards([{}], [CHAT_PROMPT], [completion], None) == [1.0]
    # Non-thinking mode closes an empty block in the prompt: the answer alone is a complete turn.
    answer = [{"role": "assistant", "content": "The answer is 3."}]
    assert _GRPO(thinking, {"enable_thinking": False})._calculate_rewards([{}], [CHAT_PROMPT], [answer], None) == [1.0]
    # A template that opens nothing: `</think>` without an opening tag is not a reasoning block.
    plain = load_tokenizer(str(family_base("llama")))
    assert _GRPO(plain)._calculate_rewards([{}], [CHAT_PROMPT], [completion], None) == [0.0]
    # A completion that opens its own block after the template opened one has two: the format fails.
    twice = [{"role": "assistant", "content": "<think>1+2=3</think> 3"}]
    assert _GRPO(thinking)._calculate_rewards([{}], [CHAT_PROMPT], [twice], None) == [0.0]


# --------------------------------------------------------------------------------------------------
# Self-rewarding: a `genrm` judge that is the live policy (DeepSeek-V3's constitutional self-feedback)

JUDGE_TEMPLATE = "{{ prompt }}\n{{ completion }}\nScore:"
SELF_REWARDING = """\
output_dir: {out}
seed: 0
model: {{name_or_path: {base}}}
stages:
  - name: judge_sft
    kind: sft
    data: {judge_data}
    trl: {{max_steps: 30, per_device_train_batch_size: 16, learning_rate: 3.0e-3, logging_steps: 10, save_steps: 1000,
           lr_scheduler_type: constant, max_length: 96}}
  - name: grpo
    kind: grpo
    model: judge_sft
    data: {prompts}
    rewards:
      - name: '{plugins}:RecordingJudge'
        kwargs: {{backend: policy, template: {template}, probe_file: {probe}, n: 8, temperature: 1.0, seed: 0,
                  max_new_tokens: 6}}
    trl: {{max_steps: 3, per_device_train_batch_size: 8, num_generations: 4, max_completion_length: 8,
           learning_rate: 1.0e-3, logging_steps: 1, save_steps: 100}}
"""


def test_a_self_rewarding_judge_shares_the_policys_weights_at_every_step(
    tmp_path: Path, tiny_base: Path, prompts: Path
) -> None:
    import random

    from data_pipelines.tasks.arithmetic import sampled_solution, solution_text, train_prompts
    from rewards.genrm import render

    # A policy that has learnt to answer a judge prompt with "k/10" (k at random), so its verdicts parse.
    template = tmp_path / "judge.txt"
    template.write_text(JUDGE_TEMPLATE)
    rng = random.Random(0)
    judge_data = tmp_path / "judge_sft.jsonl"
    with open(judge_data, "w") as f:
        for r in train_prompts(300, seed=5):
            answer = solution_text(r["a"], r["b"]) if rng.random() < 0.5 else sampled_solution(r["a"], r["b"], rng)
            f.write(json.dumps({"prompt": render(str(template), prompt=r["prompt"], completion=answer),
                                "completion": f" {rng.randrange(11)}/10"}) + "\n")
    probe = tmp_path / "probe.jsonl"
    text = SELF_REWARDING.format(out=tmp_path / "out", base=tiny_base, judge_data=judge_data, prompts=prompts,
                                 plugins=PLUGINS, template=template, probe=probe)
    report = run_recipe(parse_recipe(text, kinds=KINDS))
    assert report["stages"]["grpo"]["status"] == "done", report

    # The policy's own verdicts were its reward at every step...
    rows = [r for r in metric_rows(tmp_path / "out") if "reward" in r]
    assert [r["step"] for r in rows] == [1, 2, 3] and all(r["rewards/RecordingJudge/mean"] >= 0 for r in rows)
    # ...given by the trainer's one model object (no copy, still in training mode between its eval-mode verdicts),
    # whose verdicts on the same rows with the same seed changed as its weights were trained.
    calls = [json.loads(line) for line in probe.read_text().splitlines()]
    assert len(calls) == 3 and len({c["model"] for c in calls}) == 1 and all(c["training"] for c in calls)
    assert all(s is not None for c in calls for s in c["probe"])
    assert calls[0]["probe"] != calls[-1]["probe"]


def test_the_grpo_preset_is_deepseekmath_grpo_with_k3_kl_to_the_reference(
    tmp_path: Path, tiny_base: Path, prompts: Path
) -> None:
    from posttrain.recipe import build_trl_config
    from posttrain.report import write_report
    from tests.posttrain.report.fake_run import png_info, stage_sections

    text = recipe(tmp_path, tiny_base, prompts, steps=2, extra="    loss: grpo\n",
                  trl=", mask_truncated_completions: false")
    args = build_trl_config(parse_recipe(text, kinds=KINDS).stage("grpo"), tmp_path / "args")
    # Sequence-level mean, group-std advantages, β = 0.04 on TRL's k3 KL, without V3.2's importance-ratio factor.
    assert (args.loss_type, args.scale_rewards) == ("grpo", "group")
    assert (args.beta, args.use_bias_correction_kl) == (0.04, False)
    own = recipe(tmp_path, tiny_base, prompts, extra="    loss: grpo\n", trl=", beta: 0.01")
    assert build_trl_config(parse_recipe(own, kinds=KINDS).stage("grpo"), tmp_path / "args").beta == 0.01

    report = run_recipe(parse_recipe(text, kinds=KINDS))
    entry = report["stages"]["grpo"]
    assert entry["status"] == "done", entry
    assert entry["metrics"]["beta"] == 0.04 and entry["metrics"]["loss_type"] == "grpo"
    rows = [r for r in metric_rows(tmp_path) if "loss" in r]
    assert rows[0]["kl"] == 0 and rows[-1]["kl"] > 0  # the reference is the starting model: it moves away from it
    sec = stage_sections(write_report(tmp_path, kinds=KINDS).read_text())["grpo"]
    assert "KL to the reference (β = 0.04, k3 estimator): 0 (step 1)" in sec
    assert png_info(tmp_path / "plots" / "grpo_dynamics.png")["data"]["series"]["kl"] == 2
