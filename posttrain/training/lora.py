"""LoRA by *part* of the model, for every family, with targets that mean what the user asked for.

peft's usual names (`gate_proj`, `up_proj`, `down_proj`) mean different things per family: on a dense
model the MLP, on DeepSeek-V2/V3 the dense first layers *and* the shared experts, and on transformers 5's
MoEs (which fuse routed experts into 3-D `experts.gate_up_proj` / `experts.down_proj` parameters) peft
even rewrites them onto those fused experts. So the recipe names parts, and the targets are found in the
model's own module tree:

- `attention`: every `nn.Linear` under a layer's attention (`self_attn`: q/k/v/o, MLA's q_a/q_b/kv_a/kv_b);
- `dense_mlp`: the `nn.Linear`s directly under a layer's `mlp` when it has no experts (Llama, Gemma, Qwen2/3,
  DeepSeek-V2/V3's first dense layers);
- `shared_experts`: the `nn.Linear`s under `mlp.shared_expert` (Qwen2-MoE) or `mlp.shared_experts` (DeepSeek);
- `routed_experts`: the fused 3-D expert parameters (peft `target_parameters`), or per-expert `nn.Linear`s
  where a model keeps them unfused.

Routers (`mlp.gate`, Qwen2-MoE's `shared_expert_gate`) are never wrapped. After wrapping, what peft really
wrapped is checked part by part; a part the recipe names that this model does not have is an error naming
the model and the part (the default, every part, takes the parts the model has).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from posttrain.core.errors import StageError

log = logging.getLogger("posttrain.training.lora")

Part = Literal["attention", "dense_mlp", "shared_experts", "routed_experts"]
PARTS: tuple[str, ...] = ("attention", "dense_mlp", "shared_experts", "routed_experts")

_ATTENTION = {"self_attn", "attn", "attention", "self_attention", "linear_attn"}
_MLP = {"mlp", "feed_forward", "ffn", "block_sparse_moe"}
_SHARED = {"shared_expert", "shared_experts", "shared_mlp"}


class LoraSpec(BaseModel):
    """Recipe section `lora:` of a trainer stage."""

    model_config = ConfigDict(extra="forbid")

    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    #: Parts to adapt. Left out: every part this model has. Named: each must exist in the model.
    targets: list[Part] = Field(default_factory=lambda: list(PARTS), min_length=1)


@dataclass
class PartTargets:
    """What one part is made of in a given model: `nn.Linear` module names and 3-D expert parameter names."""

    modules: list[str] = field(default_factory=list)
    parameters: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.modules or self.parameters)


def part_of(name: str) -> str | None:
    """The part a (wrapped or plain) module name belongs to, from its path inside a decoder layer.

    >>> part_of("model.layers.0.self_attn.kv_b_proj"), part_of("model.layers.3.mlp.shared_expert.up_proj")
    ('attention', 'shared_experts')
    >>> part_of("model.layers.1.mlp.experts"), part_of("model.layers.0.mlp.down_proj"), part_of("lm_head")
    ('routed_experts', 'dense_mlp', None)
    """
    parts = name.replace("base_model.model.", "").split(".")
    layer = next((i for i, p in enumerate(parts) if p.isdigit() and i > 0), None)
    if layer is None:
        return None
    inner = parts[layer + 1:]
    if len(inner) < 2:
        return None
    if any(p in _ATTENTION for p in inner[:-1]):
        return "attention"
    if any(p in _SHARED for p in inner[:-1]):
        return "shared_experts"
    if "experts" in inner:
        return "routed_experts"
    if len(inner) == 2 and inner[0] in _MLP:
        return "dense_mlp"
    return None


def find_targets(model: Any) -> dict[str, PartTargets]:
    """Each part's modules and fused expert parameters in this model (empty where the family has none)."""
    from torch import nn

    modules = dict(model.named_modules())
    found = {p: PartTargets() for p in PARTS}
    for name, module in modules.items():
        if isinstance(module, nn.Linear):
            part = part_of(name)
            container = modules.get(name.rpartition(".")[0])
            if part == "dense_mlp" and container is not None and hasattr(container, "experts"):
                continue  # a router or a shared-expert gate directly under an MoE block
            if part is not None:
                found[part].modules.append(name)
        elif name.rpartition(".")[2] == "experts" and part_of(name) == "routed_experts":
            # ZeRO-3 loads partitioned: a parameter is then an empty stand-in, its real shape in `ds_shape`.
            found["routed_experts"].parameters += [f"{name}.{p}" for p, t in module.named_parameters(recurse=False)
                                                   if len(getattr(t, "ds_shape", t.shape)) == 3]
    return found


def lora_config(spec: LoraSpec, targets: dict[str, PartTargets], task_type: str = "CAUSAL_LM") -> Any:
    """peft's `LoraConfig` for the parts `spec` asks for, with this model's own module and parameter names."""
    from peft import LoraConfig

    modules = [n for p in spec.targets for n in targets[p].modules]
    parameters = [n for p in spec.targets for n in targets[p].parameters]
    return LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout, target_modules=modules,
                      target_parameters=parameters or None, task_type=task_type)


def targeted_parts(model: Any) -> dict[str, list[str]]:
    """What peft really wrapped, grouped by part: {part: [module names]}."""
    found: dict[str, list[str]] = {p: [] for p in PARTS}
    for name, module in model.named_modules():
        if not hasattr(module, "lora_A") or name.endswith(".base_layer"):
            continue
        part = part_of(name)
        if part is not None:
            found[part].append(name.replace("base_model.model.", ""))
    return found


def apply_lora(model: Any, spec: LoraSpec, task_type: str = "CAUSAL_LM") -> Any:
    """Wrap `model` with LoRA on the requested parts; a named part the model lacks, or one peft wrapped nothing
    of, is a `StageError` naming the model and the part."""
    from peft import get_peft_model

    from posttrain.core.moe_routers import family_name

    name = family_name(model)
    targets = find_targets(model)
    have = [p for p in PARTS if targets[p]]
    absent = [p for p in spec.targets if not targets[p]]
    if absent and "targets" in spec.model_fields_set:
        raise StageError(f"LoRA: {name} has no {' or '.join(absent)} (its parts: {', '.join(have) or 'none found'}); "
                         "remove it from lora.targets")
    wanted = spec.model_copy(update={"targets": [p for p in spec.targets if targets[p]]})
    if not wanted.targets:
        raise StageError(f"LoRA: found none of {spec.targets} in {name}: nothing to adapt")
    if absent:
        log.info("LoRA: %s has no %s", name, ", ".join(absent))
    with _without_v4_target_conversion(model):
        peft_model = get_peft_model(model, lora_config(wanted, targets, task_type))
    found = targeted_parts(peft_model)
    summary = ", ".join(f"{p}: {len(found[p])}" for p in wanted.targets)
    log.info("LoRA r=%d alpha=%d on %s", spec.r, spec.alpha, summary)
    missing = [p for p in wanted.targets if not found[p]]
    if missing:
        raise StageError(f"LoRA: {name}: requested {missing} but peft wrapped none of those modules ({summary})")
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in peft_model.parameters())
    log.info("LoRA: %.3fM trainable of %.3fM parameters", trainable / 1e6, total / 1e6)
    return peft_model


@contextlib.contextmanager
def _without_v4_target_conversion(model: Any) -> Iterator[None]:
    """peft (>= 0.18, transformers 5) rewrites *every* `gate_proj/up_proj/down_proj` (Mixtral: `w1/w2/w3`) target of
    an MoE it knows onto the fused routed experts, to load adapters trained on transformers 4. It keys that shim on
    `config.model_type`; hiding the type while injecting keeps our explicit targets as they are."""
    config = model.config
    had_own = "model_type" in vars(config)
    original = config.model_type
    config.model_type = f"{original}-posttrain-lora"
    try:
        yield
    finally:
        if had_own:
            config.model_type = original
        else:
            del config.model_type
#: For trainers that apply `lora_config` themselves (TRL's `peft_config`): keep our targets as they are.
keep_lora_targets = _without_v4_target_conversion
