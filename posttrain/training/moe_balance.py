"""DeepSeek-V3's auxiliary-loss-free load balancing, and expert-load metrics (MaxVio).

Each routed expert i has a bias b_i added to its affinity for top-k *selection* only (gate weights
use the unbiased scores). transformers keeps it as `e_score_correction_bias` but never updates it;
after every optimizer step we do, as in the DeepSeek-V3 report:

    b_i <- b_i + gamma * sign(mean_load - load_i)

with loads counted on the global batch (summed over gradient-accumulation micro-batches and
all-reduced across processes, so every rank applies the same update). Optionally the complementary
sequence-wise balance loss L = alpha * sum_i f_i * P_i is added to the training loss.

Expert loads and MaxVio are measured on every MoE family transformers ships (routers found by
`posttrain.core.moe_routers`); the bias update applies where the router has DeepSeek-V3's bias, and the
sequence-wise loss to any router that returns logits (sigmoid scores where there is a bias, softmax
elsewhere: for DeepSeek-V2 that is its expert-level balance loss). Families without a bias are balanced
by their own auxiliary loss where transformers computes one; `balancing_plan` says which applies.

Loads are counted by forward hooks on the routers, in training forward passes only: TRL's GRPO
generates with the model in training mode, so `module.training` is not enough; we count only
passes with autograd recording, and skip activation-checkpointing recomputation in backward.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from transformers import TrainerCallback

from posttrain.core import moe_routers
from posttrain.core.run_folder import MAX_VIOLATION, load_key, max_violation_key

log = logging.getLogger("posttrain.training.moe_balance")


class MoEBalanceConfig(BaseModel):
    """Recipe section `moe_balance:` of SFT and GRPO stages."""

    model_config = ConfigDict(extra="forbid")

    #: gamma, the bias update speed (0.001 in the DeepSeek-V3 report; 0 turns the update off).
    bias_update_speed: float = Field(0.001, ge=0)
    #: alpha, weight of the sequence-wise balance loss (tiny by default; 0 turns it off).
    seq_aux_loss_coef: float = Field(0.0001, ge=0)


def find_routers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every MoE router, for any family transformers ships (see `posttrain.core.moe_routers`)."""
    return [(r.name, r.module) for r in moe_routers.find_routers(model)]


def max_violation(load: torch.Tensor) -> torch.Tensor:
    """MaxVio = (max_i load_i - mean load) / mean load, over the last dimension."""
    mean = load.float().mean(-1)
    return (load.float().max(-1).values - mean) / mean.clamp_min(1e-9)


def bias_update(bias: torch.Tensor, load: torch.Tensor, speed: float) -> torch.Tensor:
    """New bias: b + speed * sign(mean(load) - load). Overloaded experts go down, underloaded go up."""
    return bias + speed * torch.sign(load.float().mean() - load.float()).to(bias.dtype)


def sequence_balance_loss(
    scores: torch.Tensor, topk: torch.Tensor, mask: torch.Tensor | None, top_k: int
) -> torch.Tensor:
    """DeepSeek-V3's sequence-wise balance loss (without alpha), averaged over sequences.

    scores: (B, S, E) sigmoid affinities; topk: (B, S, K) chosen experts; mask: (B, S) real tokens.
    f_i = E / (K T) * #tokens choosing i;  P_i = mean_t s_i,t / sum_j s_j,t;  L = sum_i f_i P_i.
    """
    num_experts = scores.shape[-1]
    m = torch.ones(scores.shape[:2], device=scores.device) if mask is None else mask.to(scores.dtype)
    tokens = m.sum(1).clamp_min(1.0)  # (B,)
    chosen = torch.zeros_like(scores).scatter_(-1, topk, 1.0) * m.unsqueeze(-1)
    f = chosen.sum(1) * num_experts / (top_k * tokens.unsqueeze(-1))
    normalized = scores / scores.sum(-1, keepdim=True).clamp_min(1e-9)
    p = (normalized * m.unsqueeze(-1)).sum(1) / tokens.unsqueeze(-1)
    return (f.detach() * p).sum(-1).mean()


class ExpertLoadTracker:
    """Counts tokens per routed expert per MoE layer from router hooks, and owns the bias update."""

    def __init__(self, model: nn.Module, config: MoEBalanceConfig):
        self.config = config
        self.specs = moe_routers.find_routers(model)
        self.routers = [r.module for r in self.specs]
        self.layer_names = [r.name for r in self.specs]
        self.num_experts = max((r.num_experts for r in self.specs), default=0)
        #: Routers with DeepSeek-V3's correction bias: the only ones the bias update can move.
        self.biased = [r for r in self.specs if r.bias is not None]
        self.step_counts = torch.zeros(len(self.routers), self.num_experts, dtype=torch.float64)
        self._mask: torch.Tensor | None = None
        self._aux_losses: list[torch.Tensor] = []
        self._handles: list[Any] = []
        top = _unwrap(model)
        # The padding mask is read where the backbone is called, which every forward passes through: TRL's
        # distillation loss calls the backbone alone (`base_model`), and a pad-blind count would steer the router
        # biases by where padding is routed.
        backbone = getattr(top, "base_model", top)
        self._handles.append(backbone.register_forward_pre_hook(self._capture_mask, with_kwargs=True))
        for i, router in enumerate(self.routers):
            self._handles.append(router.register_forward_hook(self._make_hook(i)))

    @property
    def enabled(self) -> bool:
        return bool(self.routers)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    # -- hooks ------------------------------------------------------------------------------------
    def _capture_mask(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        mask = kwargs.get("attention_mask")
        self._mask = mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None

    def _make_hook(self, index: int) -> Any:
        spec = self.specs[index]

        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            if not _is_training_forward():
                return
            logits, chosen = spec.read(output)
            tokens = chosen.shape[0]
            # Routers see (batch, seq, hidden) or, in most families, the flattened (tokens, hidden).
            mask = self._mask if self._mask is not None and self._mask.numel() == tokens else None
            hidden = args[0] if args else None
            if mask is not None:
                batch, seq = mask.shape
            elif isinstance(hidden, torch.Tensor) and hidden.dim() == 3 and hidden.shape[0] * hidden.shape[1] == tokens:
                batch, seq = hidden.shape[0], hidden.shape[1]
            else:
                batch, seq = 1, tokens
            flat = chosen.detach()
            if mask is not None:
                flat = flat[mask.reshape(-1).bool()]
            flat = flat.reshape(-1)
            counts = torch.bincount(flat[flat < self.num_experts], minlength=self.num_experts)
            self.step_counts[index] += counts.to(self.step_counts.device, torch.float64)
            if self.config.seq_aux_loss_coef > 0 and logits is not None:
                scores = logits.float().sigmoid() if spec.scoring == "sigmoid" else logits.float().softmax(-1)
                self._aux_losses.append(sequence_balance_loss(scores.view(batch, seq, -1), chosen.view(batch, seq, -1),
                                                              mask, spec.top_k))

        return hook

    # -- per step ---------------------------------------------------------------------------------
    def pop_aux_loss(self) -> torch.Tensor | None:
        """alpha * mean over MoE layers of the sequence-wise loss of the forward passes since the last call."""
        if not self._aux_losses:
            return None
        loss = torch.stack(self._aux_losses).mean() * self.config.seq_aux_loss_coef
        self._aux_losses.clear()
        return loss

    def end_step(self) -> torch.Tensor:
        """Reduce this step's loads across processes, update the biases, reset; return the loads (L, E)."""
        counts = self.step_counts.clone()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            reduced = counts.to(device=_device(self.routers[0]), dtype=torch.float32)
            torch.distributed.all_reduce(reduced)
            counts = reduced.to("cpu", torch.float64)
        self.step_counts.zero_()
        self._aux_losses.clear()
        speed = self.config.bias_update_speed
        if speed > 0 and counts.sum() > 0:
            with torch.no_grad():
                for spec, load in zip(self.specs, counts, strict=True):
                    bias = spec.bias
                    if bias is not None:
                        bias.copy_(bias_update(bias, load[:bias.shape[0]].to(bias.device), speed))
        return counts

    def biases(self) -> torch.Tensor:
        """(routers with a correction bias, experts); empty for families without one."""
        if not self.biased:
            return torch.zeros(0, self.num_experts)
        return torch.stack([r.bias.detach().float().cpu() for r in self.biased])  # type: ignore[union-attr]

    def bias_sync_diff(self) -> float:
        """Max |bias_rank - bias_rank0| over processes: the update must keep every rank identical."""
        if not self.biased or not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return 0.0
        mine = self.biases().to(_device(self.routers[0]))
        gathered = [torch.zeros_like(mine) for _ in range(torch.distributed.get_world_size())]
        torch.distributed.all_gather(gathered, mine)
        return max(float((g - gathered[0]).abs().max()) for g in gathered)


class MoEBalanceCallback(TrainerCallback):
    """Updates router biases after each optimizer step and collects MaxVio/load metrics for logging."""

    def __init__(self, tracker: ExpertLoadTracker):
        self.tracker = tracker
        self._violations: list[torch.Tensor] = []
        self._loads = torch.zeros(len(tracker.routers), tracker.num_experts, dtype=torch.float64)
        #: Largest bias difference between processes at the end of training (0.0 when in sync).
        self.bias_sync_max_diff: float = 0.0

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        counts = self.tracker.end_step()
        if counts.sum() > 0:
            self._violations.append(max_violation(counts))
            self._loads += counts

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.bias_sync_max_diff = self.tracker.bias_sync_diff()

    def pop_metrics(self) -> dict[str, Any]:
        """Metrics for the steps since the last call (mean MaxVio per layer, load fractions per layer)."""
        if not self._violations:
            return {}
        per_layer = torch.stack(self._violations).mean(0)
        out: dict[str, Any] = {MAX_VIOLATION: round(float(per_layer.mean()), 5)}
        for i, v in enumerate(per_layer.tolist()):
            out[max_violation_key(self._layer_index(i))] = round(v, 5)
        fractions = self._loads / self._loads.sum(-1, keepdim=True).clamp_min(1)
        for i, row in enumerate(fractions.tolist()):
            out[load_key(self._layer_index(i))] = [round(x, 5) for x in row]
        if self.tracker.biased:
            out["moe/bias_abs_mean"] = round(float(self.tracker.biases().abs().mean()), 6)
        self._violations.clear()
        self._loads.zero_()
        return out

    def _layer_index(self, i: int) -> int:
        """Decoder layer number from the router's module name (model.layers.<n>.mlp.gate)."""
        layer = self.tracker.specs[i].layer
        return i if layer is None else layer


class MoEBalanceMixin:
    """For a transformers Trainer subclass: adds the sequence-wise loss and merges MoE metrics into logs.

    Put it before the trainer class: `class MySFT(MoEBalanceMixin, SFTTrainer)`, then call
    `self.setup_moe_balance(config)` after `__init__`.
    """

    moe_callback: MoEBalanceCallback | None = None

    def setup_moe_balance(self, config: MoEBalanceConfig) -> ExpertLoadTracker | None:
        """Hook the routers (any MoE family) and say, at INFO or WARNING, what balances this model's experts."""
        model = self.model  # type: ignore[attr-defined]
        tracker = ExpertLoadTracker(model, config)
        level, message = balancing_plan(model, tracker, config, getattr(self, "aux_loss_enabled", False),
                                        getattr(self, "router_aux_loss_coef", None))
        log.log(level, message)
        if not tracker.enabled:
            tracker.remove()
            return None
        self.moe_callback = MoEBalanceCallback(tracker)
        self.add_callback(self.moe_callback)  # type: ignore[attr-defined]
        return tracker

    def compute_loss(self, model: Any, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        out = super().compute_loss(model, inputs, *args, **kwargs)  # type: ignore[misc]
        aux = self.moe_callback.tracker.pop_aux_loss() if self.moe_callback else None
        if aux is None:
            return out
        if isinstance(out, tuple):
            return (out[0] + aux.to(out[0].device), *out[1:])
        return out + aux.to(out.device)

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if self.moe_callback is not None and not any(k.startswith("eval_") for k in logs):
            logs.update(self.moe_callback.pop_metrics())
        super().log(logs, *args, **kwargs)  # type: ignore[misc]


def balancing_plan(model: nn.Module, tracker: ExpertLoadTracker, config: MoEBalanceConfig, aux_loss: bool,
                   aux_coef: float | None) -> tuple[int, str]:
    """(log level, message): what balances this model's experts during this stage.

    The bias update needs DeepSeek-V3's `e_score_correction_bias`; a family without one (Qwen2/3-MoE, Mixtral,
    OLMoE, DeepSeek-V2) is balanced by its own auxiliary loss where transformers computes one (TRL turns it on
    in training forwards when the config has `router_aux_loss_coef`), and by posttrain's sequence-wise loss
    (`seq_aux_loss_coef`). A recipe that sets `bias_update_speed` > 0 for such a model gets a WARNING naming the
    model and what applies instead; with the default it is an INFO line (the recipe asked for nothing).
    """
    name = moe_routers.family_name(model)
    if not tracker.enabled:
        if moe_routers.declares_experts(model):
            return logging.WARNING, (f"{name}: the config declares experts, but no router module was found (none "
                                     "registered in transformers' `_can_record_outputs`, none with "
                                     "`e_score_correction_bias`): no expert-load metrics and no bias update")
        return logging.INFO, f"{name} is dense: no MoE balancing or expert-load metrics"
    speed, alpha = config.bias_update_speed, config.seq_aux_loss_coef
    applies = []
    if tracker.biased and speed > 0:
        applies.append(f"the aux-loss-free router-bias update (bias_update_speed={speed:g})")
    if aux_loss:
        coef = f"={aux_coef:g}" if aux_coef is not None else ""
        applies.append(f"its own auxiliary load-balancing loss (router_aux_loss_coef{coef}, router logits on in "
                       "training forwards only)")
    if alpha > 0 and any(r.logits_index is not None for r in tracker.specs):
        scoring = "/".join(sorted({r.scoring for r in tracker.specs}))
        applies.append(f"posttrain's sequence-wise balance loss (seq_aux_loss_coef={alpha:g}, on {scoring} scores)")
    what = "; ".join(applies) if applies else ("nothing (moe_balance.seq_aux_loss_coef adds a balance loss; so does "
                                               "trl.router_aux_loss_coef where the TRL config has it)")
    shape = f"{len(tracker.specs)} routed layers x {tracker.num_experts} experts"
    if not tracker.biased and not aux_loss:
        config_ = getattr(model, "config", None)
        text = config_.get_text_config() if hasattr(config_, "get_text_config") else config_
        what += (" (its own auxiliary loss is off in this stage)" if hasattr(text, "router_aux_loss_coef")
                 else " (transformers computes no auxiliary loss for this family)")
    if speed > 0 and not tracker.biased:
        asked = "bias_update_speed" in config.model_fields_set
        setting = f"moe_balance.bias_update_speed={speed:g}" + ("" if asked else " (the default)")
        return (logging.WARNING if asked else logging.INFO), (
            f"{name} has no router correction bias (DeepSeek-V3's e_score_correction_bias), so {setting} changes "
            f"nothing; balancing its experts ({shape}): {what}")
    return logging.INFO, f"MoE balancing for {name} ({shape}): {what}"


def _device(module: nn.Module) -> torch.device:
    for t in (*module.parameters(), *module.buffers()):
        return t.device
    return torch.device("cpu")


def _is_training_forward() -> bool:
    """Autograd is recording and we are not inside backward (activation-checkpointing recomputation)."""
    return torch.is_grad_enabled() and torch._C._current_graph_task_id() == -1


def _unwrap(model: nn.Module) -> nn.Module:
    """The module whose forward receives `attention_mask` (through DDP / peft wrappers)."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    return model
