"""GRPO with an on-policy distillation term: the teacher's per-token log-probabilities as a dense reward beside the
verifier's, so that one run distils and reinforces at once.

After TRL has sampled and scored a rollout batch (and dynamic sampling has refilled it), the teacher scores every
completion token in one forward pass without gradients, and each token gets its own advantage:

    A_t = A + w · (log π_teacher(y_t) − log π_old(y_t))

A is GRPO's sequence advantage from the verifier rewards (normalised as the stage's loss says), π_old the policy that
sampled y_t (both log-probabilities at GRPO's temperature), and w the recipe's `distillation.weight`. The second
part is on-policy distillation's per-token reward, the negative of the sampled reverse KL(π ‖ π_teacher) at that
token: its policy gradient is w times the gradient of −KL per token, so where the verifier says nothing (a group
whose answers all scored the same) the teacher still does. TRL's loss takes (B, T) advantages as they are: for
the clipped losses (grpo, dapo, bnpo, dr_grpo) each token's loss −min(r_t·A, clip(r_t)·A) becomes
−min(r_t·A_t, clip(r_t)·A_t), so at ratio r_t = 1 (a batch's first update) the loss changes by exactly −w times the
loss type's average of (log π_teacher − log π_old) over the completion tokens.

Logged per step: `distill_term/reverse_kl`, the token mean of log π_old − log π_teacher, and `distill_term/advantage`,
the token mean of what the advantages got (−w times it); the verifier's reward stays `reward`, so the report
shows both terms.
"""

from __future__ import annotations

from typing import Annotated, Any

import torch
from pydantic import ConfigDict, Field

from posttrain.core.identity import MarkedModel
from posttrain.core.run_folder import DISTILL_TERM, DISTILL_TERM_REVERSE_KL


class DistillationTerm(MarkedModel):
    """Recipe section `distillation:` of a GRPO stage."""

    model_config = ConfigDict(extra="forbid")

    #: The teacher: an earlier stage (its model), a path or a hub name, with the policy's tokenizer.
    teacher: str
    #: w, the weight of the teacher's per-token log-probability gap in each token's advantage (the verifier's
    #: group-normalised sequence advantage has weight 1).
    weight: Annotated[float, Field(gt=0)] = 0.1


def mixed_advantages(advantages: torch.Tensor, teacher_logps: torch.Tensor, old_logps: torch.Tensor,
                     mask: torch.Tensor, weight: float) -> torch.Tensor:
    """(B, T) advantages: each sequence's `advantages` (B,) plus `weight` × the teacher's log-probability gap at each
    completion token (0 where `mask` is 0)."""
    gap = (teacher_logps - old_logps) * mask
    return advantages.unsqueeze(1) + weight * gap


class DistillTermMixin:
    """Put before GRPOTrainer (and before `DynamicSamplingMixin`, which must see the sequence advantages); call
    `setup_distill_term(teacher, weight)` after init."""

    _distill_teacher: Any = None
    _distill_weight: float = 0.0

    def setup_distill_term(self, teacher: Any, weight: float) -> None:
        """Add the teacher's per-token term with weight `weight` (the teacher scored and placed as TRL scores and
        places its reference model)."""
        from trl.models import prepare_deepspeed
        from trl.trainer.utils import add_fused_lm_head

        trainer: Any = self
        add_fused_lm_head(teacher, temperature=trainer.temperature,
                          cast_lm_head_to_fp32=trainer.args.cast_lm_head_to_fp32)
        if trainer.is_deepspeed_enabled:
            self._distill_teacher = prepare_deepspeed(teacher, trainer.accelerator)
        else:
            self._distill_teacher = trainer.accelerator.prepare_model(teacher, evaluation_mode=True)
        self._distill_weight = weight

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        batch = super()._generate_and_score_completions(inputs)  # type: ignore[misc]
        if self._distill_teacher is None:
            return batch
        trainer: Any = self
        mode = "train" if trainer.model.training else "eval"
        ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
        attention = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
        keep = batch["completion_ids"].size(1)
        mask = batch["completion_mask"] if "tool_mask" not in batch else batch["completion_mask"] * batch["tool_mask"]
        size = trainer.args.per_device_train_batch_size if mode == "train" else trainer.args.per_device_eval_batch_size
        with torch.no_grad():
            teacher_logps, _, _ = trainer._get_per_token_logps_and_entropies(self._distill_teacher, ids, attention,
                                                                              keep, batch_size=size)
            old_logps = batch.get("old_per_token_logps")
            if old_logps is None:  # TRL skips it when the loss can use its own forward pass: the term cannot
                old_logps, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, attention, keep,
                                                                              batch_size=size)
        mask = mask.to(teacher_logps.dtype)
        batch["advantages"] = mixed_advantages(batch["advantages"], teacher_logps, old_logps, mask,
                                               self._distill_weight)
        sums = torch.stack([((old_logps - teacher_logps) * mask).sum(), mask.sum()]).double()
        total = trainer.accelerator.reduce(sums, reduction="sum")
        reverse_kl = float(total[0] / total[1].clamp(min=1.0))
        trainer._metrics[mode][DISTILL_TERM_REVERSE_KL].append(reverse_kl)
        trainer._metrics[mode][DISTILL_TERM].append(-self._distill_weight * reverse_kl)
        return batch
