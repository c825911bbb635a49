from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from posttrain.core.models import load_causal_lm, load_tokenizer
from posttrain.training.moe_balance import (
    ExpertLoadTracker,
    MoEBalanceConfig,
    bias_update,
    find_routers,
    max_violation,
    sequence_balance_loss,
)


def test_bias_update_sign_and_magnitude() -> None:
    bias = torch.tensor([0.0, 0.5, -0.5, 0.0])
    load = torch.tensor([10.0, 2.0, 6.0, 6.0])  # mean 6: overloaded, underloaded, exactly mean twice
    new = bias_update(bias, load, 0.01)
    assert torch.allclose(new, torch.tensor([-0.01, 0.51, -0.5, 0.0]))
    assert torch.equal(bias_update(bias, load, 0.0), bias)


def test_max_violation() -> None:
    assert max_violation(torch.tensor([4.0, 4.0, 4.0, 4.0])).item() == 0.0
    assert max_violation(torch.tensor([10.0, 2.0, 6.0, 6.0])).item() == pytest.approx(4 / 6)
    per_layer = max_violation(torch.tensor([[1.0, 1.0], [3.0, 1.0]]))
    assert per_layer.tolist() == pytest.approx([0.0, 0.5])


def _batch(tiny_base: Path) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    model = load_causal_lm(str(tiny_base))
    tok = load_tokenizer(str(tiny_base), padding_side="right")
    batch = tok(["Compute 12+345.", "Compute 1+2. <think>1+2=3</think>", "Compute 999+1."],
                return_tensors="pt", padding=True)
    assert (batch["attention_mask"] == 0).any()  # the test needs real padding
    return model, batch


def test_loads_match_a_manual_count_of_the_router_topk(tiny_base: Path) -> None:
    model, batch = _batch(tiny_base)
    tracker = ExpertLoadTracker(model, MoEBalanceConfig(bias_update_speed=0.0, seq_aux_loss_coef=0.0))
    routers = [m for _, m in find_routers(model)]
    assert len(routers) == model.config.num_hidden_layers - model.config.first_k_dense_replace

    manual = torch.zeros(len(routers), model.config.n_routed_experts, dtype=torch.float64)
    real = batch["attention_mask"].reshape(-1).bool()

    def counter(i: int):  # an independent count from the router's own output
        def hook(module, args, output):  # type: ignore[no-untyped-def]
            chosen = output[2][real]
            manual[i] += torch.bincount(chosen.reshape(-1), minlength=manual.shape[1]).double()
        return hook

    handles = [r.register_forward_hook(counter(i)) for i, r in enumerate(routers)]
    model.train()
    model(**batch).logits.sum().backward()
    for h in handles:
        h.remove()
    assert torch.equal(tracker.step_counts, manual)
    top_k = model.config.num_experts_per_tok
    assert tracker.step_counts.sum(-1).tolist() == [real.sum().item() * top_k] * len(routers)

    # Generation (no grad) is not counted: TRL's GRPO generates with the model in training mode.
    with torch.no_grad():
        model(**batch)
    assert torch.equal(tracker.step_counts, manual)

    counts = tracker.end_step()
    assert torch.equal(counts, manual) and tracker.step_counts.sum() == 0


def test_a_backbone_called_alone_counts_only_real_tokens(tiny_base: Path) -> None:
    """TRL's distillation loss calls `model.base_model(...)`, not the model: padding must still be left out of the
    loads (counted, the left padding of its prompts steered the router biases and undid what the student learned),
    and a mask left from an earlier call of another shape must not be used."""
    model, batch = _batch(tiny_base)
    tracker = ExpertLoadTracker(model, MoEBalanceConfig(bias_update_speed=0.0, seq_aux_loss_coef=0.0))
    model.train()
    with torch.no_grad():  # a generation step first: its mask is (3, 1 token longer)
        longer = torch.cat([batch["attention_mask"], torch.ones(3, 1, dtype=torch.long)], dim=1)
        model(input_ids=torch.cat([batch["input_ids"], batch["input_ids"][:, :1]], dim=1), attention_mask=longer)
    model.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state.sum() \
        .backward()
    real_tokens = batch["attention_mask"].sum().item()
    assert real_tokens < batch["attention_mask"].numel()
    assert tracker.step_counts.sum(-1).tolist() == [real_tokens * model.config.num_experts_per_tok] * 3


def test_end_step_moves_biases_against_the_load(tiny_base: Path) -> None:
    model, batch = _batch(tiny_base)
    tracker = ExpertLoadTracker(model, MoEBalanceConfig(bias_update_speed=0.01, seq_aux_loss_coef=0.0))
    model.train()
    model(**batch).logits.sum().backward()
    counts = tracker.end_step()
    for router, load in zip(tracker.routers, counts, strict=True):
        expected = 0.01 * torch.sign(load.mean() - load).float()
        assert torch.allclose(router.e_score_correction_bias, expected)


def test_checkpoint_recomputation_is_not_counted_twice(tiny_base: Path) -> None:
    model, batch = _batch(tiny_base)
    model.gradient_checkpointing_enable()
    model.train()
    tracker = ExpertLoadTracker(model, MoEBalanceConfig(bias_update_speed=0.0, seq_aux_loss_coef=0.0))
    model(**batch).logits.sum().backward()
    real_tokens = batch["attention_mask"].sum().item()
    assert tracker.step_counts.sum(-1).tolist() == [real_tokens * model.config.num_experts_per_tok] * 3


def test_sequence_balance_loss_is_minimal_when_balanced() -> None:
    # 2 experts, top-1. Balanced: each chosen half the time with equal affinity -> f = P = 1/2... L = 1.
    scores = torch.full((1, 4, 2), 0.5)
    topk = torch.tensor([[[0], [1], [0], [1]]])
    assert sequence_balance_loss(scores, topk, None, 1).item() == pytest.approx(1.0)
    # Collapsed onto expert 0 with high affinity: L grows.
    skewed = torch.tensor([[[0.9, 0.1]] * 4])
    collapsed = sequence_balance_loss(skewed, torch.zeros(1, 4, 1, dtype=torch.long), None, 1)
    assert collapsed.item() == pytest.approx(2 * 0.9)
    # Padding is ignored: a padded copy of the balanced batch gives the same value.
    padded = torch.cat([scores, skewed[:, :2]], 1)
    pad_topk = torch.cat([topk, torch.zeros(1, 2, 1, dtype=torch.long)], 1)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
    assert sequence_balance_loss(padded, pad_topk, mask, 1).item() == pytest.approx(1.0)


def test_sequence_balance_loss_reaches_the_router_weights(tiny_base: Path) -> None:
    model, batch = _batch(tiny_base)
    tracker = ExpertLoadTracker(model, MoEBalanceConfig(bias_update_speed=0.0, seq_aux_loss_coef=0.1))
    model.train()
    model(**batch)
    aux = tracker.pop_aux_loss()
    assert aux is not None and aux.item() > 0
    aux.backward()
    assert tracker.routers[0].weight.grad is not None and tracker.routers[0].weight.grad.abs().sum() > 0
    assert tracker.pop_aux_loss() is None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, port: int, base: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    model = load_causal_lm(base)
    tracker = ExpertLoadTracker(model, MoEBalanceConfig(bias_update_speed=0.01, seq_aux_loss_coef=0.0))
    tok = load_tokenizer(base)
    # Each rank routes different tokens; the update must use the summed loads on both.
    text = ["Compute 12+345."] if rank == 0 else ["Compute 999+999. <think>9+9=18</think>", "Compute 5+6."]
    model.train()
    model(**tok(text, return_tensors="pt", padding=True)).logits.sum().backward()
    local = tracker.step_counts.clone()
    counts = tracker.end_step()
    torch.save({"local": local, "global": counts, "bias": tracker.biases(), "diff": tracker.bias_sync_diff()},
               f"{out}/rank{rank}.pt")
    torch.distributed.destroy_process_group()


def test_loads_are_reduced_across_processes_and_biases_stay_identical(tiny_base: Path, tmp_path: Path) -> None:
    mp.spawn(_rank_main, args=(_free_port(), str(tiny_base), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{i}.pt") for i in range(2))
    assert not torch.equal(r0["local"], r1["local"])
    assert torch.equal(r0["global"], r0["local"] + r1["local"]) and torch.equal(r0["global"], r1["global"])
    assert torch.equal(r0["bias"], r1["bias"]) and r0["bias"].abs().sum() > 0
    assert r0["diff"] == 0.0 and r1["diff"] == 0.0
