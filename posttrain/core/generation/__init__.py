"""Text generation, one home for it: `make_generator(spec).generate(prompts, n, sampling)` -> n completions each.

Distillation teachers, the generative reward model's judge and evaluation all sample text; they do it
through this module so that a recipe can swap the engine without touching them. Backends:

- `hf`: a transformers causal LM in process, decoded by posttrain's decode loop (`decode.py`: finished rows
  leave the batch, prompts bucketed by length; greedy is `generate`'s token for token);
- `vllm`: vLLM's offline engine (optional extra, GPU only, imported lazily);
- `openai`: any OpenAI-compatible `/v1/chat/completions` endpoint (DeepSeek's API, a vLLM or SGLang
  server), with a thread pool, retries with exponential backoff and per-request timeouts;
- `scripted`: a `module:function` called as `fn(prompts, n, sampling, **options) -> list[list[str]]`.

`ToolLoop(generator, tools, max_turns)` wraps any of them for a model that calls tools mid-answer (`tool_loop.py`).

A prompt is a string or a chat (a list of `{"role", "content"}` messages). A completion is the
generated text only (no prompt), special tokens skipped, `<think>` kept. Seeds: every backend
derives a stream per (seed, prompt, sample), so results do not depend on how prompts are batched
(`hf`: a counter-based stream per row, `sampling.py`; a model that needs transformers `generate`
seeds each batch from (seed, its prompts), as all `hf` runs did before).

One module per backend; this one picks between them.
"""

from __future__ import annotations

from posttrain.core.errors import PluginError
from posttrain.core.generation.base import (
    BaseGenerator,
    DraftStats,
    GenerationError,
    GenerationSpec,
    Generator,
    Prompt,
    SamplingParams,
    SpeculativeSpec,
    as_messages,
    derive_seed,
    prompt_key,
    sample_rng,
    truncate_at_stop,
)
from posttrain.core.generation.hf import HFGenerator
from posttrain.core.generation.openai import OpenAIGenerator
from posttrain.core.generation.scripted import ScriptedGenerator
from posttrain.core.generation.tool_loop import Conversation, ToolLoop
from posttrain.core.generation.vllm import VLLMGenerator

__all__ = [
    "BaseGenerator",
    "Conversation",
    "DraftStats",
    "GenerationError",
    "GenerationSpec",
    "Generator",
    "HFGenerator",
    "OpenAIGenerator",
    "Prompt",
    "SamplingParams",
    "ScriptedGenerator",
    "SpeculativeSpec",
    "ToolLoop",
    "VLLMGenerator",
    "as_messages",
    "derive_seed",
    "make_generator",
    "prompt_key",
    "sample_rng",
    "truncate_at_stop",
]


def make_generator(spec: GenerationSpec, model: str | None = None) -> BaseGenerator:
    """The generator `spec` describes; `model` (e.g. a resolved stage path) overrides `spec.model`."""
    name = model or spec.model
    if spec.backend == "scripted":
        if not name:
            raise PluginError("scripted backend: set model to the teacher's 'module:function'")
        return ScriptedGenerator(name, spec.options)
    if not name:
        raise GenerationError(f"{spec.backend} backend: set model (a hub name or path, or the served model's name)")
    if spec.backend == "hf":
        return HFGenerator.from_pretrained(name, spec)
    if spec.backend == "vllm":
        return VLLMGenerator(name, spec)
    return OpenAIGenerator(name, spec)
