"""The `vllm` backend: vLLM's offline engine (optional extra, GPU only, imported lazily).

Prompts reach vLLM as token ids, tokenized here as the `hf` backend does: a rendered chat template already holds the
model's BOS (`{{ bos_token }}`, DeepSeek's templates), so it is tokenized without special tokens; given text, vLLM
would add them again (`add_special_tokens=True` is its default), and eval, distill and pass-rate results would differ
by backend. With speculative decoding the engine keeps its statistics (vLLM's `LLM` turns them off unless
`disable_log_stats=False`, and then `get_metrics()` asserts), so the draft acceptance is recorded.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

from posttrain.core.chat import think_opener
from posttrain.core.errors import MissingDependencyError
from posttrain.core.generation.base import (
    BaseGenerator,
    DraftStats,
    GenerationError,
    GenerationSpec,
    Prompt,
    SamplingParams,
    as_messages,
    derive_seed,
    prompt_key,
    truncate_at_stop,
)

log = logging.getLogger("posttrain.generation")

#: vLLM's speculative-decoding counters (`v1/spec_decode/metrics.py`), one sample per engine.
DRAFTED, ACCEPTED = "vllm:spec_decode_num_draft_tokens", "vllm:spec_decode_num_accepted_tokens"


class VLLMGenerator(BaseGenerator):
    """vLLM's offline engine; `spec.options` are passed to `vllm.LLM` (e.g. `tensor_parallel_size`)."""

    def __init__(self, model: str, spec: GenerationSpec):
        from posttrain.core.vllm_limits import mla_problem, read_config

        try:
            import vllm
        except ImportError as exc:
            raise MissingDependencyError(
                "the vllm generation backend needs vLLM (GPU only): pip install posttrain[vllm] "
                f"(or use backend: hf) [{exc}]"
            ) from None
        config = read_config(model)
        if config is not None and (problem := mla_problem(config)) is not None:
            raise GenerationError(f"vllm backend: {model} cannot run in vLLM: {problem} (use backend: hf)")
        self.vllm = vllm
        self.spec = spec
        self.name = model
        engine = dict(spec.options)
        # vLLM runs its own implementation of known architectures either way; the flag lets it read the
        # checkpoint's own config and tokenizer classes (Moonlight's tokenizer needs it).
        engine.setdefault("trust_remote_code", bool(spec.trust_remote_code))
        if spec.speculative is not None and spec.speculative.mtp:
            # vLLM's multi-token-prediction drafter ("mtp"; "deepseek_mtp" is its deprecated alias) reads the
            # MTP layer from the checkpoint, in DeepSeek-V3's layout, the one posttrain saves.
            engine.setdefault("speculative_config", {"method": "mtp",
                                                     "num_speculative_tokens": spec.speculative.num_tokens})
            engine.setdefault("disable_log_stats", False)  # the acceptance counters (get_metrics) need the stats
        self.llm = vllm.LLM(model=model, dtype=spec.dtype, **engine)
        self.tokenizer = self.llm.get_tokenizer()
        self.draft_stats = DraftStats()

    def generate(
        self, prompts: Sequence[Prompt], n: int = 1, sampling: SamplingParams | None = None
    ) -> list[list[str]]:
        sampling = sampling or SamplingParams()
        rendered = [self._render(p) for p in prompts]
        inputs = [{"prompt_token_ids": self.tokenizer.encode(text, add_special_tokens=special)}
                  for text, special in rendered]
        params = [
            self.vllm.SamplingParams(
                n=n, temperature=sampling.temperature, top_p=sampling.top_p, max_tokens=sampling.max_new_tokens,
                stop=sampling.stop, skip_special_tokens=True,
                seed=None if sampling.seed is None else derive_seed(sampling.seed, prompt_key(p)),
            )
            for p in prompts
        ]
        before = self._spec_counts()
        results = self.llm.generate(inputs, params)
        after = self._spec_counts()
        if before is not None and after is not None:
            self.draft_stats.add(DraftStats(drafted=after[0] - before[0], accepted=after[1] - before[1]))
        # A template that opens `<think>` in the prompt: the completion is the whole assistant turn (core/chat.py).
        openers = [think_opener(text) if not special else "" for text, special in rendered]
        return [[opener + truncate_at_stop(o.text, sampling.stop) for o in r.outputs]
                for opener, r in zip(openers, results, strict=True)]

    def _render(self, prompt: Prompt) -> tuple[str, bool]:
        """Text to tokenize, and whether the tokenizer adds its special tokens (not after a chat template)."""
        if isinstance(prompt, str) and not self.spec.chat:
            return prompt, True
        text = self.tokenizer.apply_chat_template(as_messages(prompt), tokenize=False, add_generation_prompt=True,
                                                  **self.template_kwargs)
        return text, False

    def read_turn(self, text: str) -> dict[str, Any]:
        from posttrain.core.tool_calls import parse_turn

        return parse_turn(self.tokenizer, text)

    def _spec_counts(self) -> tuple[int, int] | None:
        """(drafted, accepted) tokens so far from vLLM's speculative-decoding counters (None where unavailable)."""
        if self.spec.speculative is None or not hasattr(self.llm, "get_metrics"):
            return None
        try:
            metrics = self.llm.get_metrics()
        except Exception as exc:  # metrics are best effort: an engine built with its stats off by its options
            log.debug("vllm backend: no metrics: %s", exc)
            return None
        return spec_decode_counts((m.name, getattr(m, "value", None)) for m in metrics)


def spec_decode_counts(samples: Iterable[tuple[str, Any]]) -> tuple[int, int] | None:
    """(drafted, accepted) tokens from vLLM's counters, summed over their labels (one per engine), or None."""
    totals: dict[str, int] = {}
    for name, value in samples:
        if name in (DRAFTED, ACCEPTED) and isinstance(value, int | float):
            totals[name] = totals.get(name, 0) + int(value)
    return (totals[DRAFTED], totals[ACCEPTED]) if DRAFTED in totals and ACCEPTED in totals else None
