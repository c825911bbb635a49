"""The `vllm` backend: vLLM's offline engine (optional extra, GPU only, imported lazily)."""

from __future__ import annotations

from collections.abc import Sequence

from posttrain.core.errors import MissingDependencyError
from posttrain.core.generation.base import (
    BaseGenerator,
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
        self.llm = vllm.LLM(model=model, dtype=spec.dtype, **spec.options)
        self.tokenizer = self.llm.get_tokenizer()

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
                                                                add_generation_prompt=True))
        params = [
            self.vllm.SamplingParams(
                n=n, temperature=sampling.temperature, top_p=sampling.top_p, max_tokens=sampling.max_new_tokens,
                stop=sampling.stop, skip_special_tokens=True,
                seed=None if sampling.seed is None else derive_seed(sampling.seed, prompt_key(p)),
            )
            for p in prompts
        ]
        results = self.llm.generate(texts, params)
        return [[truncate_at_stop(o.text, sampling.stop) for o in r.outputs] for r in results]
