"""In-process rollouts of GRPO and on-policy distillation through posttrain's decode loop
(`posttrain/core/generation/decode.py`).

TRL generates in-process rollouts (`use_vllm=False`) with `model.generate`; `RolloutMixin` hands the same
padded prompts and the same sampling settings (TRL's `generation_config`: temperature, top-p, top-k, the
end-of-sequence ids, `max_new_tokens`, `cache_implementation: static`) to the decode loop, whose finished
rows leave the batch. Each completion is returned as TRL's own path returns it: the new tokens up to and
including the first end-of-sequence token. With `rollout.speculative: {mtp: true}` and a DeepSeek-V3 MTP
module, the MTP module drafts (same distribution, fewer main-model passes) and `mtp/acceptance` is logged.

TRL's path is kept where the loop does not apply: vLLM and continuous batching, images or other multimodal
inputs, and generation settings the loop lacks (a repetition penalty, min-p, beam search: `decode.unsupported`).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import torch

from posttrain.core.generation import DraftStats, SpeculativeSpec
from posttrain.core.run_folder import MTP_ACCEPTANCE
from posttrain.training.mtp import unwrap_model

log = logging.getLogger("posttrain.grpo")


class DecodeLoopRollouts:
    """What GRPO's and on-policy distillation's rollout mixins share: the decision, once, whether the decode loop
    generates (`setup_rollouts`), and the MTP draft acceptance in the logs."""

    #: Whether in-process rollouts go through the decode loop, and whether the MTP module drafts in it.
    _decode_loop: bool = False
    _draft: bool = False

    def setup_rollouts(self, speculative: SpeculativeSpec | None = None) -> bool:
        """Decide once how in-process rollouts are generated; True when the decode loop does it."""
        from posttrain.core.generation.decode import unsupported
        from posttrain.core.mtp import has_mtp

        trainer: Any = self
        wants_draft = speculative is not None and speculative.mtp
        if trainer.use_vllm:
            return False  # vLLM generates; its drafter is VLLMSyncMixin.setup_draft_sync's
        if getattr(trainer, "use_transformers_continuous_batching", False):
            if wants_draft:
                log.warning("rollout.speculative applies to posttrain's in-process rollouts, not transformers' "
                            "continuous batching: plain decoding")
            return False
        model = unwrap_model(trainer.model)
        why = unsupported(model, trainer.generation_config)
        if why is not None:
            log.warning("rollouts: transformers generate (the decode loop does not apply: %s)", why)
            return False
        self._decode_loop = True
        self._draft_stats = DraftStats()
        if wants_draft and not has_mtp(model):
            log.warning("rollout.speculative: the model has no MTP module; rollouts use plain decoding")
        self._draft = bool(wants_draft and has_mtp(model))
        log.info("rollouts: posttrain's decode loop%s", ", drafted by the MTP module" if self._draft else "")
        return True

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        stats = getattr(self, "_draft_stats", None)
        if stats is not None and stats.drafted and not any(k.startswith("eval_") for k in logs):
            logs[MTP_ACCEPTANCE] = round(stats.acceptance or 0.0, 5)
            self._draft_stats = DraftStats()
        super().log(logs, *args, **kwargs)  # type: ignore[misc]


class RolloutMixin(DecodeLoopRollouts):
    """Put before GRPOTrainer; call `setup_rollouts(speculative)` after init."""

    def _generate_single_turn(self, prompt_ids: list[list[int]], images: Any, multimodal_fields: Any,
                              num_generations: int, *args: Any, **kwargs: Any) -> Any:
        if not self._decode_loop or images is not None or multimodal_fields:
            return super()._generate_single_turn(prompt_ids, images, multimodal_fields,  # type: ignore[misc]
                                                 num_generations, *args, **kwargs)
        return decode_rollouts(self, prompt_ids, self._draft, self._draft_stats), None


class DistillRolloutMixin(DecodeLoopRollouts):
    """The same for TRL's DistillationTrainer (on-policy distillation): the student's samples by the decode loop.
    Put before DistillationTrainer; call `setup_rollouts()` after init. Its `_generate_single_turn` returns the
    completions alone (TRL's distillation signature)."""

    def _generate_single_turn(self, prompt_ids: list[list[int]], images: Any, multimodal_fields: Any,
                              *args: Any, **kwargs: Any) -> Any:
        if not self._decode_loop or images is not None or multimodal_fields:
            return super()._generate_single_turn(  # type: ignore[misc]
                prompt_ids, images, multimodal_fields, *args, **kwargs)
        return decode_rollouts(self, prompt_ids, self._draft, self._draft_stats)


def decode_rollouts(trainer: Any, prompt_ids: list[list[int]], draft: bool, stats: DraftStats) -> list[list[int]]:
    """Each prompt's completion by the decode loop, as TRL's in-process path returns it: the new tokens up to and
    including the first end-of-sequence token, under TRL's generation config and unwrapping."""
    from trl.models import unwrap_model_for_generation

    from posttrain.core.generation.decode import Decoder

    gen = trainer.generation_config
    device = trainer.accelerator.device
    width = max(len(p) for p in prompt_ids)
    pad = trainer._tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in prompt_ids], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompt_ids], device=device)
    eos = gen.eos_token_id
    with contextlib.ExitStack() as stack:
        model = stack.enter_context(unwrap_model_for_generation(
            trainer.model_wrapped, trainer.accelerator,
            gather_deepspeed3_params=trainer.args.ds3_gather_for_generation,
            generation_kwargs=trainer.generation_kwargs,
            gradient_checkpointing_kwargs=trainer.args.gradient_checkpointing_kwargs))
        stack.enter_context(trainer._dist.summon_full_params(trainer.model_wrapped, recurse=False))
        decoder = Decoder(model, draft=draft, cache="static" if gen.cache_implementation == "static" else "dynamic")
        completions = decoder.generate(
            ids, mask, gen.max_new_tokens, temperature=gen.temperature if gen.do_sample else 0.0,
            top_p=gen.top_p or 1.0, top_k=gen.top_k or 0,
            eos_token_ids=[eos] if isinstance(eos, int) else list(eos or []))
    stats.add(decoder.stats)
    return completions
