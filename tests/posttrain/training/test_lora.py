"""LoRA by part for every family, by the family's own module names (posttrain/training/lora.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from posttrain.core.errors import StageError
from posttrain.core.models import load_causal_lm
from posttrain.training.lora import PARTS, LoraSpec, apply_lora, find_targets, targeted_parts
from tests.families import FAMILIES

# Wrapped modules per part in the 2-layer checkpoints: attention q/k/v/o (MLA: q, kv_a, kv_b, o) per layer,
# gate/up/down per dense MLP or shared expert, one fused-experts module per MoE layer.
EXPECTED: dict[str, dict[str, int]] = {
    "llama": {"attention": 8, "dense_mlp": 6},
    "qwen2": {"attention": 8, "dense_mlp": 6},
    "qwen3": {"attention": 8, "dense_mlp": 6},
    "gemma": {"attention": 8, "dense_mlp": 6},
    "qwen2_moe": {"attention": 8, "shared_experts": 6, "routed_experts": 2},
    "qwen3_moe": {"attention": 8, "routed_experts": 2},
    "mixtral": {"attention": 8, "routed_experts": 2},
    "olmoe": {"attention": 8, "routed_experts": 2},
    "deepseek_v2": {"attention": 8, "dense_mlp": 3, "shared_experts": 3, "routed_experts": 1},
    "deepseek_v3": {"attention": 8, "dense_mlp": 3, "shared_experts": 3, "routed_experts": 1},
}


def test_every_family_is_covered() -> None:
    assert set(EXPECTED) == set(FAMILIES)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_default_targets_wrap_every_part_the_family_has(name: str, family_base: Callable[[str], Path]) -> None:
    wrapped = targeted_parts(apply_lora(load_causal_lm(str(family_base(name))), LoraSpec(r=2, alpha=4)))
    assert {p: len(v) for p, v in wrapped.items() if v} == EXPECTED[name]
    names = [n for v in wrapped.values() for n in v]
    # Routers and Qwen2-MoE's shared-expert gate are never adapted; neither are embeddings or the head.
    assert not any(n.endswith((".gate", "shared_expert_gate", "lm_head", "embed_tokens")) for n in names)


@pytest.mark.parametrize("name", [n for n in FAMILIES if set(EXPECTED[n]) != set(PARTS)])  # DeepSeek has them all
def test_a_named_part_the_family_lacks_is_an_error_naming_both(name: str, family_base: Callable[[str], Path]) -> None:
    model = load_causal_lm(str(family_base(name)))
    absent = [p for p in PARTS if p not in EXPECTED[name]]
    arch = type(model).__name__
    with pytest.raises(StageError, match=rf"LoRA: {arch} \({FAMILIES[name].model_type}\) has no {absent[0]}"):
        apply_lora(model, LoraSpec(r=2, targets=["attention", absent[0]]))


@pytest.mark.parametrize(("name", "part", "module"), [
    ("qwen2_moe", "shared_experts", "model.layers.1.mlp.shared_expert.down_proj"),
    ("deepseek_v2", "dense_mlp", "model.layers.0.mlp.up_proj"),
    ("mixtral", "routed_experts", "model.layers.0.mlp.experts"),
    ("gemma", "dense_mlp", "model.layers.1.mlp.gate_proj"),
])
def test_one_part_alone_wraps_only_it(name: str, part: str, module: str, family_base: Callable[[str], Path]) -> None:
    wrapped = targeted_parts(apply_lora(load_causal_lm(str(family_base(name))), LoraSpec(r=2, targets=[part])))
    assert module in wrapped[part]
    assert all(not v for p, v in wrapped.items() if p != part)


def test_fused_experts_are_merged_into_the_saved_weights(family_base: Callable[[str], Path], tmp_path: Path) -> None:
    base = family_base("qwen3_moe")
    model = apply_lora(load_causal_lm(str(base)), LoraSpec(r=2, alpha=4, targets=["routed_experts", "attention"]))
    with torch.no_grad():  # a trained adapter: B is no longer zero
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    merged = model.merge_and_unload()
    merged.save_pretrained(tmp_path)
    reloaded, start = load_causal_lm(str(tmp_path)).state_dict(), load_causal_lm(str(base)).state_dict()
    assert not any("lora" in k for k in reloaded)
    for key in ("model.layers.0.mlp.experts.gate_up_proj", "model.layers.1.self_attn.q_proj.weight"):
        assert not torch.equal(reloaded[key], start[key]), key
    assert torch.equal(reloaded["model.layers.1.mlp.gate.weight"], start["model.layers.1.mlp.gate.weight"])


def test_targets_come_from_the_module_tree(family_base: Callable[[str], Path]) -> None:
    targets = find_targets(load_causal_lm(str(family_base("deepseek_v3"))))
    assert "model.layers.0.self_attn.kv_a_proj_with_mqa" in targets["attention"].modules
    assert targets["routed_experts"].parameters == ["model.layers.1.mlp.experts.gate_up_proj",
                                                    "model.layers.1.mlp.experts.down_proj"]
    assert targets["shared_experts"].modules == [f"model.layers.1.mlp.shared_experts.{p}"
                                                 for p in ("gate_proj", "up_proj", "down_proj")]
