"""The TRL trainers the SFT, reward-model, DPO and on-policy distillation stages train with, each declared once with
posttrain's additions: atomic checkpoints (checkpoints.py), MoE balancing (moe_balance.py) and the MTP loss (mtp.py).
GRPO's, which adds more, is `grpo_trainer.py`.

- `_save_checkpoint` (transformers, private), in `AtomicCheckpointMixin`: a checkpoint appears under its final
  name only when complete.
- `compute_loss`, in `MoEBalanceMixin` and `MTPMixin`: the sequence-wise balance loss and the MTP loss join the
  trainer's loss.
- `log`, in `MoEBalanceMixin` and `MTPMixin`: MaxVio and expert loads, MTP loss and accuracy in each logged row.

MoE balancing comes before the MTP loss, so that it also counts the MTP block's router.

On-policy distillation's trainer also overrides (`DISTILLATION_OVERRIDES`):

- `_get_last_hidden_state` (TRL, private), in `OPDMetricsMixin` (opd_metrics.py): the student's and the teacher's
  last hidden states kept for the step's reverse KL and agreement; the teacher's seconds booked apart.
- `compute_loss`, in `OPDMetricsMixin` too: those two figures measured after TRL's loss.
- `_generate_single_turn` (TRL, private), in `DistillRolloutMixin` (rollouts.py): the student's samples by
  posttrain's decode loop (finished rows leave the batch), as GRPO's in-process rollouts; `log` there too.
"""

from __future__ import annotations

from trl import DistillationTrainer as TRLDistillationTrainer
from trl import DPOTrainer as TRLDPOTrainer
from trl import RewardTrainer as TRLRewardTrainer
from trl import SFTTrainer as TRLSFTTrainer

from posttrain.training.checkpoints import AtomicCheckpointMixin
from posttrain.training.moe_balance import MoEBalanceMixin
from posttrain.training.mtp import MTPMixin
from posttrain.training.opd_metrics import OPDMetricsMixin
from posttrain.training.rollouts import DistillRolloutMixin

#: TRL/transformers methods these trainers override (name -> the classes of ours that do): what a test checks.
OVERRIDES: dict[str, tuple[str, ...]] = {
    "_save_checkpoint": ("AtomicCheckpointMixin",),
    "compute_loss": ("MoEBalanceMixin", "MTPMixin"),
    "log": ("MoEBalanceMixin", "MTPMixin"),
}


class SFTTrainer(AtomicCheckpointMixin, MoEBalanceMixin, MTPMixin, TRLSFTTrainer):
    """TRL's SFTTrainer with atomic checkpoints, MoE balancing and the MTP loss."""


class RewardTrainer(AtomicCheckpointMixin, MoEBalanceMixin, MTPMixin, TRLRewardTrainer):
    """TRL's RewardTrainer with atomic checkpoints, MoE balancing and the MTP loss."""


class DPOTrainer(AtomicCheckpointMixin, MoEBalanceMixin, MTPMixin, TRLDPOTrainer):
    """TRL's DPOTrainer with atomic checkpoints, MoE balancing and the MTP loss."""


#: What the on-policy distillation trainer overrides besides `OVERRIDES` (name -> the classes of ours that do).
DISTILLATION_OVERRIDES: dict[str, tuple[str, ...]] = {
    "_get_last_hidden_state": ("OPDMetricsMixin",),
    "compute_loss": ("OPDMetricsMixin", "MoEBalanceMixin", "MTPMixin"),
    "_save_checkpoint": ("AtomicCheckpointMixin",),
    "_generate_single_turn": ("DistillRolloutMixin",),
    "log": ("DecodeLoopRollouts", "MoEBalanceMixin", "MTPMixin"),
}


class OnPolicyDistillTrainer(AtomicCheckpointMixin, OPDMetricsMixin, DistillRolloutMixin, MoEBalanceMixin, MTPMixin,
                             TRLDistillationTrainer):
    """TRL's DistillationTrainer (the student samples, the teacher scores every token) with atomic checkpoints, the
    reverse KL and agreement it is judged by, MoE balancing and the MTP loss."""
