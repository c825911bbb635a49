"""The `hf` backend: a transformers causal LM in process, batched `generate` with left padding.

With `speculative: {mtp: true}` and a model that has DeepSeek-V3's MTP module, decoding is speculative
(`speculative.py`): same outputs in distribution (greedy: identical), fewer main-model passes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from posttrain.core.chat import think_opener
from posttrain.core.generation.base import (
    BaseGenerator,
    DraftStats,
    GenerationError,
    GenerationSpec,
    Prompt,
    SamplingParams,
    as_messages,
    derive_seed,
    truncate_at_stop,
)

log = logging.getLogger("posttrain.generation")


class HFGenerator(BaseGenerator):
    """transformers `generate` in process: left padding, batches of `batch_size` sequences, greedy at T=0."""

    def __init__(self, model: Any, tokenizer: Any, spec: GenerationSpec | None = None):
        """Wrap an already-loaded model and tokenizer (e.g. the policy being trained)."""
        from posttrain.core.models import without_router_logits

        self.spec = spec or GenerationSpec(backend="hf")
        self.model = without_router_logits(model)  # an MoE's router loss crashes cached generation
        self.tokenizer = tokenizer
        self.name = str(getattr(getattr(model, "config", None), "_name_or_path", "") or "hf")
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        #: Drafted/accepted token counts of speculative decoding so far.
        self.draft_stats = DraftStats()
        #: Tokens each completion of the last `generate` call took (same shape as its result), up to and including
        #: the end-of-sequence token: what an eval's response length counts.
        self.last_lengths: list[list[int]] = []
        self.speculative = self._speculative()
        #: The model's context (max_position_embeddings); new tokens are clipped to what a batch's prompts leave.
        self.context: int | None = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        self._clip_warned = False

    def _speculative(self) -> bool:
        """Whether to draft with the model's MTP module (asked for, and there is one)."""
        from posttrain.core.mtp import has_mtp

        wanted = self.spec.speculative is not None and self.spec.speculative.mtp
        if wanted and not has_mtp(self.model):
            log.warning("hf backend: speculative.mtp is set but %s has no MTP module; decoding plainly", self.name)
        return wanted and has_mtp(self.model)

    @classmethod
    def from_pretrained(cls, name_or_path: str, spec: GenerationSpec | None = None) -> HFGenerator:
        import torch

        from posttrain.core.models import load_causal_lm, load_tokenizer, torch_dtype

        spec = spec or GenerationSpec(backend="hf", model=name_or_path)
        device = spec.options.get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
        kwargs = {k: v for k, v in spec.options.items() if k not in {"device", "progress"}}
        trust = bool(kwargs.pop("trust_remote_code", spec.trust_remote_code))
        try:  # load_causal_lm keeps a DeepSeek-V3 checkpoint's MTP module (speculative decoding drafts with it)
            model = load_causal_lm(name_or_path, dtype=torch_dtype(spec.dtype), trust_remote_code=trust, **kwargs)
            tokenizer = load_tokenizer(name_or_path, padding_side="left", trust_remote_code=trust)
        except OSError as exc:
            raise GenerationError(f"hf backend: cannot load model {name_or_path!r}: {exc}") from exc
        model.to(device)
        return cls(model, tokenizer, spec)

    def _render(self, prompt: Prompt) -> tuple[str, bool]:
        """Text to tokenize, and whether the tokenizer should add its special tokens (not after a template).

        A chat-templated prompt that ends by opening `<think>` makes each completion start with that opener."""
        if isinstance(prompt, str) and not self.spec.chat:
            return prompt, True
        if getattr(self.tokenizer, "chat_template", None) is None:
            raise GenerationError(f"hf backend: {self.name!r} has no chat template, so chat prompts cannot be "
                                  "rendered; pass plain-text prompts or set chat: false")
        text = self.tokenizer.apply_chat_template(as_messages(prompt), tokenize=False, add_generation_prompt=True,
                                                  **self.template_kwargs)
        return text, False

    def read_turn(self, text: str) -> dict[str, Any]:
        from posttrain.core.tool_calls import parse_turn

        return parse_turn(self.tokenizer, text)

    def generate(
        self, prompts: Sequence[Prompt], n: int = 1, sampling: SamplingParams | None = None
    ) -> list[list[str]]:
        from tqdm.auto import tqdm

        sampling = sampling or SamplingParams()
        per_batch = max(1, self.spec.batch_size // n)
        batches = [list(range(i, min(i + per_batch, len(prompts)))) for i in range(0, len(prompts), per_batch)]
        out: list[list[str]] = [[] for _ in prompts]
        lengths: list[list[int]] = [[] for _ in prompts]
        was_training = self.model.training
        self.model.eval()
        show = self.spec.options.get("progress", len(batches) > 4)
        try:
            for idx in tqdm(batches, desc="generate", unit="batch", disable=not show, leave=False):
                texts, counts = self._batch([self._render(prompts[i]) for i in idx], n, sampling)
                for i, row, count in zip(idx, texts, counts, strict=True):
                    out[i], lengths[i] = row, count
        finally:
            self.model.train(was_training)
        self.last_lengths = lengths
        return out

    def _batch(self, rendered: list[tuple[str, bool]], n: int,
               sampling: SamplingParams) -> tuple[list[list[str]], list[list[int]]]:
        """(completions, their token counts), n per prompt."""
        import torch

        tok = self.tokenizer
        tok.padding_side = "left"
        ids = [tok(text, add_special_tokens=special)["input_ids"] for text, special in rendered]
        enc = tok.pad({"input_ids": ids}, padding=True, return_tensors="pt").to(self.model.device)
        texts = [text for text, _ in rendered]
        greedy = sampling.temperature == 0
        max_new = self._room(enc["input_ids"].shape[1], sampling.max_new_tokens)
        kwargs: dict[str, Any] = {
            "max_new_tokens": max_new,
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
        if self.speculative:
            new: Any = self._speculative_batch(enc, 1 if greedy else n, sampling, max_new)
        else:
            with torch.inference_mode():
                seqs = self.model.generate(**enc, **kwargs)
            new = seqs[:, enc["input_ids"].shape[1]:]
        decoded = tok.batch_decode(new, skip_special_tokens=True)
        decoded = [truncate_at_stop(d, sampling.stop) for d in decoded]
        counts = self._lengths(new)
        # A template that opens `<think>` in the prompt: the completion is the whole assistant turn (core/chat.py).
        openers = [think_opener(text) if not special else "" for text, special in rendered]
        if greedy:
            return [[openers[i] + d] * n for i, d in enumerate(decoded)], [[c] * n for c in counts]
        return ([[openers[i] + d for d in decoded[i * n:(i + 1) * n]] for i in range(len(texts))],
                [counts[i * n:(i + 1) * n] for i in range(len(texts))])

    def _room(self, prompt_tokens: int, wanted: int) -> int:
        """New tokens a batch may take: `wanted`, clipped (with one warning) to what its longest prompt leaves of the
        model's context; generating past the positions a model was built for gives garbage or an index error."""
        if self.context is None or prompt_tokens + wanted <= self.context:
            return wanted
        room = self.context - prompt_tokens
        if room < 1:
            raise GenerationError(f"hf backend: a prompt of {prompt_tokens} tokens fills the whole context of "
                                  f"{self.name} ({self.context} tokens); shorten the prompts")
        if not self._clip_warned:
            log.warning("hf backend: max_new_tokens %d does not fit the context of %s (%d tokens) after a prompt of "
                        "%d tokens: clipped to %d", wanted, self.name, self.context, prompt_tokens, room)
            self._clip_warned = True
        return room

    def _eos_ids(self) -> list[int]:
        eos = self.model.generation_config.eos_token_id
        eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in eos_ids:
            eos_ids.append(self.tokenizer.eos_token_id)
        return eos_ids

    def _lengths(self, new: Any) -> list[int]:
        """Tokens each sequence generated, up to and including its end-of-sequence token (not the padding after)."""
        eos, pad = set(self._eos_ids()), self.tokenizer.pad_token_id
        counts = []
        for seq in new.tolist() if hasattr(new, "tolist") else new:
            n = len(seq)
            for i, token in enumerate(seq):
                if token in eos or token == pad:
                    n = i + 1 if token in eos else i
                    break
            counts.append(n)
        return counts

    def _speculative_batch(self, enc: Any, copies: int, sampling: SamplingParams,
                           max_new: int) -> list[list[int]]:
        """New tokens per sequence, drafted by the MTP module (`copies` sequences per prompt, in prompt order)."""
        from posttrain.core.generation.speculative import MTPDecoder

        stop = None
        if sampling.stop:
            tok, stops = self.tokenizer, sampling.stop
            window = max(len(s) for s in stops) + 2  # tokens: each decodes to at least one character

            def stop(tokens: list[int]) -> bool:
                tail = tok.decode(tokens[-window:], skip_special_tokens=True)
                return any(s in tail for s in stops)

        eos_ids = self._eos_ids()
        decoder = MTPDecoder(self.model)
        out = decoder.generate(enc["input_ids"].repeat_interleave(copies, 0),
                               enc["attention_mask"].repeat_interleave(copies, 0), max_new,
                               temperature=sampling.temperature, top_p=sampling.top_p, eos_token_ids=eos_ids,
                               stop=stop)
        self.draft_stats.add(decoder.stats)
        log.debug("hf backend: MTP draft acceptance %.3f over %d drafts", decoder.stats.acceptance or 0.0,
                  decoder.stats.drafted)
        return out
