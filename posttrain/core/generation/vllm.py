"""The `vllm` backend: vLLM's offline engine (optional extra, GPU only, imported lazily)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from posttrain.core.chat import think_opener
from posttrain.core.errors import MissingDependencyError
from posttrain.core.generation.base import (
    BaseGenerator,
    DraftStats,
    GenerationSpec,
    Prompt,
    SamplingParams,
    as_messages,
    derive_seed,
    prompt_key,
    truncate_at_stop,
)


class VLLMGenerator(BaseGenerator):
    """vLLM's offline engine; `spec.options` are passed to `vllm.LLM` (e.g. `tensor_parallel_size`)."""

    def __init__(self, model: str, spec: GenerationSpec):
        try:
            import vllm
        except ImportError as exc:
            raise MissingDependencyError(
                "the vllm generation backend needs vLLM (GPU only): pip install posttrain[vllm] "
                f"(or use backend: hf) [{exc}]"
            ) from None
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
        self.llm = vllm.LLM(model=model, dtype=spec.dtype, **engine)
        self.tokenizer = self.llm.get_tokenizer()
        self.draft_stats = DraftStats()

    def generate(
        self, prompts: Sequence[Prompt], n: int = 1, sampling: SamplingParams | None = None
    ) -> list[list[str]]:
        sampling = sampling or SamplingParams()
        texts = []
        for p in prompts:
            if isinstance(p, str) and not self.spec.chat:
                texts.append(p)
            else:
                texts.append(self.tokenizer.apply_chat_template(as_messages(p), tokenize=False,
                                                                add_generation_prompt=True, **self.template_kwargs))
        params = [
            self.vllm.SamplingParams(
                n=n, temperature=sampling.temperature, top_p=sampling.top_p, max_tokens=sampling.max_new_tokens,
                stop=sampling.stop, skip_special_tokens=True,
                seed=None if sampling.seed is None else derive_seed(sampling.seed, prompt_key(p)),
            )
            for p in prompts
        ]
        before = self._spec_counts()
        results = self.llm.generate(texts, params)
        after = self._spec_counts()
        if before is not None and after is not None:
            self.draft_stats.add(DraftStats(drafted=after[0] - before[0], accepted=after[1] - before[1]))
        # A template that opens `<think>` in the prompt: the completion is the whole assistant turn (core/chat.py).
        openers = [think_opener(t) if not (isinstance(p, str) and not self.spec.chat) else ""
                   for p, t in zip(prompts, texts, strict=True)]
        return [[opener + truncate_at_stop(o.text, sampling.stop) for o in r.outputs]
                for opener, r in zip(openers, results, strict=True)]

    def read_turn(self, text: str) -> dict[str, Any]:
        from posttrain.core.tool_calls import parse_turn

        return parse_turn(self.tokenizer, text)

    def _spec_counts(self) -> tuple[int, int] | None:
        """(drafted, accepted) tokens so far from vLLM's speculative-decoding counters (None where unavailable)."""
        if self.spec.speculative is None or not hasattr(self.llm, "get_metrics"):
            return None
        try:
            values = {m.name: getattr(m, "value", None) for m in self.llm.get_metrics()}
        except Exception:  # metrics are best effort: older engines or disabled stats
            return None
        drafted = values.get("vllm:spec_decode_num_draft_tokens")
        accepted = values.get("vllm:spec_decode_num_accepted_tokens")
        return (int(drafted), int(accepted)) if drafted is not None and accepted is not None else None
