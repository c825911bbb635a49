"""Text generation, one home for it: `make_generator(spec).generate(prompts, n, sampling)` -> n completions each.

Distillation teachers, the generative reward model's judge and evaluation all sample text; they do it
through this module so that a recipe can swap the engine without touching them. Backends:

- `hf`: a transformers causal LM in process, batched `generate` with left padding;
- `vllm`: vLLM's offline engine (optional extra, GPU only, imported lazily);
- `openai`: any OpenAI-compatible `/v1/chat/completions` endpoint (DeepSeek's API, a vLLM or SGLang
  server), with a thread pool, retries with exponential backoff and per-request timeouts;
- `scripted`: a `module:function` called as `fn(prompts, n, sampling, **options) -> list[list[str]]`.

A prompt is a string or a chat (a list of `{"role", "content"}` messages). A completion is the
generated text only (no prompt), special tokens skipped, `<think>` kept. Seeds: `scripted`,
`openai` and `vllm` derive a stream per (seed, prompt, sample), so results do not depend on how
prompts are batched; `hf` seeds each batch from (seed, its prompts), so a run is reproducible when
it is called with the same batches (the distill stage's fixed chunks are).

This is a leaf module: it imports nothing of ours but `posttrain.errors`, `posttrain.plugins` and
`posttrain.models`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, Protocol, Union

from pydantic import BaseModel, ConfigDict, Field

from posttrain.errors import MissingDependencyError, PluginError, PosttrainError

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


class GenerationSpec(BaseModel):
    """Which engine generates, usable as a recipe sub-section (a teacher, a judge, an evaluator)."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["hf", "vllm", "openai", "scripted"]
    #: hub name or path (hf, vllm), the served model's name (openai), `module:function` (scripted).
    model: str | None = None
    #: openai: the endpoint up to `/v1`, e.g. `http://127.0.0.1:8000/v1` or `https://api.deepseek.com/v1`.
    base_url: str | None = None
    #: openai: environment variable holding the API key (no key sent when it is unset).
    api_key_env: str = "OPENAI_API_KEY"
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


def _short(prompt: Prompt, limit: int = 80) -> str:
    text = prompt_key(prompt)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class BaseGenerator:
    """Shared behaviour: `generate_with_errors` falls back to one prompt at a time when a batch fails."""

    name = "generator"

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


def _check_shape(out: Any, prompts: Sequence[Prompt], n: int, who: str) -> list[list[str]]:
    if not isinstance(out, list) or len(out) != len(prompts):
        got = len(out) if isinstance(out, list) else type(out).__name__
        raise GenerationError(f"{who} returned {got} results for {len(prompts)} prompts (expected a list per prompt)")
    for i, row in enumerate(out):
        if not isinstance(row, list) or len(row) != n or not all(isinstance(c, str) for c in row):
            raise GenerationError(f"{who}: prompt {i} ({_short(prompts[i])!r}): expected {n} strings, got {row!r:.200}")
    return out


# --------------------------------------------------------------------------------------------------
# scripted


class ScriptedGenerator(BaseGenerator):
    """A `module:function` teacher: `fn(prompts, n, sampling, **options) -> list[list[str]]`."""

    def __init__(self, ref: str, options: dict[str, Any] | None = None):
        from posttrain.plugins import load_object

        self.name = ref
        self.fn = load_object(ref)
        if not callable(self.fn):
            raise PluginError(f"scripted teacher {ref!r} is a {type(self.fn).__name__}, not a function")
        self.options = dict(options or {})

    def generate(
        self, prompts: Sequence[Prompt], n: int = 1, sampling: SamplingParams | None = None
    ) -> list[list[str]]:
        sampling = sampling or SamplingParams()
        out = self.fn(list(prompts), n, sampling, **self.options)
        return [[truncate_at_stop(c, sampling.stop) for c in row] for row in _check_shape(out, prompts, n, self.name)]


# --------------------------------------------------------------------------------------------------
# hf


class HFGenerator(BaseGenerator):
    """transformers `generate` in process: left padding, batches of `batch_size` sequences, greedy at T=0."""

    def __init__(self, model: Any, tokenizer: Any, spec: GenerationSpec | None = None):
        """Wrap an already-loaded model and tokenizer (e.g. the policy being trained)."""
        self.spec = spec or GenerationSpec(backend="hf")
        self.model = model
        self.tokenizer = tokenizer
        self.name = str(getattr(getattr(model, "config", None), "_name_or_path", "") or "hf")
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token

    @classmethod
    def from_pretrained(cls, name_or_path: str, spec: GenerationSpec | None = None) -> HFGenerator:
        import torch

        from posttrain.models import load_tokenizer, torch_dtype

        spec = spec or GenerationSpec(backend="hf", model=name_or_path)
        from transformers import AutoModelForCausalLM

        device = spec.options.get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
        kwargs = {k: v for k, v in spec.options.items() if k not in {"device", "progress"}}
        try:
            model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=torch_dtype(spec.dtype), **kwargs)
            tokenizer = load_tokenizer(name_or_path, padding_side="left")
        except OSError as exc:
            raise GenerationError(f"hf backend: cannot load model {name_or_path!r}: {exc}") from exc
        model.to(device)
        return cls(model, tokenizer, spec)

    def _render(self, prompt: Prompt) -> tuple[str, bool]:
        """Text to tokenize, and whether the tokenizer should add its special tokens (not after a template)."""
        if isinstance(prompt, str) and not self.spec.chat:
            return prompt, True
        if getattr(self.tokenizer, "chat_template", None) is None:
            raise GenerationError(f"hf backend: {self.name!r} has no chat template, so chat prompts cannot be "
                                  "rendered; pass plain-text prompts or set chat: false")
        text = self.tokenizer.apply_chat_template(as_messages(prompt), tokenize=False, add_generation_prompt=True)
        return text, False

    def generate(
        self, prompts: Sequence[Prompt], n: int = 1, sampling: SamplingParams | None = None
    ) -> list[list[str]]:
        from tqdm.auto import tqdm

        sampling = sampling or SamplingParams()
        per_batch = max(1, self.spec.batch_size // n)
        batches = [list(range(i, min(i + per_batch, len(prompts)))) for i in range(0, len(prompts), per_batch)]
        out: list[list[str]] = [[] for _ in prompts]
        was_training = self.model.training
        self.model.eval()
        show = self.spec.options.get("progress", len(batches) > 4)
        try:
            for idx in tqdm(batches, desc="generate", unit="batch", disable=not show, leave=False):
                for i, row in zip(idx, self._batch([self._render(prompts[i]) for i in idx], n, sampling), strict=True):
                    out[i] = row
        finally:
            self.model.train(was_training)
        return out

    def _batch(self, rendered: list[tuple[str, bool]], n: int, sampling: SamplingParams) -> list[list[str]]:
        import torch

        tok = self.tokenizer
        tok.padding_side = "left"
        ids = [tok(text, add_special_tokens=special)["input_ids"] for text, special in rendered]
        enc = tok.pad({"input_ids": ids}, padding=True, return_tensors="pt").to(self.model.device)
        texts = [text for text, _ in rendered]
        greedy = sampling.temperature == 0
        kwargs: dict[str, Any] = {
            "max_new_tokens": sampling.max_new_tokens,
            "do_sample": not greedy,
            "num_return_sequences": 1 if greedy else n,  # greedy samples are all the same: decode once
            "pad_token_id": tok.pad_token_id,
            "use_cache": True,  # a model saved by a trainer has it off: without it every token recomputes all
        }
        if not greedy:
            kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        if sampling.stop:
            kwargs.update(stop_strings=sampling.stop, tokenizer=tok)
        if sampling.seed is not None and not greedy:
            torch.manual_seed(derive_seed(sampling.seed, texts))
        with torch.inference_mode():
            seqs = self.model.generate(**enc, **kwargs)
        new = seqs[:, enc["input_ids"].shape[1]:]
        decoded = tok.batch_decode(new, skip_special_tokens=True)
        decoded = [truncate_at_stop(d, sampling.stop) for d in decoded]
        if greedy:
            return [[d] * n for d in decoded]
        return [decoded[i * n:(i + 1) * n] for i in range(len(texts))]


# --------------------------------------------------------------------------------------------------
# vllm


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


# --------------------------------------------------------------------------------------------------
# openai


class _Retryable(Exception):
    def __init__(self, message: str, wait_s: float | None = None):
        super().__init__(message)
        self.wait_s = wait_s


class OpenAIGenerator(BaseGenerator):
    """An OpenAI-compatible `/chat/completions` endpoint: one request per sample, `concurrency` in flight.

    Retries 429, 5xx, connection errors and timeouts with exponential backoff (`options.backoff_s`,
    default 1 s, doubling; a `Retry-After` header is honoured up to 60 s); other 4xx fail at once.
    A reasoning model's separate `reasoning_content` (DeepSeek, vLLM's reasoning parser) is put back
    in front of the answer as `<think>...</think>` so the completion has R1's format.
    """

    def __init__(self, model: str, spec: GenerationSpec):
        if not spec.base_url:
            raise GenerationError("openai backend: set base_url, e.g. http://127.0.0.1:8000/v1 or "
                                  "https://api.deepseek.com/v1")
        self.spec = spec
        self.name = model
        self.url = spec.base_url.rstrip("/") + "/chat/completions"
        self.api_key = os.environ.get(spec.api_key_env)
        opts = dict(spec.options)
        self.backoff_s = float(opts.pop("backoff_s", 1.0))
        self.merge_reasoning = bool(opts.pop("merge_reasoning", True))
        #: Other options go into every request body (e.g. `extra_body`-style fields a server accepts).
        self.extra_body = opts

    def generate(
        self, prompts: Sequence[Prompt], n: int = 1, sampling: SamplingParams | None = None
    ) -> list[list[str]]:
        outs, errors = self.generate_with_errors(prompts, n, sampling)
        for err in errors:
            if err is not None:
                raise GenerationError(err)
        return outs

    def generate_with_errors(
        self, prompts: Sequence[Prompt], n: int = 1, sampling: SamplingParams | None = None
    ) -> tuple[list[list[str]], list[str | None]]:
        sampling = sampling or SamplingParams()
        jobs = [(i, j) for i in range(len(prompts)) for j in range(n)]
        results: dict[tuple[int, int], str] = {}
        failures: dict[int, str] = {}
        with ThreadPoolExecutor(max_workers=min(self.spec.concurrency, max(1, len(jobs)))) as pool:
            futures = {job: pool.submit(self._sample, prompts[job[0]], job[1], sampling) for job in jobs}
            for (i, j), fut in futures.items():
                try:
                    results[(i, j)] = fut.result()
                except GenerationError as exc:
                    failures.setdefault(i, f"prompt {i} ({_short(prompts[i])!r}): {exc}")
        outs = [[] if i in failures else [results[(i, j)] for j in range(n)] for i in range(len(prompts))]
        return outs, [failures.get(i) for i in range(len(prompts))]

    def _sample(self, prompt: Prompt, index: int, sampling: SamplingParams) -> str:
        body: dict[str, Any] = {
            "model": self.name,
            "messages": as_messages(prompt),
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "max_tokens": sampling.max_new_tokens,
            "n": 1,
            **self.extra_body,
        }
        if sampling.seed is not None:
            body["seed"] = derive_seed(sampling.seed, prompt_key(prompt), index)
        if sampling.stop:
            body["stop"] = sampling.stop
        attempts = self.spec.max_retries + 1
        last = ""
        for attempt in range(attempts):
            try:
                return truncate_at_stop(self._post(body), sampling.stop)
            except _Retryable as exc:
                last = str(exc)
                if attempt + 1 < attempts:
                    wait = exc.wait_s if exc.wait_s is not None else self.backoff_s * 2**attempt
                    log.debug("openai: %s; retry %d/%d in %.2fs", last, attempt + 1, self.spec.max_retries, wait)
                    time.sleep(wait)
        raise GenerationError(f"{self.url}: failed after {attempts} attempt(s): {last}")

    def _post(self, body: dict[str, Any]) -> str:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, data=json.dumps(body).encode(), headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.spec.timeout_s) as response:
                payload = response.read()
        except urllib.error.HTTPError as exc:
            text = exc.read().decode(errors="replace")[:300]
            if exc.code == 429 or exc.code >= 500:
                retry_after = exc.headers.get("Retry-After") if exc.headers else None
                wait = min(float(retry_after), 60.0) if retry_after and _is_number(retry_after) else None
                raise _Retryable(f"HTTP {exc.code}: {text}", wait) from None
            raise GenerationError(f"{self.url}: HTTP {exc.code} (not retried): {text}") from None
        except TimeoutError as exc:
            raise _Retryable(f"timed out after {self.spec.timeout_s}s ({exc})") from None
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError):
                raise _Retryable(f"timed out after {self.spec.timeout_s}s") from None
            raise _Retryable(f"cannot reach the server: {exc.reason}") from None
        except (ConnectionError, OSError) as exc:
            raise _Retryable(f"connection failed: {exc}") from None
        try:
            message = json.loads(payload)["choices"][0]["message"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise GenerationError(f"{self.url}: unexpected response {payload[:300]!r}") from None
        content = message.get("content") or ""
        reasoning = message.get("reasoning_content") or message.get("reasoning")
        if reasoning and self.merge_reasoning and "<think>" not in content:
            content = f"<think>{reasoning}</think>\n{content.lstrip()}"
        return content


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


# --------------------------------------------------------------------------------------------------


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


def sample_rng(seed: int | None, prompt: Prompt, index: int) -> random.Random:
    """The RNG a scripted teacher uses for sample `index` of `prompt`: independent of batching."""
    return random.Random(derive_seed(seed, prompt_key(prompt), index))
