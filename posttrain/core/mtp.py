"""DeepSeek-V3's multi-token prediction (MTP) module (V3 report §2.2), kept in DeepSeek-V3's checkpoint layout.

Depth k = 1..D predicts token i+k+1 at position i from the previous depth's hidden state h^{k-1}_i
(h^0: the main model's final, normed hidden state) and the embedding of token i+k:

    h'^k_i = eh_proj([enorm(Emb(t_{i+k})); hnorm(h^{k-1}_i)])   (embedding first, as DeepSeek's released
                                                                  checkpoint and vLLM order it)
    h^k    = Block_k(h'^k)                                       (one DeepSeek-V3 decoder layer, causal)
    P^k    = softmax(Head(shared_head.norm(h^k)))

The embedding and the output head are the main model's own (shared, as in V3). The depth-k module sits in
the main model's `model.layers` list at index `num_hidden_layers + k - 1`, where DeepSeek-V3's checkpoint puts
it: `DeepseekV3Model.forward` runs only `layers[:num_hidden_layers]`, so the main model computes exactly what it
did before, the optimizer sees the new parameters, and `save_pretrained` (final models and trainer
checkpoints alike) writes them as `model.layers.{N}.eh_proj`, `.enorm`, `.hnorm`, `.shared_head.norm`,
`.shared_head.head` (a copy of the head, added by a state-dict hook: vLLM's MTP drafter reads it there) and
the block's usual names — the layout vLLM's `mtp` speculative method loads. The embedding is not repeated
(vLLM shares the target model's). transformers drops these keys on load; `restore_mtp` puts them back.

Base layer: imports torch and transformers only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3DecoderLayer, DeepseekV3RMSNorm

from posttrain.core.compat import with_cache

log = logging.getLogger("posttrain.training.mtp")

#: Model types whose MTP module this file builds (DeepSeek-V3's decoder layer and checkpoint layout).
SUPPORTED_MODEL_TYPES = ("deepseek_v3",)


class SharedHead(nn.Module):
    """`shared_head.norm`; the head itself is the main model's `lm_head` (a copy is saved under `.head`)."""

    def __init__(self, config: Any):
        super().__init__()
        self.norm = DeepseekV3RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any) -> None:
        # The saved copy of the shared head is not a parameter here: the main model's lm_head is.
        state_dict.pop(prefix + "head.weight", None)
        super()._load_from_state_dict(state_dict, prefix, *args)


class MTPLayer(DeepseekV3DecoderLayer):
    """One MTP depth: the two norms, the projection of their concatenation and a DeepSeek-V3 decoder block.

    A subclass of the decoder layer, so that the block's parameters have the names DeepSeek-V3's checkpoint
    gives them (`model.layers.{N}.self_attn...`, `.mlp...`), not a nested `mtp_block.` prefix.
    """

    def __init__(self, config: Any, layer_idx: int):
        super().__init__(config, layer_idx)
        self.enorm = DeepseekV3RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.hnorm = DeepseekV3RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.eh_proj = nn.Linear(2 * config.hidden_size, config.hidden_size, bias=False)
        self.shared_head = SharedHead(config)

    def forward(  # type: ignore[override]
        self,
        hidden_states: torch.Tensor,
        inputs_embeds: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: Any = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """h^k from h^{k-1} (`hidden_states`) and the embeddings of the tokens k places ahead."""
        x = self.eh_proj(torch.cat([self.enorm(inputs_embeds), self.hnorm(hidden_states)], dim=-1))
        parent = super().forward
        return parent(x, attention_mask=attention_mask, position_ids=position_ids, use_cache=cache is not None,
                      position_embeddings=position_embeddings, **with_cache(parent, cache), **kwargs)

    def logits(self, hidden_states: torch.Tensor, head: nn.Module) -> torch.Tensor:
        """Next-token logits of this depth through the shared output head."""
        return head(self.shared_head.norm(hidden_states))

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any) -> None:
        # DeepSeek-V3's checkpoint repeats the (shared) embedding in the MTP layer; we use the main model's.
        state_dict.pop(prefix + "embed_tokens.weight", None)
        super()._load_from_state_dict(state_dict, prefix, *args)


# --------------------------------------------------------------------------------------------------
# Which models have it


def mtp_depth(config: Any) -> int:
    """D, the number of MTP depths the config declares (`num_nextn_predict_layers`; 0 when absent)."""
    return int(getattr(config, "num_nextn_predict_layers", 0) or 0)


def supports_mtp(model: Any) -> bool:
    """Whether this file can build an MTP module for `model` (a DeepSeek-V3-architecture causal LM)."""
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) not in SUPPORTED_MODEL_TYPES or not hasattr(model, "get_decoder"):
        return False
    return getattr(model, "get_output_embeddings", lambda: None)() is not None  # a causal LM (it has a head)


def mtp_layers(model: Any) -> list[MTPLayer]:
    """The model's MTP depths in order (empty when it has none)."""
    if not supports_mtp(model):
        return []
    layers = model.get_decoder().layers
    return [m for m in list(layers)[model.config.num_hidden_layers:] if isinstance(m, MTPLayer)]


def has_mtp(model: Any) -> bool:
    return bool(mtp_layers(model))


def attach_mtp(model: Any, depth: int | None = None) -> list[MTPLayer]:
    """Append freshly initialised MTP depths (default: the config's `num_nextn_predict_layers`) to `model`.

    Idempotent: depths already there are kept. Sets `config.num_nextn_predict_layers` to the depth built,
    so that a saved model says it has them.
    """
    if not supports_mtp(model):
        raise ValueError(f"MTP is built for DeepSeek-V3-architecture models ({', '.join(SUPPORTED_MODEL_TYPES)}); "
                         f"got model_type {getattr(model.config, 'model_type', None)!r}")
    config = model.config
    depth = mtp_depth(config) if depth is None else depth
    layers = model.get_decoder().layers
    n = config.num_hidden_layers
    if len(layers) < n:
        raise ValueError(f"model has {len(layers)} decoder layers, its config says {n}")
    ref = next(model.parameters())
    for k in range(len(mtp_layers(model)), depth):
        layer = MTPLayer(config, n + k)
        for module in layer.modules():
            model._init_weights(module)
        _cast_like(layer, ref.dtype, getattr(model, "_keep_in_fp32_modules_strict", None) or [])
        layers.append(layer.to(ref.device))
    config.num_nextn_predict_layers = max(depth, mtp_depth(config))
    _register_hooks(model)
    return mtp_layers(model)


def _cast_like(layer: nn.Module, dtype: torch.dtype, keep_fp32: list[str]) -> None:
    """Cast to the model's dtype, except what transformers keeps in fp32 (the router and its bias)."""
    for name, tensor in [*layer.named_parameters(), *layer.named_buffers()]:
        if tensor.is_floating_point() and not any(k in name for k in keep_fp32):
            tensor.data = tensor.data.to(dtype)


def _register_hooks(model: Any) -> None:
    if not getattr(model, "_posttrain_mtp_hooks", False):
        model.register_state_dict_post_hook(_save_shared_head)
        model._posttrain_mtp_hooks = True


def _save_shared_head(module: Any, state_dict: dict, prefix: str, local_metadata: Any) -> None:
    """Add `model.layers.{N+k}.shared_head.head.weight` (a copy: safetensors refuses aliases) for vLLM."""
    head = module.get_output_embeddings()
    if head is None:
        return
    for layer in mtp_layers(module):
        key = f"{prefix}model.layers.{layer.self_attn.layer_idx}.shared_head.head.weight"
        state_dict[key] = head.weight.detach().clone()


# --------------------------------------------------------------------------------------------------
# Forward for training


def mtp_hidden_states(model: Any, hidden: torch.Tensor, input_ids: torch.Tensor,
                      attention_mask: torch.Tensor | None = None,
                      position_ids: torch.Tensor | None = None) -> list[torch.Tensor]:
    """h^1..h^D at every position (B, T, H each), from the main model's last hidden state `hidden`.

    Depth k at position i reads token i+k; the last k positions read padding and are never targets.
    The block attends causally over the same positions (and padding) as the main model did.
    """
    from transformers.masking_utils import create_causal_mask

    decoder = model.get_decoder()
    embed = model.get_input_embeddings()
    batch, length = input_ids.shape
    if position_ids is None:
        position_ids = torch.arange(length, device=input_ids.device).unsqueeze(0).expand(batch, -1)
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    mask = create_causal_mask(config=model.config, inputs_embeds=hidden, attention_mask=attention_mask,
                              position_ids=position_ids, **with_cache(create_causal_mask, None))
    position_embeddings = decoder.rotary_emb(hidden, position_ids)
    out = []
    h = hidden
    for k, layer in enumerate(mtp_layers(model), 1):
        ahead = torch.nn.functional.pad(input_ids[:, k:], (0, k), value=pad)
        h = layer(h, embed(ahead), position_embeddings=position_embeddings, attention_mask=mask,
                  position_ids=position_ids)
        out.append(h)
    return out


def mtp_loss(model: Any, hidden: torch.Tensor, input_ids: torch.Tensor, labels: torch.Tensor,
             attention_mask: torch.Tensor | None = None,
             position_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, list[dict[str, float]]] | None:
    """Mean over depths of the MTP cross-entropy, and per depth its loss, accuracy and token count.

    `labels` are aligned with `input_ids` (-100 where there is no target, as TRL builds them): depth k at
    position i is scored on labels[i+k+1]. With `position_ids` (packed rows) a target in another sequence
    than its position is dropped. None when no depth has a target.
    """
    head = model.get_output_embeddings()
    losses, stats = [], []
    for k, h in enumerate(mtp_hidden_states(model, hidden, input_ids, attention_mask, position_ids), 1):
        target = torch.nn.functional.pad(labels[:, k + 1:], (0, k + 1), value=-100)
        valid = target != -100
        if position_ids is not None:
            ahead = torch.nn.functional.pad(position_ids[:, k + 1:], (0, k + 1), value=-1)
            valid &= ahead == position_ids + k + 1
        if not valid.any():
            continue
        logits = mtp_layers(model)[k - 1].logits(h[valid], head).float()
        loss = torch.nn.functional.cross_entropy(logits, target[valid])
        losses.append(loss)
        stats.append({"loss": float(loss.detach()), "tokens": int(valid.sum()),
                      "correct": int((logits.detach().argmax(-1) == target[valid]).sum())})
    if not losses:
        return None
    return torch.stack(losses).mean(), stats


# --------------------------------------------------------------------------------------------------
# Loading


@contextlib.contextmanager
def quiet_mtp_keys(config: Any) -> Iterator[None]:
    """While loading a DeepSeek-V3 model with `from_pretrained`: do not report its MTP layers' keys as
    unexpected (transformers only silences layer 61, the full-size model's); `restore_mtp` loads them after."""
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3PreTrainedModel

    depth = mtp_depth(config)
    if getattr(config, "model_type", None) not in SUPPORTED_MODEL_TYPES or depth < 1:
        yield
        return
    n = config.num_hidden_layers
    cls = DeepseekV3PreTrainedModel
    before = cls.__dict__.get("_keys_to_ignore_on_load_unexpected")
    indices = "|".join(str(n + k) for k in range(depth))
    cls._keys_to_ignore_on_load_unexpected = [*(before or []), rf"model\.layers\.({indices})\."]
    try:
        yield
    finally:
        if before is None:
            del cls._keys_to_ignore_on_load_unexpected
        else:
            cls._keys_to_ignore_on_load_unexpected = before


def restore_mtp(model: Any, name_or_path: str, **hub_kwargs: Any) -> bool:
    """Put back the MTP depths that `from_pretrained` dropped, from the checkpoint's own files.

    Works for our saved models and for a DeepSeek-V3 checkpoint (per-expert weights are fused the way
    transformers keeps them). Returns whether the model now has MTP. A config that declares depths whose
    weights the checkpoint lacks gets none (a warning says so): an untrained draft would only slow decoding.
    """
    depth = mtp_depth(getattr(model, "config", None))
    if depth < 1 or not supports_mtp(model) or has_mtp(model):
        return has_mtp(model)
    n = model.config.num_hidden_layers
    tensors = _read_layers(name_or_path, [n + k for k in range(depth)], hub_kwargs)
    if not tensors:
        log.warning("%s: config declares %d MTP layer(s) but the checkpoint has no weights for them; "
                    "loading without MTP", name_or_path, depth)
        return False
    found = sorted(tensors)
    if found != list(range(n, n + len(found))):
        raise ValueError(f"{name_or_path}: MTP layers {found} are not consecutive from {n}")
    layers = attach_mtp(model, len(found))
    for layer, index in zip(layers, found, strict=True):
        state = _fuse_experts(tensors[index], layer)
        head = state.pop("shared_head.head.weight", None)
        main_head = model.get_output_embeddings().weight
        if head is not None and not torch.equal(head.to(main_head), main_head):
            log.warning("%s: MTP layer %d has its own output head; using the shared one (lm_head), as DeepSeek-V3 "
                        "does", name_or_path, index)
        state.pop("embed_tokens.weight", None)
        ref = dict(layer.state_dict())
        missing = sorted(set(ref) - set(state))
        unexpected = sorted(set(state) - set(ref))
        if missing or unexpected:
            raise ValueError(f"{name_or_path}: MTP layer {index}: missing {missing[:5]}, unexpected {unexpected[:5]}")
        layer.load_state_dict({k: v.to(ref[k].dtype) for k, v in state.items()})
    log.info("%s: restored %d MTP layer(s)", name_or_path, len(found))
    return True


def _read_layers(name_or_path: str, indices: list[int],
                 hub_kwargs: dict[str, Any]) -> dict[int, dict[str, torch.Tensor]]:
    """{layer index: {key under `model.layers.{index}.`: tensor}} from the checkpoint's safetensors files."""
    from safetensors import safe_open

    pattern = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
    wanted = set(indices)
    out: dict[int, dict[str, torch.Tensor]] = {}
    for file, keys in _weight_files(name_or_path, wanted, hub_kwargs):
        with safe_open(file, framework="pt") as f:
            for key in keys if keys is not None else f.keys():
                m = pattern.match(key)
                if m and int(m.group(1)) in wanted:
                    if key.endswith("_scale_inv") or key.endswith(".scale"):
                        raise ValueError(f"{name_or_path}: MTP weight {key} is quantized; load a dequantized "
                                         "(bf16) checkpoint to keep the MTP module")
                    out.setdefault(int(m.group(1)), {})[m.group(2)] = f.get_tensor(key)
    return out


def _weight_files(name_or_path: str, wanted: set[int],
                  hub_kwargs: dict[str, Any]) -> list[tuple[str, list[str] | None]]:
    """The safetensors files that may hold layers `wanted`, with their keys when an index lists them."""
    def layer_of(key: str) -> int | None:
        m = re.match(r"^model\.layers\.(\d+)\.", key)
        return int(m.group(1)) if m else None

    local = Path(name_or_path)
    index_name, single = "model.safetensors.index.json", "model.safetensors"
    if local.is_dir():
        index = local / index_name
        resolve = (lambda f: str(local / f)) if index.exists() else None
        index_path = str(index) if index.exists() else None
        single_path = str(local / single) if (local / single).exists() else None
    else:
        from transformers.utils import cached_file

        kw = {k: v for k, v in hub_kwargs.items() if k in ("revision", "token", "cache_dir", "local_files_only")}
        index_path = cached_file(name_or_path, index_name, _raise_exceptions_for_missing_entries=False, **kw)

        def resolve(f: str) -> str:
            return str(cached_file(name_or_path, f, **kw))

        single_path = None if index_path else cached_file(name_or_path, single,
                                                          _raise_exceptions_for_missing_entries=False, **kw)
    if index_path:
        weight_map: dict[str, str] = json.loads(Path(index_path).read_text())["weight_map"]
        by_file: dict[str, list[str]] = {}
        for key, file in weight_map.items():
            if layer_of(key) in wanted:
                by_file.setdefault(file, []).append(key)
        assert resolve is not None
        return [(resolve(file), keys) for file, keys in by_file.items()]
    return [(str(single_path), None)] if single_path else []


def _fuse_experts(state: dict[str, torch.Tensor], layer: MTPLayer) -> dict[str, torch.Tensor]:
    """Per-expert `mlp.experts.{e}.{gate,up,down}_proj.weight` -> transformers' fused `gate_up_proj`/`down_proj`."""
    pattern = re.compile(r"^mlp\.experts\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")
    experts: dict[str, dict[int, torch.Tensor]] = {}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        m = pattern.match(key)
        if m:
            experts.setdefault(m.group(2), {})[int(m.group(1))] = value
        else:
            out[key] = value
    if experts:
        count = getattr(getattr(layer.mlp, "experts", None), "num_experts", None)
        for part, got in experts.items():
            if count is None or sorted(got) != list(range(count)):
                raise ValueError(f"MTP layer: experts {sorted(got)[:8]}... for {part}, expected {count}")
        gate, up, down = (experts[p] for p in ("gate_proj", "up_proj", "down_proj"))
        out["mlp.experts.gate_up_proj"] = torch.stack([torch.cat([gate[e], up[e]], 0) for e in range(count)])
        out["mlp.experts.down_proj"] = torch.stack([down[e] for e in range(count)])
    return out
