"""The TRL trainers the SFT, reward-model and DPO stages train with, each declared once with posttrain's additions:
atomic checkpoints (checkpoints.py), MoE balancing (moe_balance.py) and the MTP loss (mtp.py). GRPO's, which adds
more, is `grpo_trainer.py`.

- `_save_checkpoint` (transformers, private), in `AtomicCheckpointMixin`: a checkpoint appears under its final
  name only when complete.
- `compute_loss`, in `MoEBalanceMixin` and `MTPMixin`: the sequence-wise balance loss and the MTP loss join the
  trainer's loss.
- `log`, in `MoEBalanceMixin` and `MTPMixin`: MaxVio and expert loads, MTP loss and accuracy in each logged row.

MoE balancing comes before the MTP loss, so that it also counts the MTP block's router.
"""

from __future__ import annotations

from trl import DPOTrainer as TRLDPOTrainer
from trl import RewardTrainer as TRLRewardTrainer
from trl import SFTTrainer as TRLSFTTrainer

from posttrain.training.checkpoints import AtomicCheckpointMixin
from posttrain.training.moe_balance import MoEBalanceMixin
from posttrain.training.mtp import MTPMixin

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
