"""GRPO's weight sync to vLLM in the layout vLLM loads, with everything routing depends on, and drift made visible.

TRL (1.16) pushes the policy to vLLM before each generation that follows an optimizer step
(`VLLMGeneration.sync_weights`: colocate mode calls the engine's `load_weights`, server mode announces
`(name, dtype, shape)` then broadcasts over NCCL). It streams `model.named_parameters()` as they are,
which misses two things for transformers 5 MoE models:

- transformers 5 fuses routed experts (`mlp.experts.gate_up_proj` (E, 2I, H), `mlp.experts.down_proj`),
  while vLLM's MoE loaders map the hub's per-expert names (`mlp.experts.{i}.gate_proj.weight`, ...; Mixtral:
  `block_sparse_moe.experts.{i}.w1.weight`). We send every tensor in the hub layout, converted by transformers'
  own reverse conversion (the one `save_pretrained` applies), so what vLLM receives is what it loaded from disk.
- DeepSeek-V3's `e_score_correction_bias` is a buffer: TRL never sends it, yet our balancing moves it every
  step, so vLLM would keep routing with the starting biases. We send the routing buffers after the parameters.

`vllm_weights(model)` is the whole list one sync sends (what the tests check); `VLLMSyncMixin` puts the same
conversion into TRL's stream, so TRL keeps doing the rest: ZeRO-3/FSDP gathering, peft merge and unmerge,
the server's metadata pass, sleep mode and the prefix-cache reset.

Drift: TRL measures the per-token |log p_trainer - log p_vLLM| of each batch (its importance-sampling
correction); the mixin logs it under `ROLLOUT_LOGP_DIFF` in metrics.jsonl and warns above a threshold.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback

from posttrain.core.run_folder import ROLLOUT_LOGP_DIFF, ROLLOUT_LOGP_DIFF_MAX

log = logging.getLogger("posttrain.vllm")

#: Buffers that decide routing and that vLLM holds as parameters (DeepSeek-V3, GLM-4.5, dots1, ...: vLLM's
#: `gate.e_score_correction_bias`, fp32). Other buffers (rotary `inv_freq`) are derived and never sent.
ROUTING_BUFFERS: tuple[str, ...] = ("e_score_correction_bias",)
#: What TRL's GRPOTrainer logs for the trainer-vs-vLLM log-prob difference (mean and max over tokens).
TRL_LOGP_DIFF = "sampling/sampling_logp_difference/mean"
TRL_LOGP_DIFF_MAX = "sampling/sampling_logp_difference/max"

Named = tuple[str, torch.Tensor]


def base_model(model: nn.Module) -> nn.Module:
    """The transformers model under peft and DDP wrappers (its names are the checkpoint's)."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    if hasattr(model, "get_base_model") and hasattr(model, "peft_config"):
        model = model.get_base_model()
    return model


def checkpoint_layout(model: nn.Module, name: str, tensor: torch.Tensor) -> list[Named]:
    """One trainer tensor as a hub checkpoint holds it: fused experts split per expert, renamed where the
    family renames (Mixtral's `mlp.` -> `block_sparse_moe.`); anything else passes unchanged."""
    from transformers import PreTrainedModel
    from transformers.core_model_loading import revert_weight_conversion

    if not isinstance(model, PreTrainedModel):
        return [(name, tensor)]
    return [(n, t.contiguous()) for n, t in revert_weight_conversion(model, {name: tensor}).items()]


def routing_buffers(model: nn.Module, fix_name: Callable[[str], str] = lambda n: n,
                    device: torch.device | str | None = None) -> list[Named]:
    """The routing buffers of `model` as fp32 tensors (vLLM's bias parameters are fp32), named like its parameters."""
    out = []
    for name, buffer in base_model(model).named_buffers():
        if name.rsplit(".", 1)[-1] in ROUTING_BUFFERS:
            out.append((fix_name(name), buffer.detach().to(device=device or buffer.device, dtype=torch.float32)))
    return out


def to_vllm(model: nn.Module, named: Iterable[Named], fix_name: Callable[[str], str] = lambda n: n,
            device: torch.device | str | None = None) -> Iterator[Named]:
    """A sync's stream: each (name, tensor) of `named` in the checkpoint layout, then the routing buffers.

    Lazy on purpose: under ZeRO-3 TRL gathers one parameter at a time and yields it inside the gather, so each
    tensor is converted before the next one is gathered.
    """
    base = base_model(model)
    for name, tensor in named:
        yield from checkpoint_layout(base, name, tensor)
    yield from routing_buffers(base, fix_name, device)


def vllm_weights(model: nn.Module) -> list[Named]:
    """Every (name, tensor) one weight sync sends to vLLM for this (unsharded) model, in order."""
    base = base_model(model)
    return list(to_vllm(base, ((n, p.detach()) for n, p in base.named_parameters())))


def install_vllm_sync(generation: Any) -> None:
    """Make TRL's `VLLMGeneration` stream `to_vllm` of its own parameter stream (both modes go through it)."""
    if getattr(generation, "_posttrain_sync", False):
        return
    original = generation._iter_named_params

    def fix_name(name: str) -> str:
        return generation._fix_param_name_to_vllm(name, extra_prefixes=["_fsdp_wrapped_module."])

    def iter_named_params() -> Iterator[Named]:
        synced = {}
        for name, tensor in to_vllm(generation.model, original(), fix_name, generation.accelerator.device):
            if name.rsplit(".", 1)[-1] in ROUTING_BUFFERS:
                synced[name] = tensor.detach().clone()
            yield name, tensor
        generation.last_synced_biases = synced  # what vLLM routes with until the next sync (make gpu-check)

    generation._iter_named_params = iter_named_params
    generation._posttrain_sync = True
    generation.last_synced_biases = {}


class LogpDiffCallback(TrainerCallback):
    """Puts TRL's sampling-vs-training log-prob difference under our keys in each logged row (before
    metrics.jsonl is written: the stage adds its metrics callback after this one) and warns above `threshold`."""

    def __init__(self, threshold: float = 0.05) -> None:
        self.threshold = threshold

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
        if logs is not None:  # one warning per step: from the main process only
            record_logp_diff(logs, self.threshold if state.is_world_process_zero else math.inf)


class VLLMSyncMixin:
    """For TRL's GRPOTrainer with `use_vllm`: weights vLLM accepts, router biases at every sync, drift logged.

    Put it before the trainer class; the GRPO stage adds it only when rollouts go to vLLM and sets
    `logp_diff_callback.threshold` from `rollout.max_logp_diff`.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        generation = getattr(self, "vllm_generation", None)
        if generation is not None:
            install_vllm_sync(generation)
            routers = len(routing_buffers(generation.model))
            log.info("vLLM weight sync: hub-layout tensors%s", f" + {routers} router biases" if routers else "")
        # TRL adds its metrics to the logs inside GRPOTrainer.log, after any mixin's log: read them in on_log.
        self.logp_diff_callback = LogpDiffCallback()
        self.add_callback(self.logp_diff_callback)  # type: ignore[attr-defined]


def record_logp_diff(logs: dict[str, Any], threshold: float) -> None:
    """Copy TRL's sampling-vs-training log-prob difference to our stable keys; warn when it exceeds `threshold`."""
    mean = logs.get(TRL_LOGP_DIFF)
    if not isinstance(mean, int | float) or any(k.startswith("eval_") for k in logs):
        return
    logs[ROLLOUT_LOGP_DIFF] = mean
    if isinstance(logs.get(TRL_LOGP_DIFF_MAX), int | float):
        logs[ROLLOUT_LOGP_DIFF_MAX] = logs[TRL_LOGP_DIFF_MAX]
    if mean > threshold:
        log.warning("vLLM rollouts drift from the trainer: mean |log p_trainer - log p_vLLM| = %.4g per token "
                    "(threshold %.4g, rollout.max_logp_diff): check that weights and router biases reach vLLM "
                    "and that both run the same dtype", mean, threshold)
