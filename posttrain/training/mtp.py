"""Multi-token prediction in the trainer stages: train DeepSeek-V3's MTP module, and draft GRPO rollouts with it.

`MTPMixin` (every trainer stage, like `MoEBalanceMixin`) adds λ · (1/D) Σ_k CE_k, the V3 report's MTP loss
(§2.2.2), to the stage's loss whenever the model has an MTP module (`posttrain/core/mtp.py`): SFT on its
labels, GRPO on its own rollouts' completion tokens, so the draft keeps up with the policy it drafts for.
The main model's last hidden states are taken from a forward hook on its decoder (training passes only), so
TRL's loss code is untouched. Logged: `mtp/loss` (mean over depths of the cross-entropy) and `mtp/accuracy`
(how often depth 1 predicts the token after next: the draft's greedy acceptance on training data).

GRPO's rollouts drafted by the MTP module are the decode loop's (`posttrain/training/rollouts.py`).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from posttrain.core.run_folder import MTP_ACCURACY, MTP_LOSS, mtp_depth_key

log = logging.getLogger("posttrain.training.mtp")


class MTPConfig(BaseModel):
    """Recipe section `mtp:` of trainer stages (used only when the model has an MTP module)."""

    model_config = ConfigDict(extra="forbid")

    #: λ, the MTP loss weight (DeepSeek-V3: 0.3, then 0.1 for the last part of pre-training); 0 turns it off.
    weight: float = Field(0.1, ge=0)


class HiddenCapture:
    """Keeps (input_ids, attention_mask, position_ids, last_hidden_state) of the decoder's training passes."""

    def __init__(self, decoder: torch.nn.Module):
        self.calls: list[tuple[torch.Tensor, Any, Any, torch.Tensor]] = []
        self.active = False
        self.handle = decoder.register_forward_hook(self._hook, with_kwargs=True)

    def _hook(self, module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        if not self.active or not torch.is_grad_enabled() or torch._C._current_graph_task_id() != -1:
            return  # not in compute_loss, a no-grad pass, or activation-checkpointing recomputation
        ids = kwargs.get("input_ids", args[0] if args else None)
        hidden = getattr(output, "last_hidden_state", None)
        if isinstance(ids, torch.Tensor) and hidden is not None:
            self.calls.append((ids, kwargs.get("attention_mask"), kwargs.get("position_ids"), hidden))

    def pop(self) -> tuple[torch.Tensor, Any, Any, torch.Tensor] | None:
        """The captured passes as one batch (TRL may split a batch into chunks of the same length)."""
        calls, self.calls = self.calls, []
        if not calls or len({c[0].shape[1] for c in calls}) > 1:
            return None
        if len(calls) == 1:
            return calls[0]

        def cat(i: int) -> Any:
            parts = [c[i] for c in calls]
            if any(p is None for p in parts):
                return None
            if any(p.shape[0] != c[0].shape[0] for p, c in zip(parts, calls, strict=True)):
                return None  # e.g. position_ids broadcast over the batch: recomputed from scratch
            return torch.cat(parts)

        return cat(0), cat(1), cat(2), cat(3)


class MTPMixin:
    """For a transformers Trainer subclass: adds the MTP loss and logs its metrics; call `setup_mtp` after init."""

    mtp_config: MTPConfig | None = None
    _mtp_capture: HiddenCapture | None = None

    def setup_mtp(self, config: MTPConfig) -> bool:
        """Turn the MTP loss on when the model has an MTP module and λ > 0."""
        from posttrain.core.mtp import has_mtp, mtp_layers

        model = unwrap_model(self.model)  # type: ignore[attr-defined]
        if not has_mtp(model):
            return False
        if config.weight == 0:
            log.info("MTP module present, loss weight 0: it is not trained in this stage")
            return False
        self.mtp_config = config
        self._mtp_capture = HiddenCapture(model.get_decoder())
        self._mtp_sums: dict[int, list[float]] = {}
        log.info("MTP: %d depth(s), loss weight %g", len(mtp_layers(model)), config.weight)
        return True

    def compute_loss(self, model: Any, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        capture = self._mtp_capture
        if capture is None or self.mtp_config is None:
            return super().compute_loss(model, inputs, *args, **kwargs)  # type: ignore[misc]
        capture.active = True
        try:
            out = super().compute_loss(model, inputs, *args, **kwargs)  # type: ignore[misc]
        finally:
            capture.active = False
        captured = capture.pop()
        if captured is None:
            return out
        from posttrain.core.mtp import mtp_loss

        ids, mask, positions, hidden = captured
        labels = _labels(inputs, ids, mask)
        result = mtp_loss(unwrap_model(model), hidden, ids, labels, mask if isinstance(mask, torch.Tensor) else None,
                          positions if isinstance(positions, torch.Tensor) else None)
        if result is None:
            return out
        loss, stats = result
        for depth, s in enumerate(stats, 1):
            sums = self._mtp_sums.setdefault(depth, [0.0, 0.0, 0.0])
            sums[0] += s["loss"] * s["tokens"]
            sums[1] += s["tokens"]
            sums[2] += s["correct"]
        extra = self.mtp_config.weight * loss * self._mtp_ga_scale(args, kwargs)
        if isinstance(out, tuple):
            return (out[0] + extra.to(out[0].device), *out[1:])
        return out + extra.to(out.device)

    def _mtp_ga_scale(self, args: tuple, kwargs: dict) -> float:
        """1 / gradient-accumulation steps where the Trainer will not divide the loss by them itself (the
        trainer's loss is already normalised over the accumulated batch, e.g. GRPO); else 1. The MTP loss is a
        mean over this micro-batch, so either way it counts once per optimizer step."""
        trainer: Any = self
        scaled = getattr(trainer, "loss_is_scaled_for_ga", None)
        if scaled is None:
            items = kwargs.get("num_items_in_batch", args[1] if len(args) > 1 else None)
            scaled = (getattr(trainer, "model_accepts_loss_kwargs", False) and items is not None) or \
                getattr(trainer, "compute_loss_func", None) is not None
        steps = getattr(trainer, "current_gradient_accumulation_steps", 1) or 1
        return 1.0 / steps if scaled else 1.0

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        sums = getattr(self, "_mtp_sums", None)
        if sums and not any(k.startswith("eval_") for k in logs):
            per_depth = {d: (s[0] / s[1], s[2] / s[1]) for d, s in sorted(sums.items()) if s[1]}
            if per_depth:
                logs[MTP_LOSS] = round(sum(v[0] for v in per_depth.values()) / len(per_depth), 5)
                logs[MTP_ACCURACY] = round(per_depth.get(1, next(iter(per_depth.values())))[1], 5)
                if len(per_depth) > 1:
                    for d, (loss, acc) in per_depth.items():
                        logs[mtp_depth_key(MTP_LOSS, d)] = round(loss, 5)
                        logs[mtp_depth_key(MTP_ACCURACY, d)] = round(acc, 5)
            sums.clear()
        super().log(logs, *args, **kwargs)  # type: ignore[misc]


def _labels(inputs: Any, ids: torch.Tensor, mask: Any) -> torch.Tensor:
    """Targets aligned with `ids` (-100: none): SFT's labels, GRPO's completion tokens, else every real token."""
    labels = inputs.get("labels") if hasattr(inputs, "get") else None
    if isinstance(labels, torch.Tensor) and labels.shape == ids.shape:
        return labels
    if hasattr(inputs, "get") and isinstance(inputs.get("completion_ids"), torch.Tensor):
        completion = inputs["completion_ids"].masked_fill(inputs["completion_mask"] == 0, -100)
        out = torch.cat([torch.full_like(inputs["prompt_ids"], -100), completion], dim=1)
        if out.shape == ids.shape:
            return out
    return ids.masked_fill(mask == 0, -100) if isinstance(mask, torch.Tensor) and mask.shape == ids.shape else ids


def unwrap_model(model: Any) -> Any:
    """The causal LM under DDP / peft wrappers."""
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model
