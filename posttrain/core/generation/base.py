"""What every generation backend shares: the spec, sampling parameters, seeding and batch-failure fallback."""


from __future__ import annotations

import hashlib
import json
import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Annotated, Any, Literal, Protocol, Union

from pydantic import BaseModel, ConfigDict, Field

from posttrain.core.errors import PosttrainError
from posttrain.core.identity import ADDED, MarkedModel

log = logging.getLogger("posttrain.generation")

#: A prompt: plain text, or a chat as a list of `{"role": ..., "content": ...}` messages.
Prompt = Union[str, list[dict[str, Any]]]  # noqa: UP007 (a runtime alias, readable on 3.10)


class GenerationError(PosttrainError):
    """A prompt could not be completed (after retries): the message names the prompt and the cause."""


class SamplingParams(BaseModel):
    """How to sample. `temperature: 0` is greedy decoding."""

    model_config = ConfigDict(extra="forbid")

    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(256, ge=1)
    seed: int | None = None
    #: Generation stops at (and the completion ends before) the first of these strings.
    stop: list[str] | None = None


class SpeculativeSpec(BaseModel):
    """Speculative decoding drafted by the model's own multi-token-prediction (MTP) module (DeepSeek-V3).

    Same sampling distribution, fewer main-model passes. `hf`: one drafted token per step, a model without
    an MTP module decodes plainly; `vllm`: its `mtp` speculative method with `num_tokens` drafts a step.
    """

    model_config = ConfigDict(extra="forbid")

    mtp: bool = True
    #: Draft tokens per step (vLLM; the `hf` backend drafts one).
    num_tokens: int = Field(1, ge=1)


@dataclass
class DraftStats:
    """Counts over generate calls: drafts proposed and accepted, decoding steps, tokens emitted."""

    drafted: int = 0
    accepted: int = 0
    steps: int = 0
    tokens: int = 0

    @property
    def acceptance(self) -> float | None:
        """Share of drafted tokens the main model accepted (None before any draft)."""
        return self.accepted / self.drafted if self.drafted else None

    def add(self, other: DraftStats) -> None:
        self.drafted += other.drafted
        self.accepted += other.accepted
        self.steps += other.steps
        self.tokens += other.tokens


class GenerationSpec(MarkedModel):
    """Which engine generates, usable as a recipe sub-section (a teacher, a judge, an evaluator)."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["hf", "vllm", "openai", "scripted"]
    #: hub name or path (hf, vllm), the served model's name (openai), `module:function` (scripted).
    model: str | None = None
    #: openai: the endpoint up to `/v1`, e.g. `http://127.0.0.1:8000/v1` or `https://api.deepseek.com/v1`.
    base_url: str | None = None
    #: openai: environment variable holding the API key (no key sent when it is unset).
    api_key_env: str = "OPENAI_API_KEY"
    #: openai: seconds to wait for the server's next chunk of a streamed answer (the whole answer may take longer;
    #: unstreamed, `max_new_tokens` / 10 seconds are added).
    timeout_s: float = Field(60, gt=0)
    max_retries: int = Field(3, ge=0)
    concurrency: int = Field(8, ge=1)
    #: hf: sequences per forward batch (prompts x samples); vllm ignores it.
    batch_size: int = Field(64, ge=1)
    dtype: str = "auto"
    #: Apply the tokenizer's chat template to string prompts (chat lists always get it).
    chat: bool = False
    #: Backend-specific extras: vllm engine kwargs, scripted teacher kwargs, hf `device`, openai `backoff_s`.
    options: dict[str, Any] = Field(default_factory=dict)
    #: hf, vllm: speculative decoding with the model's MTP module (`speculative: {mtp: true}`).
    speculative: Annotated[SpeculativeSpec | None, ADDED] = None
    #: hf, vllm: let the checkpoint's own tokenizer (and, where transformers has no built-in architecture, model)
    #: code run. Unset: the recipe's `model.trust_remote_code` when the model is the base or a stage's.
    trust_remote_code: Annotated[bool | None, ADDED] = None

    @property
    def loads_weights(self) -> bool:
        """Whether the engine loads model weights itself (hf, vllm), so that `model` is a weights reference (a
        stage's name, a folder, a hub name); an OpenAI-compatible server or a scripted teacher names its own."""
        return self.backend in ("hf", "vllm")


class Generator(Protocol):
    def generate(
        self, prompts: Sequence[Prompt], n: int = 1, sampling: SamplingParams | None = None
    ) -> list[list[str]]:
        """n completions per prompt, in prompt order. Raises `GenerationError` if any prompt fails."""
        ...

    def generate_with_errors(
        self, prompts: Sequence[Prompt], n: int = 1, sampling: SamplingParams | None = None
    ) -> tuple[list[list[str]], list[str | None]]:
        """(completions, errors) per prompt: a failed prompt has `[]` and its error message; the rest go on."""
        ...


def derive_seed(*parts: Any) -> int:
    """A stable 31-bit seed from any values (same on every machine and Python run, unlike `hash`).

    >>> derive_seed(0, "Compute 1+2.") == derive_seed(0, "Compute 1+2.")
    True
    """
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def prompt_key(prompt: Prompt) -> str:
    """A prompt as one string, for seeding and error messages."""
    return prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True)


def as_messages(prompt: Prompt) -> list[dict[str, Any]]:
    """A chat for `prompt`: a string becomes one user message."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def truncate_at_stop(text: str, stop: Sequence[str] | None) -> str:
    """The text before the first stop string (engines differ on whether they include it; we never do)."""
    if not stop:
        return text
    cut = min((i for s in stop if s and (i := text.find(s)) >= 0), default=-1)
    return text if cut < 0 else text[:cut]


def short_prompt(prompt: Prompt, limit: int = 80) -> str:
    text = prompt_key(prompt)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class BaseGenerator:
    """Shared behaviour: `generate_with_errors` falls back to one prompt at a time when a batch fails; `generate_turns`
    gives a chat's next assistant turns as messages, tool calls read out (the tool loop's one step)."""

    name = "generator"
    #: Extra arguments of the chat template while `generate_turns` runs (the tools' schemas, `tools=`).
    template_kwargs: Mapping[str, Any] = MappingProxyType({})

    def generate_turns(
        self, chats: Sequence[list[dict[str, Any]]], n: int, sampling: SamplingParams, tools: list[dict[str, Any]]
    ) -> tuple[list[list[dict[str, Any]]], list[str | None]]:
        """n next assistant turns per chat, each a message (`content`, and `tool_calls` when it called a tool), the
        tools' schemas given to the template; `([], error)` for a chat that failed. A backend that renders the
        template itself reads the calls with the tokenizer's response parser (`read_turn`)."""
        self.template_kwargs = {"tools": tools}
        try:
            texts, errors = self.generate_with_errors(chats, n, sampling)
        finally:
            self.template_kwargs = MappingProxyType({})
        return [[self.read_turn(text) for text in row] for row in texts], errors

    def read_turn(self, text: str) -> dict[str, Any]:
        """A generated turn as a message: plain content here; backends with a tokenizer parse tool calls."""
        return {"role": "assistant", "content": text}

    def generate(
        self, prompts: Sequence[Prompt], n: int = 1, sampling: SamplingParams | None = None
    ) -> list[list[str]]:
        raise NotImplementedError

    def generate_with_errors(
        self, prompts: Sequence[Prompt], n: int = 1, sampling: SamplingParams | None = None
    ) -> tuple[list[list[str]], list[str | None]]:
        try:
            return self.generate(prompts, n, sampling), [None] * len(prompts)
        except Exception as exc:
            if len(prompts) <= 1:
                return [[] for _ in prompts], [_message(exc)] * len(prompts)
            log.debug("%s: batch of %d failed (%s); retrying one prompt at a time", self.name, len(prompts), exc)
        outs: list[list[str]] = []
        errors: list[str | None] = []
        for prompt in prompts:
            try:
                outs.append(self.generate([prompt], n, sampling)[0])
                errors.append(None)
            except Exception as exc:
                outs.append([])
                errors.append(_message(exc))
        return outs, errors


def _message(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, GenerationError) else f"{type(exc).__name__}: {exc}"


def check_shape(out: Any, prompts: Sequence[Prompt], n: int, who: str) -> list[list[str]]:
    if not isinstance(out, list) or len(out) != len(prompts):
        got = len(out) if isinstance(out, list) else type(out).__name__
        raise GenerationError(f"{who} returned {got} results for {len(prompts)} prompts (expected a list per prompt)")
    for i, row in enumerate(out):
        if not isinstance(row, list) or len(row) != n or not all(isinstance(c, str) for c in row):
            raise GenerationError(f"{who}: prompt {i} ({short_prompt(prompts[i])!r}): expected {n} strings, "
                                  f"got {row!r:.200}")
    return out


def sample_rng(seed: int | None, prompt: Prompt, index: int) -> random.Random:
    """The RNG a scripted teacher uses for sample `index` of `prompt`: independent of batching."""
    return random.Random(derive_seed(seed, prompt_key(prompt), index))
