"""Routers, loads and balancing on every MoE family, not only DeepSeek-V3 (posttrain/core/moe_routers.py)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from posttrain.core.models import load_causal_lm, load_tokenizer
from posttrain.core.moe_routers import Router, declares_experts, find_routers
from posttrain.training.moe_balance import ExpertLoadTracker, MoEBalanceConfig, balancing_plan
from tests.families import FAMILIES, MOE_FAMILIES

#: MoE layers per family in the tiny checkpoints: DeepSeek's first layer is dense.
MOE_LAYERS = {"qwen2_moe": [0, 1], "qwen3_moe": [0, 1], "mixtral": [0, 1], "olmoe": [0, 1], "deepseek_v2": [1],
              "deepseek_v3": [1]}


def _batch(base: Path) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    model = load_causal_lm(str(base))
    tok = load_tokenizer(str(base), padding_side="right")
    batch = tok(["Compute 12+345.", "Compute 1+2. <think>1+2=3</think>", "Compute 999+1."], return_tensors="pt",
                padding=True)
    assert (batch["attention_mask"] == 0).any()  # the test needs real padding
    return model, batch


def test_the_families_are_all_there() -> None:
    assert set(MOE_LAYERS) == set(MOE_FAMILIES)


@pytest.mark.parametrize("name", MOE_FAMILIES)
def test_loads_match_a_manual_count_of_each_familys_router_output(
    name: str, family_base: Callable[[str], Path]
) -> None:
    model, batch = _batch(family_base(name))
    routers = find_routers(model)
    assert [r.layer for r in routers] == MOE_LAYERS[name]
    assert {(r.num_experts, r.top_k, r.logits_index) for r in routers} == {(4, 2, 0)}
    assert {r.scoring for r in routers} == {"sigmoid" if name == "deepseek_v3" else "softmax"}
    tracker = ExpertLoadTracker(model, MoEBalanceConfig(bias_update_speed=0.0, seq_aux_loss_coef=0.0))

    real = batch["attention_mask"].reshape(-1).bool()
    manual = torch.zeros(len(routers), 4, dtype=torch.float64)

    def counter(i: int):  # an independent count: the routers' third output is the chosen experts in every family
        def hook(module, args, output):  # type: ignore[no-untyped-def]
            manual[i] += torch.bincount(output[2].reshape(-1, 2)[real].reshape(-1), minlength=4).double()
        return hook

    handles = [r.module.register_forward_hook(counter(i)) for i, r in enumerate(routers)]
    model.train()
    model(**batch).logits.sum().backward()
    for h in handles:
        h.remove()
    assert torch.equal(tracker.step_counts, manual)  # padding excluded, also where routers see flattened tokens
    assert tracker.step_counts.sum(-1).tolist() == [real.sum().item() * 2] * len(routers)
    with torch.no_grad():  # generation is not counted
        model(**batch)
    assert torch.equal(tracker.step_counts, manual)


@pytest.mark.parametrize("name", ["qwen3_moe", "deepseek_v2"])
def test_the_sequence_wise_loss_reaches_a_softmax_router(name: str, family_base: Callable[[str], Path]) -> None:
    model, batch = _batch(family_base(name))
    tracker = ExpertLoadTracker(model, MoEBalanceConfig(bias_update_speed=0.01, seq_aux_loss_coef=0.1))
    model.train()
    model(**batch)
    aux = tracker.pop_aux_loss()
    assert aux is not None and aux.item() > 0
    aux.backward()
    assert tracker.routers[0].weight.grad is not None and tracker.routers[0].weight.grad.abs().sum() > 0
    # No correction bias to move: the step ends with loads and nothing else.
    assert tracker.biased == [] and tracker.biases().numel() == 0
    assert tracker.end_step().sum() > 0


def test_a_router_that_returns_only_logits_chooses_their_top_k() -> None:
    router = Router("model.layers.3.mlp.gate", nn.Identity(), num_experts=4, top_k=2, logits_index=0)
    logits = torch.tensor([[0.1, 3.0, 2.0, -1.0], [5.0, 0.0, 0.0, 4.0]])
    read, chosen = router.read(logits)
    assert torch.equal(read, logits) and [sorted(r) for r in chosen.tolist()] == [[1, 2], [0, 3]]
    assert router.layer == 3 and router.bias is None


def _plan(model: nn.Module, config: MoEBalanceConfig, aux: bool = False) -> tuple[int, str]:
    tracker = ExpertLoadTracker(model, config)
    try:
        return balancing_plan(model, tracker, config, aux, 0.001 if aux else None)
    finally:
        tracker.remove()


def test_asking_for_the_bias_update_without_a_bias_warns_and_says_what_balances(
    family_base: Callable[[str], Path]
) -> None:
    qwen = load_causal_lm(str(family_base("qwen3_moe")))
    level, message = _plan(qwen, MoEBalanceConfig(bias_update_speed=0.001), aux=True)
    assert level == logging.WARNING
    assert "Qwen3MoeForCausalLM (qwen3_moe) has no router correction bias" in message
    assert "its own auxiliary load-balancing loss (router_aux_loss_coef=0.001" in message
    # The default asks for nothing: the same facts at INFO.
    level, message = _plan(qwen, MoEBalanceConfig(), aux=True)
    assert level == logging.INFO and "(the default) changes nothing" in message

    v2 = load_causal_lm(str(family_base("deepseek_v2")))
    level, message = _plan(v2, MoEBalanceConfig(bias_update_speed=0.01))
    assert level == logging.WARNING and "DeepseekV2ForCausalLM" in message
    assert "sequence-wise balance loss" in message and "transformers computes no auxiliary loss" in message

    v3 = load_causal_lm(str(family_base("deepseek_v3")))
    level, message = _plan(v3, MoEBalanceConfig(bias_update_speed=0.001))
    assert level == logging.INFO and "router-bias update (bias_update_speed=0.001)" in message

    dense = load_causal_lm(str(family_base("llama")))
    assert _plan(dense, MoEBalanceConfig(bias_update_speed=0.001)) == (
        logging.INFO, "LlamaForCausalLM (llama) is dense: no MoE balancing or expert-load metrics")


def test_an_moe_whose_routers_are_unknown_is_a_warning() -> None:
    class Config:
        model_type = "custom_moe"
        num_experts = 8

    class Custom(nn.Module):
        config = Config()

        def __init__(self) -> None:
            super().__init__()
            self.gate = nn.Linear(4, 8)

    assert declares_experts(Custom())
    level, message = _plan(Custom(), MoEBalanceConfig())
    assert level == logging.WARNING and "no router module was found" in message and "Custom (custom_moe)" in message


def test_dense_families_have_no_routers(family_base: Callable[[str], Path]) -> None:
    for name in [n for n in FAMILIES if n not in MOE_FAMILIES]:
        model = load_causal_lm(str(family_base(name)))
        assert find_routers(model) == [] and not declares_experts(model)
