"""The seconds a trainer stage spent in its training steps, kept across resumes: what a compute comparison reads.

A stage's `seconds` in report.json is its whole wall time (loading, held-out evaluation, checkpoints, saving), and a
resumed stage's is only its last attempt's. `StepClock` counts the time between the start and the end of each
optimizer step (generation included, for the trainers that sample), and is saved in every checkpoint's
trainer_state.json (`ExportableState`), so a stage resumed after a kill reports the seconds of all its steps.
A trainer may book a part of those seconds to a named account (`add`): on-policy distillation books its teacher's
forward passes, so that a stage's *student* seconds can be told from the seconds its teacher cost.
"""

from __future__ import annotations

import time
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState


class StepClock(TrainerCallback, ExportableState):
    """Seconds spent in training steps (`seconds`), and the parts of them booked to named accounts (`parts`)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.parts: dict[str, float] = {}
        self.started = False
        self._step_start: float | None = None

    def state(self) -> dict[str, Any]:
        return {"args": {}, "attributes": {"seconds": self.seconds, "parts": dict(self.parts)}}

    def restore(self, state: Any) -> None:
        """Take up the counts a checkpoint's TrainerState holds (none: from zero)."""
        saved = (getattr(state, "stateful_callbacks", None) or {}).get(type(self).__name__)
        if isinstance(saved, list):
            saved = saved[-1] if saved else None
        attributes = saved.get("attributes", {}) if isinstance(saved, dict) else {}
        self.seconds = float(attributes.get("seconds", 0.0))
        self.parts = {str(k): float(v) for k, v in (attributes.get("parts") or {}).items()}

    def add(self, part: str, seconds: float) -> None:
        """Book `seconds` of the current step to `part` (only while a step runs: evaluation is not training)."""
        if self._step_start is not None:
            self.parts[part] = self.parts.get(part, 0.0) + seconds

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.restore(state)
        self.started = True
        # A checkpoint written before this clock existed has no entry for it; the next save would fail on that.
        state.stateful_callbacks.setdefault(type(self).__name__, self.state())

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._step_start = time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._step_start is not None:
            self.seconds += time.perf_counter() - self._step_start
        self._step_start = None
