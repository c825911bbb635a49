"""GRPO's in-process rollouts through the decode loop (posttrain/training/rollouts.py): what TRL's own
`model.generate` path returns, row for row, and TRL's path wherever the loop does not apply."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import datasets
import pytest
import torch
from trl import GRPOConfig
from trl import GRPOTrainer as TRLGRPOTrainer

from posttrain.core.models import load_causal_lm, load_tokenizer
from posttrain.training.grpo_trainer import GRPOTrainer


def _length(completions: list[Any], **_: Any) -> list[float]:
    return [float(len(str(c))) for c in completions]


def _trainer(tmp_path: Path, base: Path, **config: Any) -> GRPOTrainer:
    rows = [{"prompt": f"Compute {7 * i}+{3 + i}."} for i in range(8)]
    args = GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=8, num_generations=4,
                      max_completion_length=10, report_to="none", use_cpu=True, logging_steps=1, **config)
    return GRPOTrainer(model=load_causal_lm(str(base)), args=args, reward_funcs=[_length],
                       train_dataset=datasets.Dataset.from_list(rows),
                       processing_class=load_tokenizer(str(base), padding_side="left"))


def test_greedy_rollouts_are_trls_own_row_for_row(tmp_path: Path, tiny_base: Path) -> None:
    trainer = _trainer(tmp_path, tiny_base, generation_kwargs={"do_sample": False})
    assert trainer.setup_rollouts() is True
    tok = trainer.processing_class
    prompts = [tok(p)["input_ids"] for p in ("Compute 1+2.", "Compute 365+75.", "Compute 9+9.")]
    # an end-of-sequence id that one row reaches early, so rows end at different steps
    free, _ = TRLGRPOTrainer._generate_single_turn(trainer, prompts, None, {}, 1)
    trainer.eos_token_ids = [free[0][2]]
    trainer.generation_config.eos_token_id = [free[0][2]]
    theirs, _ = TRLGRPOTrainer._generate_single_turn(trainer, prompts, None, {}, 1)
    ours, logprobs = trainer._generate_single_turn(prompts, None, {}, 1)
    assert ours == theirs and logprobs is None
    assert len(ours[0]) == 3 and ours[0][-1] == free[0][2]  # ends with (and keeps) its end-of-sequence token
    assert max(len(c) for c in ours) == 10


def test_sampled_rollouts_follow_torchs_seed(tmp_path: Path, tiny_base: Path) -> None:
    trainer = _trainer(tmp_path, tiny_base)
    assert trainer.setup_rollouts() is True
    prompts = [trainer.processing_class(p)["input_ids"] for p in ("Compute 1+2.", "Compute 9+9.")] * 4
    torch.manual_seed(3)
    first, _ = trainer._generate_single_turn(prompts, None, {}, 4)
    torch.manual_seed(3)
    assert trainer._generate_single_turn(prompts, None, {}, 4)[0] == first
    assert first[0] != first[2]  # copies of a prompt draw their own samples


def test_what_the_loop_does_not_do_is_left_to_trl(tmp_path: Path, tiny_base: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    trainer = _trainer(tmp_path, tiny_base, repetition_penalty=1.2)
    with caplog.at_level(logging.WARNING, logger="posttrain.grpo"):
        assert trainer.setup_rollouts() is False
    assert "repetition_penalty=1.2" in caplog.text
    prompts = [trainer.processing_class("Compute 1+2.")["input_ids"]]
    torch.manual_seed(0)
    ours, _ = trainer._generate_single_turn(prompts, None, {}, 1)
    torch.manual_seed(0)
    assert ours == TRLGRPOTrainer._generate_single_turn(trainer, prompts, None, {}, 1)[0]
