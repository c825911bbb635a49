"""Where each MoE family routes, and what its router's forward returns: the facts balancing and metrics need.

transformers (5.x) names every MoE family's router itself: a model class's `_can_record_outputs["router_logits"]`
is an `OutputRecorder(RouterClass, index=i)`, the module whose output (element i) is the router logits it
collects for `output_router_logits`. So one rule covers all of them (Qwen2-MoE, Qwen3-MoE, Mixtral, OLMoE,
DeepSeek-V2/V3, and the rest transformers ships) instead of a list of class names per family:

| family      | router (`mlp.gate`)    | forward returns                      | correction bias        |
|-------------|------------------------|--------------------------------------|------------------------|
| DeepSeek-V3 | DeepseekV3TopkRouter   | logits, top-k weights, top-k indices | yes (sigmoid scores)   |
| DeepSeek-V2 | DeepseekV2TopkRouter   | logits, top-k weights, top-k indices | none (softmax scores)  |
| Qwen2/3-MoE | Qwen{2,3}MoeTopKRouter | logits, top-k weights, top-k indices | none (softmax scores)  |
| Mixtral     | MixtralTopKRouter      | logits, top-k weights, top-k indices | none (softmax scores)  |
| OLMoE       | OlmoeTopKRouter        | logits, top-k weights, top-k indices | none (softmax scores)  |

Which experts a token went to is read from the output itself (the integer tensor of width top-k) and, for a
router that returns only logits, is the top-k of the logits. A model without that registry (remote code, or
DeepSeek-V2 in transformers 5.17, the `vllm` extra's release, which registers no router for it) falls back to a
router's shape: a module with `top_k` and either DeepSeek-V3's `e_score_correction_bias` or a weight of one row
per routed expert.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

_EXPERT_COUNT = ("num_experts", "n_routed_experts", "num_local_experts", "moe_num_experts")
_TOP_K = ("top_k", "num_experts_per_tok", "topk", "moe_topk")


@dataclass
class Router:
    """One MoE layer's router: its module, expert count, top-k, and where its logits are in the output."""

    name: str
    module: nn.Module
    num_experts: int
    top_k: int
    #: Position of the router logits in a tuple output (None: no logits, e.g. remote code returning indices).
    logits_index: int | None

    @property
    def bias(self) -> torch.Tensor | None:
        """DeepSeek-V3's `e_score_correction_bias` (added to the scores for top-k selection only), if any."""
        bias = getattr(self.module, "e_score_correction_bias", None)
        return bias if isinstance(bias, torch.Tensor) else None

    @property
    def scoring(self) -> str:
        """How affinities come from logits: sigmoid for bias-corrected (DeepSeek-V3-style) routers, else softmax."""
        return "sigmoid" if self.bias is not None else "softmax"

    @property
    def layer(self) -> int | None:
        """Decoder layer number from the module name (`model.layers.<n>.mlp.gate`)."""
        parts = self.name.split(".")
        if "layers" in parts and parts.index("layers") + 1 < len(parts):
            with_index = parts[parts.index("layers") + 1]
            return int(with_index) if with_index.isdigit() else None
        return None

    def read(self, output: Any) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(logits (T, E) or None, chosen experts (T, top_k)) from the router's forward output."""
        items = list(output) if isinstance(output, tuple | list) else [output]
        logits = None
        if self.logits_index is not None and self.logits_index < len(items):
            candidate = items[self.logits_index]
            if isinstance(candidate, torch.Tensor) and candidate.is_floating_point():
                logits = candidate.reshape(-1, candidate.shape[-1])
        chosen = next((t for t in items if isinstance(t, torch.Tensor) and not t.is_floating_point()
                       and t.dim() >= 1 and t.shape[-1] == self.top_k), None)
        if chosen is None:
            if logits is None:
                raise ValueError(f"router {self.name}: its output has neither top-k indices nor logits")
            chosen = logits.topk(self.top_k, dim=-1).indices
        return logits, chosen.reshape(-1, chosen.shape[-1])


def find_routers(model: nn.Module) -> list[Router]:
    """Every MoE router in `model` (through DDP/peft wrappers), in module order; [] for a dense model."""
    recorders = _router_recorders(model)
    config = getattr(model, "config", None)
    found: list[Router] = []
    seen: set[int] = set()
    for name, module in model.named_modules():
        if id(module) in seen:
            continue
        matched, index = _match(name, module, recorders)
        if not matched:
            if recorders or not _router_shaped(module, config):
                continue
            index = None if _returns_indices_first(module) else 0
        seen.add(id(module))
        found.append(Router(name, module, _count(module, config, _EXPERT_COUNT), _count(module, config, _TOP_K),
                            index))
    return [r for r in found if r.num_experts > 0 and r.top_k > 0]


def declares_experts(model: nn.Module) -> bool:
    """Whether the model's config says it is an MoE (so finding no router is worth a warning)."""
    config = getattr(model, "config", None)
    if config is None:
        return False
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return any(isinstance(getattr(text, k, None), int) and getattr(text, k) > 1 for k in _EXPERT_COUNT)


def family_name(model: nn.Module) -> str:
    """`Qwen3MoeForCausalLM (qwen3_moe)`: how a message names the user's model."""
    inner = model
    while hasattr(inner, "module") and isinstance(inner.module, nn.Module):
        inner = inner.module
    if hasattr(inner, "get_base_model"):
        inner = inner.get_base_model()
    config = getattr(inner, "config", None)
    model_type = getattr(config, "model_type", None)
    return f"{type(inner).__name__} ({model_type})" if model_type else type(inner).__name__


def _router_recorders(model: nn.Module) -> list[tuple[type, int, str | None]]:
    """(router class, index of the logits in its output, layer-name suffix) from every `_can_record_outputs`."""
    out: list[tuple[type, int, str | None]] = []
    for module in model.modules():
        spec = getattr(type(module), "_can_record_outputs", None)
        if not isinstance(spec, dict) or "router_logits" not in spec:
            continue
        rec = spec["router_logits"]
        for r in rec if isinstance(rec, list | tuple) else [rec]:
            if isinstance(r, type):
                out.append((r, 0, None))
            elif isinstance(getattr(r, "target_class", None), type):
                out.append((r.target_class, int(getattr(r, "index", 0) or 0), getattr(r, "layer_name", None)))
    return list(dict.fromkeys(out))


def _match(name: str, module: nn.Module, recorders: list[tuple[type, int, str | None]]) -> tuple[bool, int | None]:
    """(whether `module` is a router the model registers, the index of the logits in its output)."""
    for cls, index, layer_name in recorders:
        if isinstance(module, cls) and (layer_name is None or name.endswith(layer_name)):
            return True, index
    return False, None


def _router_shaped(module: nn.Module, config: Any) -> bool:
    """A router transformers does not register: `top_k`, and a correction bias or a weight of one row per expert."""
    if not hasattr(module, "top_k"):
        return False
    if hasattr(module, "e_score_correction_bias"):
        return True
    weight = getattr(module, "weight", None)
    experts = next((getattr(_text(config), k) for k in _EXPERT_COUNT
                    if isinstance(getattr(_text(config), k, None), int)), None)
    return isinstance(weight, torch.Tensor) and weight.dim() == 2 and experts is not None and weight.shape[0] == experts


def _returns_indices_first(module: nn.Module) -> bool:
    """DeepSeek's remote-code `MoEGate` returns (topk_idx, topk_weight): no logits to read."""
    return type(module).__name__ == "MoEGate"


def _count(module: nn.Module, config: Any, keys: tuple[str, ...]) -> int:
    for source in (module, getattr(module, "config", None), _text(config)):
        for key in keys:
            value = getattr(source, key, None) if source is not None else None
            if isinstance(value, int) and not isinstance(value, bool):
                return value
    if keys is _EXPERT_COUNT and isinstance(getattr(module, "weight", None), torch.Tensor):
        return int(module.weight.shape[0])
    return 0


def _text(config: Any) -> Any:
    return config.get_text_config() if config is not None and hasattr(config, "get_text_config") else config
