"""MTP in the trainer stages (posttrain/training/mtp.py): SFT trains and saves it; GRPO trains it on its own
speculative rollouts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from data_pipelines.tasks.arithmetic import solution_text, train_prompts
from posttrain.core.models import load_causal_lm
from posttrain.core.mtp import mtp_layers
from posttrain.core.run_folder import MTP_ACCEPTANCE, MTP_ACCURACY, MTP_LOSS
from posttrain.recipe import parse_recipe
from posttrain.run.runner import run_recipe
from posttrain.stages import KINDS


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("mtp_data") / "data.jsonl"
    with open(path, "w") as f:
        for r in train_prompts(64, seed=1):
            f.write(json.dumps({"prompt": r["prompt"], "completion": solution_text(r["a"], r["b"]),
                                "solution": str(r["a"] + r["b"])}) + "\n")
    return path


def rows(out: Path, stage: str) -> list[dict]:
    return [json.loads(line) for line in (out / stage / "metrics.jsonl").read_text().splitlines()]


def mtp_state(path: Path) -> dict[str, torch.Tensor]:
    (layer,) = mtp_layers(load_causal_lm(str(path)))
    return layer.state_dict()


def test_sft_trains_the_module_logs_it_and_saves_it(tmp_path: Path, mtp_base: Path, data: Path) -> None:
    text = f"""\
output_dir: {tmp_path}
seed: 0
model: {{name_or_path: {mtp_base}}}
stages:
  - name: sft
    kind: sft
    data: {data}
    mtp: {{weight: 0.3}}
    trl: {{max_steps: 4, per_device_train_batch_size: 16, learning_rate: 2.0e-3, logging_steps: 2, save_steps: 4,
           max_length: 64}}
"""
    report = run_recipe(parse_recipe(text, kinds=KINDS))
    assert report["stages"]["sft"]["status"] == "done", report
    logged = [r for r in rows(tmp_path, "sft") if MTP_LOSS in r]
    assert [r["step"] for r in logged] == [2, 4]
    assert logged[-1][MTP_LOSS] < logged[0][MTP_LOSS]
    assert 0 <= logged[-1][MTP_ACCURACY] <= 1
    assert "moe/max_violation/layer_4" in logged[0]  # the MTP block's router is balanced too
    start = mtp_state(mtp_base)
    final = mtp_state(tmp_path / "sft" / "model")
    assert not torch.equal(final["eh_proj.weight"], start["eh_proj.weight"])
    checkpoint = mtp_state(tmp_path / "sft" / "checkpoints" / "checkpoint-4")  # resuming keeps it too
    assert all(torch.equal(checkpoint[k], v) for k, v in final.items())


def test_grpo_step_with_speculative_rollouts_trains_the_draft_on_them(
    tmp_path: Path, mtp_base: Path, data: Path
) -> None:
    text = f"""\
output_dir: {tmp_path}
seed: 0
model: {{name_or_path: {mtp_base}}}
stages:
  - name: grpo
    kind: grpo
    data: {data}
    rewards: [{{name: 'tests.posttrain.plugins.grpo_rewards:length'}}]
    rollout: {{speculative: {{mtp: true}}}}
    mtp: {{weight: 0.1}}
    trl: {{max_steps: 2, per_device_train_batch_size: 8, num_generations: 4, max_completion_length: 12,
           learning_rate: 1.0e-3, logging_steps: 1, save_steps: 100, mask_truncated_completions: false}}
"""
    report = run_recipe(parse_recipe(text, kinds=KINDS))
    assert report["stages"]["grpo"]["status"] == "done", report
    logged = [r for r in rows(tmp_path, "grpo") if "loss" in r]
    assert len(logged) == 2
    for r in logged:
        assert 0 <= r[MTP_ACCEPTANCE] <= 1
        assert r[MTP_LOSS] > 0
    start = mtp_state(mtp_base)
    final = mtp_state(tmp_path / "grpo" / "model")
    assert not torch.equal(final["eh_proj.weight"], start["eh_proj.weight"])


def test_the_new_keys_leave_existing_stage_hashes_alone() -> None:
    """Stages written before MTP existed keep their config hash (a rerun skips them); setting a key changes it."""
    from posttrain.core.generation import GenerationSpec
    from posttrain.stages.grpo import RolloutSpec
    from posttrain.stages.sft import Config as SFTConfig

    assert "speculative" not in GenerationSpec(backend="hf").model_dump(mode="json")
    assert GenerationSpec(backend="hf", speculative={"mtp": True}).model_dump()["speculative"]["mtp"] is True
    assert "speculative" not in RolloutSpec().model_dump(mode="json")
    sft = SFTConfig(name="sft", kind="sft", data="distill")
    assert "mtp" not in sft.model_dump(mode="json")
    assert SFTConfig(name="sft", kind="sft", data="distill", mtp={"weight": 0.3}).model_dump()["mtp"] == {"weight": 0.3}


def test_the_mtp_loss_counts_once_per_optimizer_step_under_gradient_accumulation() -> None:
    from posttrain.training.mtp import MTPMixin

    class Trainer(MTPMixin):
        current_gradient_accumulation_steps = 4
        model_accepts_loss_kwargs = False
        compute_loss_func = None

    grpo_like = Trainer()
    grpo_like.loss_is_scaled_for_ga = True  # the trainer's loss is already over the accumulated batch
    assert grpo_like._mtp_ga_scale((), {}) == 0.25
    sft_like = Trainer()  # the Trainer divides the whole loss by the accumulation steps itself
    assert sft_like._mtp_ga_scale((False, None), {}) == 1.0
    sft_like.model_accepts_loss_kwargs = True
    assert sft_like._mtp_ga_scale((), {"num_items_in_batch": 100}) == 0.25
