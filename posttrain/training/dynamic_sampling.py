"""DAPO's dynamic sampling for TRL's GRPOTrainer: drop zero-variance groups and refill the batch.

A prompt whose G completions all got the same reward has zero advantage: it adds nothing to the
gradient but still counts in the loss normaliser. DAPO drops such groups and samples more prompts
until the batch is full of groups that carry signal. Here, after TRL generates and scores a batch,
groups whose advantages are all zero are dropped, further prompts (from a separate, seeded stream)
are generated and scored the same way, and the batch is reassembled at its original size. If
`max_refills` rounds are not enough, the remaining slots keep zero-variance groups (harmless: zero
advantage). Every process refills the same number of times, because scoring gathers across them.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from posttrain.core.run_folder import GROUPS_DROPPED

log = logging.getLogger("posttrain.training.dynamic_sampling")

#: Rollout tensors aligned with the prompt (left-padded) or with the completion (right-padded).
_LEFT_PADDED = ("prompt_ids", "prompt_mask")


class DynamicSamplingConfig(BaseModel):
    """Recipe section `dynamic_sampling:` of a GRPO stage."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    #: Extra generation rounds per batch at most (each costs one batch of generation).
    max_refills: int = Field(2, ge=0)


def zero_variance_groups(advantages: torch.Tensor, group_size: int) -> torch.Tensor:
    """Boolean per group: every completion of the group has advantage exactly 0 (equal rewards)."""
    return (advantages.view(-1, group_size) == 0).all(dim=1)


def select_rows(batch: dict[str, Any], rows: torch.Tensor) -> dict[str, Any]:
    return {k: (v[rows] if isinstance(v, torch.Tensor) and v.dim() > 0 else v) for k, v in batch.items()}


def concat_rollouts(parts: list[dict[str, Any]], pad_token_id: int) -> dict[str, Any]:
    """Concatenate rollout dicts along the batch, padding prompts on the left and the rest on the right."""
    out: dict[str, Any] = {}
    for key, first in parts[0].items():
        values = [p[key] for p in parts]
        if not isinstance(first, torch.Tensor) or first.dim() == 0:
            out[key] = first
            continue
        if first.dim() == 1:
            out[key] = torch.cat(values)
            continue
        width = max(v.shape[1] for v in values)
        fill = pad_token_id if key in ("prompt_ids", "completion_ids") else 0
        padded = []
        for v in values:
            missing = width - v.shape[1]
            if missing:
                pad = torch.full((v.shape[0], missing, *v.shape[2:]), fill, dtype=v.dtype, device=v.device)
                v = torch.cat([pad, v], 1) if key in _LEFT_PADDED else torch.cat([v, pad], 1)
            padded.append(v)
        out[key] = torch.cat(padded)
    return out


class PromptStream:
    """An endless, seeded, per-process shuffled stream of training rows for refills."""

    def __init__(self, rows: list[dict[str, Any]], seed: int, process_index: int):
        self.rows = rows
        self.rng = random.Random(f"refill-{seed}-{process_index}")
        self._order: list[int] = []

    def take(self, n: int) -> list[dict[str, Any]]:
        out = []
        for _ in range(n):
            if not self._order:
                self._order = list(range(len(self.rows)))
                self.rng.shuffle(self._order)
            out.append(self.rows[self._order.pop()])
        return out

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            yield from self.take(1)


class DynamicSamplingMixin:
    """Put before GRPOTrainer: `class T(DynamicSamplingMixin, GRPOTrainer)`; call `setup_dynamic_sampling`."""

    dynamic_sampling: DynamicSamplingConfig | None = None
    _refill_stream: PromptStream | None = None

    def setup_dynamic_sampling(self, config: DynamicSamplingConfig, rows: list[dict[str, Any]], seed: int) -> None:
        if not config.enabled:
            return
        self.dynamic_sampling = config
        state = self.accelerator  # type: ignore[attr-defined]
        self._refill_stream = PromptStream(rows, seed, state.process_index)
        log.info("dynamic sampling on: zero-variance groups dropped, up to %d refill rounds per batch",
                 config.max_refills)

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        batch = super()._generate_and_score_completions(inputs)  # type: ignore[misc]
        cfg = self.dynamic_sampling
        if cfg is None or not self.model.training:  # type: ignore[attr-defined]
            return batch
        group = self.num_generations  # type: ignore[attr-defined]
        n_groups = len(inputs) // group
        if len(inputs) % group:
            return batch  # groups straddle processes; nothing safe to drop locally
        zero = zero_variance_groups(batch["advantages"], group)
        kept, spare = [_group_rows(batch, g, group) for g in (~zero).nonzero().flatten().tolist()], []
        spare = [_group_rows(batch, g, group) for g in zero.nonzero().flatten().tolist()]
        dropped, refills = int(zero.sum()), 0
        while refills < cfg.max_refills and self._any_process_short(len(kept) < n_groups):
            refills += 1
            extra_inputs = [row for prompt in self._refill_stream.take(n_groups)  # type: ignore[union-attr]
                            for row in [prompt] * group]
            extra = super()._generate_and_score_completions(extra_inputs)  # type: ignore[misc]
            extra_zero = zero_variance_groups(extra["advantages"], group)
            dropped += int(extra_zero.sum())
            kept += [_group_rows(extra, g, group) for g in (~extra_zero).nonzero().flatten().tolist()]
        selected = kept[:n_groups]
        filled = n_groups - len(selected)
        selected += spare[:filled]
        dropped -= min(filled, len(spare))  # zero-variance groups that stayed were not dropped
        assert len(selected) == n_groups
        pad_id = self.processing_class.pad_token_id  # type: ignore[attr-defined]
        out = concat_rollouts(selected, pad_id)
        if "num_items_in_batch" in out:
            tokens = out["completion_mask"].sum()
            out["num_items_in_batch"] = self.accelerator.gather(tokens).sum()  # type: ignore[attr-defined]
        metrics = self._metrics["train"]  # type: ignore[attr-defined]
        metrics[GROUPS_DROPPED].append(float(dropped))
        metrics["dynamic_sampling/refills"].append(float(refills))
        metrics["dynamic_sampling/zero_variance_kept"].append(float(min(filled, len(spare))))
        return out

    def _any_process_short(self, short: bool) -> bool:
        flag = torch.tensor([1.0 if short else 0.0], device=self.accelerator.device)  # type: ignore[attr-defined]
        return bool(self.accelerator.gather(flag).max() > 0)  # type: ignore[attr-defined]


def _group_rows(batch: dict[str, Any], g: int, group: int) -> dict[str, Any]:
    return select_rows(batch, torch.arange(g * group, (g + 1) * group))
