"""LoRA on a DeepSeek-V3 MoE, with targets that mean what the user asked for.

peft's usual names (`gate_proj`, `up_proj`, `down_proj`) land on the fused routed experts only and
silently skip the dense MLP of the first layers and the shared experts. Here the recipe names
*parts* of the model; we build explicit targets for each and check afterwards what peft wrapped.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from posttrain.core.errors import StageError

log = logging.getLogger("posttrain.lora")

Part = Literal["attention", "dense_mlp", "shared_experts", "routed_experts"]

#: Module-name patterns (full match) per part, for nn.Linear layers.
_MODULE_PATTERNS: dict[str, str] = {
    "attention": r".*\.self_attn\.(q_proj|q_a_proj|q_b_proj|kv_a_proj_with_mqa|kv_b_proj|o_proj)",
    # A dense layer's MLP projections sit directly under `mlp`; MoE layers have `mlp.shared_experts.*`.
    "dense_mlp": r".*\.layers\.\d+\.mlp\.(gate_proj|up_proj|down_proj)",
    "shared_experts": r".*\.mlp\.shared_experts\.(gate_proj|up_proj|down_proj)",
}
#: Fused 3-D expert parameters (peft `target_parameters`).
_ROUTED_PARAMETERS = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]


class LoraSpec(BaseModel):
    """Recipe section `lora:` of an SFT stage."""

    model_config = ConfigDict(extra="forbid")

    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    targets: list[Part] = Field(default_factory=lambda: ["attention", "dense_mlp", "shared_experts", "routed_experts"],
                                min_length=1)


def lora_config(spec: LoraSpec) -> Any:
    from peft import LoraConfig

    patterns = [_MODULE_PATTERNS[p] for p in spec.targets if p in _MODULE_PATTERNS]
    return LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=f"({'|'.join(patterns)})" if patterns else [],
        target_parameters=_ROUTED_PARAMETERS if "routed_experts" in spec.targets else None,
        task_type="CAUSAL_LM",
    )


def targeted_parts(model: Any) -> dict[str, list[str]]:
    """What peft really wrapped, grouped by part: {part: [module names]}."""
    found: dict[str, list[str]] = {"attention": [], "dense_mlp": [], "shared_experts": [], "routed_experts": []}
    for name, module in model.named_modules():
        if not hasattr(module, "lora_A") or name.endswith(".base_layer"):
            continue
        clean = name.replace("base_model.model.", "")
        if re.search(r"\.mlp\.experts(\.|$)", clean):
            found["routed_experts"].append(clean)
            continue
        for part, pattern in _MODULE_PATTERNS.items():
            if re.fullmatch(pattern, clean):
                found[part].append(clean)
    return found


def apply_lora(model: Any, spec: LoraSpec) -> Any:
    """Wrap `model` with LoRA on the requested parts; fail if a requested part exists but got nothing."""
    from peft import get_peft_model

    present = _parts_present(model)
    with _without_v4_target_conversion(model):
        peft_model = get_peft_model(model, lora_config(spec))
    found = targeted_parts(peft_model)
    summary = ", ".join(f"{p}: {len(found[p])}" for p in spec.targets)
    log.info("LoRA r=%d alpha=%d on %s", spec.r, spec.alpha, summary)
    missing = [p for p in spec.targets if present[p] and not found[p]]
    if missing:
        raise StageError(f"LoRA: requested {missing} but peft wrapped none of those modules ({summary})")
    skipped = [p for p in spec.targets if not present[p]]
    if skipped:
        log.info("LoRA: this model has no %s", ", ".join(skipped))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in peft_model.parameters())
    log.info("LoRA: %.3fM trainable of %.3fM parameters", trainable / 1e6, total / 1e6)
    return peft_model


@contextlib.contextmanager
def _without_v4_target_conversion(model: Any) -> Iterator[None]:
    """peft (>= 0.18, transformers 5) rewrites *every* `gate_proj/up_proj/down_proj` target of a DeepSeek-V3 onto
    the fused routed experts, to load adapters trained on transformers 4. It keys that shim on
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


def _parts_present(model: Any) -> dict[str, bool]:
    names = [n for n, _ in model.named_modules()]
    present = {p: any(re.fullmatch(pat, n) for n in names) for p, pat in _MODULE_PATTERNS.items()}
    present["routed_experts"] = any(re.search(r"\.mlp\.experts$", n) for n in names)
    return present
