"""What on-policy distillation is judged by, measured on the very forward passes TRL's loss makes.

TRL's `DistillationTrainer` logs its loss, the generalised JSD (`beta` 0: forward KL, 1: reverse KL), and the
student's entropy. Whatever `beta` is, a run is read by two figures on the student's own completions, logged
per step on the training samples and, with `eval_` in front, on held-out prompts:

- `opd/reverse_kl`: KL(student ‖ teacher) per completion token, exact (summed over the vocabulary, at the
  trainer's temperature): the quantity on-policy distillation drives down (Agarwal et al.; Qwen3's
  strong-to-weak distillation);
- `opd/agreement`: the share of completion positions where the student's most likely next token is the teacher's.

Both come from the last hidden states TRL computes for its chunked loss (captured, never recomputed); the
projections through each model's output layer are redone without gradients, a chunk of positions at a time
(logit scaling or soft-capping a family applies is not: a metric, not the loss). The seconds of the teacher's
forward passes are booked to the stage's `StepClock` as `teacher`, so a stage reports its student's seconds.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from posttrain.core.run_folder import OPD_AGREEMENT, OPD_REVERSE_KL
from posttrain.training.step_clock import StepClock

#: Completion positions projected at once when measuring (bounds the memory of two vocabulary-wide logit blocks).
CHUNK = 512
#: The `StepClock` account the teacher's forward passes are booked to.
TEACHER = "teacher"


@torch.no_grad()
def divergence_stats(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, student_head: Any,
                     teacher_head: Any, mask: torch.Tensor, temperature: float = 1.0,
                     chunk: int = CHUNK) -> torch.Tensor:
    """[sum of per-token KL(student ‖ teacher), positions where the argmaxes agree, positions] over the positions
    `mask` keeps; hidden states are (B, T, H) aligned with the completion tokens, heads map H to the vocabulary."""
    valid = mask.reshape(-1).bool()
    hs = student_hidden.reshape(-1, student_hidden.size(-1))[valid.to(student_hidden.device)]
    ht = teacher_hidden.reshape(-1, teacher_hidden.size(-1))[valid.to(teacher_hidden.device)]
    out = torch.zeros(3, dtype=torch.float64, device=hs.device)
    for start in range(0, hs.size(0), chunk):
        s = student_head(hs[start:start + chunk]).float() / temperature
        t = teacher_head(ht[start:start + chunk]).float().to(s.device) / temperature
        log_s, log_t = s.log_softmax(-1), t.log_softmax(-1)
        out[0] += (log_s.exp() * (log_s - log_t)).sum().double()
        out[1] += (s.argmax(-1) == t.argmax(-1)).sum().double()
    out[2] = hs.size(0)
    return out


class OPDMetricsMixin:
    """For TRL's DistillationTrainer: logs `opd/reverse_kl` and `opd/agreement` (train and eval) and books the
    teacher's seconds. Put it before the TRL class; it needs nothing set up."""

    def _get_last_hidden_state(self, unwrapped_model: Any, *args: Any, **kwargs: Any) -> Any:
        trainer: Any = self
        is_teacher = trainer.teacher_model is not None and \
            unwrapped_model is trainer.accelerator.unwrap_model(trainer.teacher_model)
        if is_teacher:
            _synchronize()
            start = time.perf_counter()
        hidden = super()._get_last_hidden_state(unwrapped_model, *args, **kwargs)  # type: ignore[misc]
        if is_teacher:
            _synchronize()
            clock = next((c for c in trainer.callback_handler.callbacks if isinstance(c, StepClock)), None)
            if clock is not None and trainer.model.training:
                clock.add(TEACHER, time.perf_counter() - start)
        self._opd_hidden = {**getattr(self, "_opd_hidden", {}), "teacher" if is_teacher else "student": hidden}
        return hidden

    def compute_loss(self, model: Any, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        trainer: Any = self
        self._opd_hidden: dict[str, torch.Tensor] = {}
        out = super().compute_loss(model, inputs, *args, **kwargs)  # type: ignore[misc]
        hidden, self._opd_hidden = self._opd_hidden, {}
        if "student" in hidden and "teacher" in hidden:
            mask = inputs["completion_mask"] if "tool_mask" not in inputs else \
                inputs["completion_mask"] * inputs["tool_mask"]
            student = trainer.accelerator.unwrap_model(model)
            teacher = trainer.accelerator.unwrap_model(trainer.teacher_model)
            stats = divergence_stats(hidden["student"].detach(), hidden["teacher"], student.get_output_embeddings(),
                                     teacher.get_output_embeddings(), mask, trainer.temperature)
            total = trainer.accelerator.reduce(stats, reduction="sum")
            if total[2] > 0:
                mode = "train" if trainer.model.training else "eval"
                trainer._metrics[mode][OPD_REVERSE_KL].append(float(total[0] / total[2]))
                trainer._metrics[mode][OPD_AGREEMENT].append(float(total[1] / total[2]))
        return out


def _synchronize() -> None:
    """Wait for the GPU, so that the clock times the teacher's work rather than its queueing."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
