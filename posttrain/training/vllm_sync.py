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

The MTP drafter (DeepSeek-V3's multi-token prediction module, `rollout.speculative`): vLLM's main-model loader
drops the MTP layers' tensors (`model.layers.{N}.*`, N >= num_hidden_layers), so they never go in TRL's stream. A
rollout server started with `--speculative-config '{"method": "mtp", ...}'` (`posttrain rollout-server` adds it)
gets them after each sync through vLLM 0.31's draft-model update, which TRL never selects: `/start_draft_weight_update`
(the worker retargets its weight-transfer engine at the drafter), the same NCCL stream, `/finish_weight_update`. So
the drafter follows the policy and its acceptance, read from the server's `/metrics` at every logged step
(`MTP_ACCEPTANCE`), does not decay. TRL's colocated engine is built without speculative decoding: nothing to update.
"""

from __future__ import annotations

import logging
import math
import re
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback

from posttrain.core.generation.vllm import spec_decode_counts
from posttrain.core.mtp import mtp_depth
from posttrain.core.run_folder import MTP_ACCEPTANCE, ROLLOUT_LOGP_DIFF, ROLLOUT_LOGP_DIFF_MAX

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


def mtp_prefixes(model: nn.Module) -> tuple[str, ...]:
    """Name prefixes of the model's MTP layers (`model.layers.{N}.`, N >= num_hidden_layers), as checkpoints and
    vLLM's `get_spec_layer_idx_from_weight_name` name them; () without MTP."""
    config = getattr(base_model(model), "config", None)
    n = getattr(config, "num_hidden_layers", None)
    return tuple(f"model.layers.{n + k}." for k in range(mtp_depth(config))) if isinstance(n, int) else ()


def install_vllm_sync(generation: Any) -> None:
    """Make TRL's `VLLMGeneration` stream `to_vllm` of its own parameter stream (both modes go through it), without
    the MTP layers (the drafter's, sent by `sync_draft` when the server drafts)."""
    if getattr(generation, "_posttrain_sync", False):
        return
    original = generation._iter_named_params
    draft = mtp_prefixes(generation.model)

    def fix_name(name: str) -> str:
        return generation._fix_param_name_to_vllm(name, extra_prefixes=["_fsdp_wrapped_module."])

    def iter_named_params() -> Iterator[Named]:
        synced = {}
        for name, tensor in to_vllm(generation.model, original(), fix_name, generation.accelerator.device):
            if draft and name.startswith(draft):
                continue  # vLLM's main-model loader drops the MTP layers
            if name.rsplit(".", 1)[-1] in ROUTING_BUFFERS:
                synced[name] = tensor.detach().clone()
            yield name, tensor
        generation.last_synced_biases = synced  # what vLLM routes with until the next sync (make gpu-check)

    def draft_params() -> Iterator[Named]:
        """The MTP layers' tensors in the checkpoint layout (every process iterates: ZeRO-3 gathers)."""
        model = generation.model
        if hasattr(model, "peft_config") or generation._dist.is_fsdp:
            stream: Iterable[Named] = original()  # TRL's own walk merges adapters and gathers shards
        else:
            stream = _gathered(generation, [(n, p) for n, p in model.named_parameters()
                                            if generation._fix_param_name_to_vllm(n).startswith(draft)])
        named = ((fix_name(n), t) for n, t in stream)
        for name, tensor in to_vllm(model, ((n, t) for n, t in named if n.startswith(draft)), fix_name,
                                    generation.accelerator.device):
            if name.startswith(draft):
                yield name, tensor

    sync_main = generation.sync_weights

    def sync_weights() -> None:
        sync_main()
        if getattr(generation, "posttrain_drafts", False):
            sync_draft(generation, draft_params)

    generation._iter_named_params = iter_named_params
    generation.sync_weights = sync_weights
    generation._posttrain_sync = True
    generation.last_synced_biases = {}


def _gathered(generation: Any, named: Iterable[tuple[str, nn.Parameter]]) -> Iterator[Named]:
    for name, param in named:
        with generation._dist.gather_params([param]):
            yield name, param.data


#: vLLM 0.31's dev-mode endpoint that points the next weight update at the speculative draft model.
START_DRAFT_UPDATE = "/start_draft_weight_update"


def sync_draft(generation: Any, draft_params: Callable[[], Iterator[Named]]) -> None:
    """Send the MTP layers to the rollout server's drafter through vLLM's draft-model update (server mode only)."""
    if getattr(generation, "_draft_metadata", None) is None:  # announced before the broadcast, as TRL does
        generation._draft_metadata = [(n, str(t.dtype).removeprefix("torch."), list(t.shape))
                                      for n, t in draft_params()]
    client = getattr(generation, "vllm_client", None)
    if not generation.accelerator.is_main_process or client is None or not server_drafts(generation):
        for _ in draft_params():  # take part in the gathers
            pass
        return
    client._post(f"{client.base_url}{START_DRAFT_UPDATE}", json={})
    client._updating_weights = True  # one session: TRL's update_named_params neither starts nor finishes it
    try:
        client.update_named_params(generation._draft_metadata, draft_params())
    finally:
        client._updating_weights = False
        client._finish_weight_update()


def server_drafts(generation: Any) -> bool:
    """Whether the rollout server runs speculative decoding with an MTP drafter (asked once; warns when not)."""
    if getattr(generation, "_server_drafts", None) is None:
        config = generation.vllm_client.get_server_info().get("speculative_config") or {}
        method = config.get("method") if isinstance(config, dict) else None
        generation._server_drafts = method in ("mtp", "deepseek_mtp")
        if not generation._server_drafts:
            log.warning("rollout.speculative: the rollout server drafts with %s, not the MTP module: start it with "
                        "`posttrain rollout-server` (it adds --speculative-config) for the drafter to follow the "
                        "policy", method or "nothing")
    return bool(generation._server_drafts)


class LogpDiffCallback(TrainerCallback):
    """Puts TRL's sampling-vs-training log-prob difference under our keys in each logged row (before
    metrics.jsonl is written: the stage adds its metrics callback after this one) and warns above `threshold`."""

    def __init__(self, threshold: float = 0.05) -> None:
        self.threshold = threshold

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
        if logs is not None:  # one warning per step: from the main process only
            record_logp_diff(logs, self.threshold if state.is_world_process_zero else math.inf)


class DraftAcceptanceCallback(TrainerCallback):
    """Puts the rollout server's MTP draft acceptance since the last logged step under `MTP_ACCEPTANCE` in each
    logged row, from vLLM's Prometheus counters at `{base_url}/metrics` (summed over its engines)."""

    def __init__(self, base_url: str) -> None:
        self.url = base_url.rstrip("/") + "/metrics"
        self.last = self.read() or (0, 0)

    def read(self) -> tuple[int, int] | None:
        """(drafted, accepted) tokens so far, or None when the server does not answer."""
        try:
            with urllib.request.urlopen(self.url, timeout=5) as response:
                text = response.read().decode()
        except OSError as exc:
            log.debug("draft acceptance: %s: %s", self.url, exc)
            return None
        return spec_decode_counts(_prometheus_samples(text))

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
        if logs is None or any(k.startswith("eval_") for k in logs) or (now := self.read()) is None:
            return
        drafted, accepted = now[0] - self.last[0], now[1] - self.last[1]
        self.last = now
        if drafted > 0:
            logs[MTP_ACCEPTANCE] = round(accepted / drafted, 5)


_SAMPLE = re.compile(r"^(?P<name>[A-Za-z_:][\w:]*)(?:\{[^}]*\})?\s+(?P<value>\S+)")


def _prometheus_samples(text: str) -> Iterator[tuple[str, float]]:
    """(counter name without `_total`, value) of each sample in Prometheus' text format."""
    for line in text.splitlines():
        if (m := _SAMPLE.match(line)) is not None:
            try:
                yield m.group("name").removesuffix("_total"), float(m.group("value"))
            except ValueError:
                continue


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

    def setup_draft_sync(self, speculative: Any) -> bool:
        """`rollout.speculative` with vLLM rollouts: in server mode, keep the server's MTP drafter on the policy's
        MTP layers after every sync and log its acceptance; TRL's colocated engine does not draft."""
        generation = getattr(self, "vllm_generation", None)
        if generation is None or speculative is None or not speculative.mtp:
            return False
        if generation.mode != "server":
            log.warning("rollout.speculative: TRL's colocated vLLM engine runs no drafter; rollouts decode plainly "
                        "(rollout.mode: server drafts with the MTP module)")
            return False
        if not mtp_prefixes(generation.model):
            log.warning("rollout.speculative: the policy has no MTP module; the rollout server has nothing to draft "
                        "with")
            return False
        generation.posttrain_drafts = True
        client = getattr(generation, "vllm_client", None)
        if client is not None:  # the main process
            self.add_callback(DraftAcceptanceCallback(client.base_url))  # type: ignore[attr-defined]
        log.info("vLLM weight sync: the MTP layers go to the rollout server's drafter after each sync")
        return True


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
