"""GRPO's trainer: TRL's `GRPOTrainer` with what posttrain adds, declared once, as one class you can read.

Every method of TRL's (or transformers') trainer that this class overrides, who overrides it, and why. TRL's
private methods are not an API: `tests/posttrain/training/test_grpo_trainer.py` checks that each one named here
still exists in the pinned TRL and takes the arguments we pass on, so a TRL release that renames one fails a
test instead of silently dropping a feature.

- `_calculate_rewards` (TRL, private), in `GRPOTrainer` below: the rewards see the whole assistant turn when
  the template opened `<think>` in the prompt; a reward whose rows keep failing stops the stage; a reward stuck
  at 0.0 is reported once. And in `ToolMetricsMixin` (tools.py): with tools, how the policy used them (calls,
  failures, turns, accuracy with and without a call, seconds in calls). The tool loop itself is TRL's (`tools=`).
- `_generate_and_score_completions` (TRL, private), in `DistillTermMixin` (distill_term.py): with a `distillation`
  teacher, each token's advantage gets the teacher's log-probability gap (on the batch dynamic sampling left); and
  in `DynamicSamplingMixin` (dynamic_sampling.py): DAPO's dynamic sampling, groups whose rewards are all equal
  dropped and refilled.
- `_generate_single_turn` (TRL, private), in `RolloutMixin` (rollouts.py): in-process rollouts by posttrain's
  decode loop (finished rows leave the batch), drafted by DeepSeek-V3's MTP module when asked.
- `_save_checkpoint` (transformers, private), in `AtomicCheckpointMixin` (checkpoints.py): a checkpoint appears
  under its final name only when complete.
- `compute_loss`, in `MoEBalanceMixin` and `MTPMixin`: the sequence-wise balance loss and the MTP loss join the
  policy loss.
- `log`, in `MoEBalanceMixin`, `MTPMixin` and `RolloutMixin`: MaxVio and expert loads, MTP loss and
  accuracy, draft acceptance in each logged row.
- `__init__`, in `VLLMSyncMixin` (vllm_sync.py): with vLLM rollouts, weights in the layout vLLM loads, router
  biases synced and the sampler's drift logged; without vLLM it only adds the (idle) drift callback.

The order of the bases is the order the additions wrap TRL's methods: atomic checkpoints outermost, the
distillation term around the sampling loop around generation, MoE balancing before the MTP loss (so it also counts
the MTP block's router).
"""

from __future__ import annotations

import json
import logging
import math
from collections import deque
from collections.abc import Sequence
from typing import Any

from trl import GRPOTrainer as TRLGRPOTrainer

from posttrain.core.errors import StageError
from posttrain.training.checkpoints import AtomicCheckpointMixin
from posttrain.training.distill_term import DistillTermMixin
from posttrain.training.dynamic_sampling import DynamicSamplingMixin
from posttrain.training.moe_balance import MoEBalanceMixin
from posttrain.training.mtp import MTPMixin
from posttrain.training.rollouts import RolloutMixin
from posttrain.training.tools import ToolMetricsMixin
from posttrain.training.vllm_sync import VLLMSyncMixin

log = logging.getLogger("posttrain.grpo")

#: TRL/transformers methods this trainer overrides (name -> the class of ours that does): what the test checks.
OVERRIDES: dict[str, tuple[str, ...]] = {
    "_calculate_rewards": ("GRPOTrainer", "ToolMetricsMixin"),
    "_generate_and_score_completions": ("DistillTermMixin", "DynamicSamplingMixin"),
    "_generate_single_turn": ("RolloutMixin",),
    "_save_checkpoint": ("AtomicCheckpointMixin",),
    "compute_loss": ("MoEBalanceMixin", "MTPMixin"),
    "log": ("MoEBalanceMixin", "MTPMixin", "DecodeLoopRollouts"),
    "__init__": ("VLLMSyncMixin",),
}


class GRPOTrainer(AtomicCheckpointMixin, DistillTermMixin, DynamicSamplingMixin, RolloutMixin, MoEBalanceMixin,
                  MTPMixin, VLLMSyncMixin, ToolMetricsMixin, TRLGRPOTrainer):
    """TRL's GRPOTrainer with posttrain's additions (see the module's table). Set up after `__init__` with
    `setup_reward_checks`, and with the mixins' own `setup_*` methods (the grpo stage does it)."""

    _error_guard: ErrorGuard | None = None
    _zero_streaks: ZeroStreaks | None = None

    def setup_reward_checks(self, max_error_rate: float, error_window: int, zero_rounds: int) -> None:
        """Stop when a reward's failed rows exceed `max_error_rate` over `error_window` rounds; warn once when one
        scores 0.0 on every completion for `zero_rounds` rounds in a row (0: never)."""
        self._error_guard = ErrorGuard(max_error_rate, error_window)
        self._zero_streaks = ZeroStreaks(zero_rounds) if zero_rounds > 0 else None

    def _calculate_rewards(self, inputs: Any, prompts: list[Any], completions: list[Any],
                           completion_ids_list: Any) -> Any:
        if not hasattr(self, "_openers"):
            tokenizer = getattr(self, "_tokenizer", None) or self.processing_class
            self._openers = ThinkOpeners(tokenizer, getattr(self, "chat_template_kwargs", None) or {})
        completions = self._openers.apply(prompts, completions)
        guarded = [f for f in self.reward_funcs if hasattr(f, "failed_count") and hasattr(f, "rows")]
        before = [(f.rows, f.failed_count) for f in guarded]
        out = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        if self._error_guard is not None:
            for fn, (rows, failed) in zip(guarded, before, strict=True):
                self._error_guard.check(fn, fn.rows - rows, fn.failed_count - failed)
        if self._zero_streaks is not None:
            names = getattr(self, "reward_func_names", None) or [f"reward {j}" for j in range(out.shape[1])]
            for j, name in enumerate(names):
                if self._zero_streaks.update(name, out[:, j].tolist()) and self.accelerator.is_main_process:
                    log.warning("%s", zero_reward_message(name, self._zero_streaks.rounds, completions[0], inputs[0]))
        return out


class ThinkOpeners:
    """Rewards see the whole assistant turn when the chat template opened `<think>` in the prompt.

    TRL hands rewards conversational prompts as message lists, so a rendered prompt ending in `<think>`
    (DeepSeek-R1, Qwen3 thinking) is invisible to them and the completion starts inside the reasoning. The
    prompt is rendered as TRL renders it (with the trainer's `chat_template_kwargs`); where it ends with the
    opener, the completions the rewards get start with it (`posttrain/core/chat.py` says why this is decided from
    the prompt, never from the completion). Plain-text prompts are not templated by TRL: a prompt string ending
    in `<think>` is read by the format reward itself.
    """

    def __init__(self, tokenizer: Any, chat_template_kwargs: dict[str, Any] | None = None):
        self.tokenizer = tokenizer
        self.kwargs = chat_template_kwargs or {}
        self.cache: dict[str, str] = {}

    def apply(self, prompts: list[Any], completions: list[Any]) -> list[Any]:
        """`completions`, each prefixed with its prompt's opener (unchanged where there is none)."""
        openers = [self.opener(p) for p in prompts]
        if not any(openers):
            return completions
        from posttrain.core.chat import with_opener

        return [with_opener(c, o) for c, o in zip(completions, openers, strict=True)]

    def opener(self, prompt: Any) -> str:
        """The `<think>` opener the template ends a conversational prompt with ("" for none)."""
        from posttrain.core.chat import render_generation_prompt, think_opener

        if not isinstance(prompt, list):
            return ""
        key = json.dumps(prompt, sort_keys=True, default=str)
        if key not in self.cache:
            self.cache[key] = think_opener(render_generation_prompt(self.tokenizer, prompt, **self.kwargs))
        return self.cache[key]


class ErrorGuard:
    """Stop GRPO when a reward keeps failing, instead of training to the end on what the other rewards say.

    A failed row scores None (TRL leaves it out of the advantage), so a judge server that went down or a sandbox
    that broke would otherwise train silently on a different objective. After each scoring round, each reward's
    share of failed rows over the last `window` rounds (fewer at the start) is compared with `max_rate`; above
    it, the stage fails with a `StageError` naming the reward, the rate and the reward's first failure (a rerun
    resumes from the last checkpoint). Counted per process, from the `rewards.registry.Reward` counters.
    Only rows left without a score count: a row scored with an error beside it (an answer the math reward
    could not read, a program that did not compile) is the policy's doing, which a young policy does on
    most rows; those are in `rewards/<name>/error_rate` and the zero-reward warning, and never stop a run.
    """

    def __init__(self, max_rate: float, window: int):
        self.max_rate = max_rate
        self.window = window
        self.history: dict[str, deque[tuple[int, int]]] = {}

    def check(self, fn: Any, rows: int, errors: int) -> None:
        rounds = self.history.setdefault(fn.name, deque(maxlen=self.window))
        rounds.append((rows, errors))
        scored, failed = sum(r for r, _ in rounds), sum(e for _, e in rounds)
        if not scored or failed / scored <= self.max_rate:
            return
        raise StageError(f"reward {fn.name}: {failed} of {scored} rows failed over the last {len(rounds)} scoring "
                         f"round(s), more than max_reward_error_rate {self.max_rate:g}; its first error: "
                         f"{(fn.first_failure or '?')[:1000]}")


class ZeroStreaks:
    """Scoring rounds in a row in which a reward gave 0.0 to every completion it scored, per reward.

    A reward that reads answers in another layout than the prompt asks for (R1-Zero's `<answer>` tags
    against a boxed-only reader) scores every completion 0: GRPO then trains on the other rewards alone
    and nothing fails. A streak of `rounds` such rounds is reported once per reward; a round with any
    other score ends the streak, a round with no score at all (every row failed) neither extends nor
    ends it (the error guard speaks for those).
    """

    def __init__(self, rounds: int):
        self.rounds = rounds
        self.streaks: dict[str, int] = {}
        self.reported: set[str] = set()

    def update(self, name: str, scores: Sequence[float | None]) -> bool:
        """Count one round of `name`'s scores (None or NaN: no score); True on the round the streak reaches
        `rounds`, the first time only."""
        scored = [s for s in scores if s is not None and not math.isnan(s)]
        if not scored:
            return False
        self.streaks[name] = self.streaks.get(name, 0) + 1 if all(s == 0.0 for s in scored) else 0
        if self.rounds and self.streaks[name] >= self.rounds and name not in self.reported:
            self.reported.add(name)
            return True
        return False


def zero_reward_message(name: str, rounds: int, completion: Any, row: dict[str, Any]) -> str:
    """The warning of a reward stuck at 0: what it saw in one completion, and the gold it compared it with."""
    from rewards.answer import completion_text

    gold = {k: v for k, v in row.items() if k not in ("prompt", "completion", "completion_ids")}
    gold = {"solution": gold["solution"]} if "solution" in gold else gold
    text = completion_text(completion)
    text = text if len(text) <= 600 else f"{text[:200]} … {text[-400:]}"
    return (f"reward {name} scored 0.0 on every completion for {rounds} scoring rounds in a row: does the prompt "
            f"ask for an answer layout this reward reads? (zero_reward_warning_rounds sets when this is said, 0 "
            f"never) A completion: {text!r}; its row: {str(gold)[:300]}")
