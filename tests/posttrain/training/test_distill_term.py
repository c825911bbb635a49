"""GRPO's on-policy distillation term (posttrain/training/distill_term.py), on a real trainer and tiny models: each
token's advantage gets w × the teacher's log-probability gap, which changes the loss by exactly what the module
says; a grpo stage with `distillation:` trains, logs both terms and reports them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from posttrain.core.models import load_causal_lm, load_tokenizer
from posttrain.core.run_folder import DISTILL_TERM, DISTILL_TERM_REVERSE_KL, read_jsonl
from posttrain.recipe import parse_recipe
from posttrain.report import write_report
from posttrain.run.runner import run_recipe
from posttrain.stages import KINDS
from posttrain.training.distill_term import mixed_advantages

WEIGHT = 0.5


def parity(completions: list[str], **kwargs: object) -> list[float]:
    """A verifier reward that varies within a group."""
    return [float(len(c) % 2) for c in completions]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory, tiny_base: Path) -> Path:
    """Another tiny DeepSeek-V3 on the same tokenizer, confident (its output layer scaled up): far from the policy."""
    from posttrain.core.tiny import build_tiny_model

    out = tmp_path_factory.mktemp("distill_term") / "teacher"
    tokenizer = load_tokenizer(str(tiny_base))
    model = build_tiny_model(tokenizer, {"num_hidden_layers": 2}, seed=7)
    with torch.no_grad():
        model.lm_head.weight.mul_(30)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def test_mixed_advantages_add_the_weighted_gap_at_each_completion_token() -> None:
    advantages = torch.tensor([1.0, -0.5])
    teacher = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, -9.0]])
    old = torch.tensor([[-2.0, -2.0, -1.0], [-1.5, -0.25, -1.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    assert torch.equal(mixed_advantages(advantages, teacher, old, mask, 0.5),
                       torch.tensor([[1.5, 1.0, 0.0], [0.0, -0.625, -0.5]]))


@pytest.mark.parametrize("loss_type", ["dapo", "grpo"])
def test_the_term_changes_the_loss_as_documented(loss_type: str, tmp_path: Path, tiny_base: Path,
                                                 teacher: Path) -> None:
    from datasets import Dataset
    from trl import GRPOConfig

    from posttrain.training.grpo_trainer import GRPOTrainer

    args = GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=8, num_generations=4,
                      max_completion_length=8, loss_type=loss_type, bf16=False, report_to=[], beta=0.0,
                      max_steps=1, mask_truncated_completions=False)
    prompts = Dataset.from_list([{"prompt": f"Compute {i}+{i + 3}."} for i in range(8)])
    trainer = GRPOTrainer(model=load_causal_lm(str(tiny_base)), args=args,
                          processing_class=load_tokenizer(str(tiny_base)), reward_funcs=[parity],
                          train_dataset=prompts)
    trainer.setup_distill_term(load_causal_lm(str(teacher)).eval().requires_grad_(False), WEIGHT)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1  # what the training loop sets
    batch = trainer._generate_and_score_completions([{"prompt": f"Compute {i}+7."} for i in (1, 2) for _ in range(4)])

    # The teacher's and the sampling policy's log-probabilities of every sampled token, computed here again.
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
    attention = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
    keep, mask = batch["completion_ids"].size(1), batch["completion_mask"].float()
    with torch.no_grad():
        teacher_lp = trainer._get_per_token_logps_and_entropies(trainer._distill_teacher, ids, attention, keep)[0]
        old_lp = trainer._get_per_token_logps_and_entropies(trainer.model, ids, attention, keep)[0]
    gap = (teacher_lp - old_lp) * mask
    advantages = batch["advantages"]
    assert advantages.shape == batch["completion_ids"].shape
    sequence = advantages[:, 0] - WEIGHT * gap[:, 0]  # the verifier's advantage: the same on every token
    assert torch.allclose(advantages, sequence[:, None] + WEIGHT * gap, atol=1e-4)
    assert sequence.abs().sum() > 0 and gap.abs().sum() > 0  # both terms carry something

    with torch.no_grad():
        mixed = trainer._compute_loss(trainer.model, batch)
        plain = trainer._compute_loss(trainer.model, {**batch, "advantages": sequence})
    # At ratio 1 each token's loss is −A_t: the term adds −w × the loss type's average of the gap.
    if loss_type == "dapo":  # tokens of the whole batch
        expected = -WEIGHT * gap.sum() / batch["num_items_in_batch"]
    else:  # grpo: tokens of each sequence, then sequences
        expected = -WEIGHT * (gap.sum(1) / mask.sum(1).clamp(min=1)).mean()
    assert float(mixed - plain) == pytest.approx(float(expected), rel=1e-3, abs=1e-5)
    logged = trainer._metrics["train"]
    assert logged[DISTILL_TERM_REVERSE_KL][-1] == pytest.approx(float(-gap.sum() / mask.sum()), rel=1e-4)
    assert logged[DISTILL_TERM][-1] == pytest.approx(-WEIGHT * logged[DISTILL_TERM_REVERSE_KL][-1])


def test_a_grpo_stage_distils_and_reinforces_at_once_and_reports_both_terms(
        tmp_path: Path, tiny_base: Path, teacher: Path) -> None:
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Compute {i}+{2 * i}.", "solution": str(3 * i)}) + "\n"
                            for i in range(16)))
    text = f"""\
output_dir: {tmp_path / 'out'}
seed: 0
model: {{name_or_path: {tiny_base}}}
stages:
  - name: grpo
    kind: grpo
    data: {data}
    rewards: [{{name: 'tests.posttrain.training.test_distill_term:parity'}}]
    distillation: {{teacher: {teacher}, weight: {WEIGHT}}}
    trl: {{max_steps: 4, per_device_train_batch_size: 8, num_generations: 4, max_completion_length: 8,
           learning_rate: 1.0e-2, logging_steps: 1, mask_truncated_completions: false}}
"""
    entry = run_recipe(parse_recipe(text, kinds=KINDS))["stages"]["grpo"]
    assert entry["status"] == "done", entry
    rows = [r for r in read_jsonl(tmp_path / "out" / "grpo" / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for r in rows:
        assert r[DISTILL_TERM_REVERSE_KL] > 0 and "reward" in r
        assert r[DISTILL_TERM] == pytest.approx(-WEIGHT * r[DISTILL_TERM_REVERSE_KL], rel=1e-4)
    assert rows[-1][DISTILL_TERM_REVERSE_KL] < rows[0][DISTILL_TERM_REVERSE_KL]  # the policy moves to the teacher
    md = write_report(tmp_path / "out", kinds=KINDS).read_text()
    assert f"each token's advantage also got {WEIGHT:g} × the gap between the log-probabilities of the teacher" in md
    assert "**distillation term**: reverse KL to the teacher per token" in md
    assert "**reward** (weighted sum)" in md
