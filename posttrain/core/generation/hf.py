"""The `hf` backend: a transformers causal LM in process, decoded by posttrain's decode loop (`decode.py`).

Prompts are bucketed by length, left-padded and decoded in batches of `batch_size` sequences; finished rows
leave their batch. Greedy outputs are `generate`'s token for token; each sampled completion is seeded from
(seed, prompt, sample index), so it does not depend on batching. A model whose generation config asks for
what the loop does not do (a repetition penalty, say) is decoded by transformers `generate`, as before.
With `speculative: {mtp: true}` and a model that has DeepSeek-V3's MTP module, the MTP module drafts
(`speculative.py`): same outputs in distribution (greedy: identical), fewer main-model passes.
`options: {cache: static}` pre-allocates the KV cache (transformers' `StaticCache`) where the family allows.
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
    prompt_key,
    truncate_at_stop,
)

log = logging.getLogger("posttrain.generation")


class HFGenerator(BaseGenerator):
    """A transformers model in process: length-bucketed, left-padded batches of `batch_size` sequences; T=0 greedy."""

    def __init__(self, model: Any, tokenizer: Any, spec: GenerationSpec | None = None):
        """Wrap an already-loaded model and tokenizer (e.g. the policy being trained)."""
        from posttrain.core.generation.decode import unsupported
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
        #: Why this model is decoded by transformers `generate` instead of the decode loop (None: it is not).
        self.fallback = unsupported(self.model)
        if self.fallback is not None:
            log.info("hf backend: %s is decoded by transformers generate: %s", self.name, self.fallback)
            self.speculative = False
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
        kwargs = {k: v for k, v in spec.options.items() if k not in {"device", "progress", "cache"}}
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
        rendered = [self._render(p) for p in prompts]
        tok = self.tokenizer
        ids = [tok(text, add_special_tokens=special)["input_ids"] for text, special in rendered]
        copies = 1 if sampling.temperature == 0 else n  # greedy samples are all the same: decode once
        per_batch = max(1, self.spec.batch_size // copies)
        # Prompts of similar length share a batch (less padding to carry through every step); with the decode
        # loop a completion does not depend on its batch, so this changes no output.
        order = sorted(range(len(prompts)), key=lambda i: len(ids[i])) if self.fallback is None else \
            list(range(len(prompts)))
        batches = [order[i:i + per_batch] for i in range(0, len(order), per_batch)]
        out: list[list[str]] = [[] for _ in prompts]
        lengths: list[list[int]] = [[] for _ in prompts]
        was_training = self.model.training
        self.model.eval()
        show = self.spec.options.get("progress", len(batches) > 4)
        try:
            for idx in tqdm(batches, desc="generate", unit="batch", disable=not show, leave=False):
                # seeds: per completion from its prompt; `generate` (the fallback) per batch from its texts, as before
                keys = [prompt_key(prompts[i]) if self.fallback is None else rendered[i][0] for i in idx]
                tokens = self._batch([ids[i] for i in idx], keys, copies, sampling)
                for j, i in enumerate(idx):
                    rows = tokens[j * copies:(j + 1) * copies]
                    texts = tok.batch_decode(rows, skip_special_tokens=True)
                    texts = [truncate_at_stop(t, sampling.stop) for t in texts]
                    opener = think_opener(rendered[i][0]) if not rendered[i][1] else ""
                    # A template that opens `<think>` in the prompt: the completion is the whole assistant turn.
                    out[i] = [opener + t for t in texts] * (n // copies)
                    lengths[i] = [len(r) for r in rows] * (n // copies)
        finally:
            self.model.train(was_training)
        self.last_lengths = lengths
        return out

    def _batch(self, ids: list[list[int]], keys: list[str], copies: int, sampling: SamplingParams) -> list[list[int]]:
        """New tokens (up to and including end-of-sequence) of `copies` completions per prompt, in prompt order."""
        import torch

        tok = self.tokenizer
        tok.padding_side = "left"
        enc = tok.pad({"input_ids": ids}, padding=True, return_tensors="pt").to(self.model.device)
        greedy = sampling.temperature == 0
        max_new = self._room(enc["input_ids"].shape[1], sampling.max_new_tokens)
        if self.fallback is not None:
            return self._generate(enc, keys, copies, sampling, max_new)
        from posttrain.core.generation.decode import Decoder

        seeds = None
        if sampling.seed is not None and not greedy:
            seeds = torch.tensor([derive_seed(sampling.seed, key, j) for key in keys for j in range(copies)],
                                 dtype=torch.long, device=self.model.device)
        decoder = Decoder(self.model, draft=self.speculative, cache=self.spec.options.get("cache", "dynamic"))
        tokens = decoder.generate(enc["input_ids"].repeat_interleave(copies, 0),
                                  enc["attention_mask"].repeat_interleave(copies, 0), max_new,
                                  temperature=sampling.temperature, top_p=sampling.top_p, eos_token_ids=self._eos_ids(),
                                  stop=self._stop(sampling.stop), seeds=seeds)
        if self.speculative:
            self.draft_stats.add(decoder.stats)
            log.debug("hf backend: MTP draft acceptance %.3f over %d drafts", decoder.stats.acceptance or 0.0,
                      decoder.stats.drafted)
        return tokens

    def _generate(self, enc: Any, keys: list[str], copies: int, sampling: SamplingParams,
                  max_new: int) -> list[list[int]]:
        """transformers `generate`, for what the decode loop does not do (`self.fallback` says what)."""
        import torch

        tok = self.tokenizer
        greedy = sampling.temperature == 0
        kwargs: dict[str, Any] = {
            "max_new_tokens": max_new,
            "do_sample": not greedy,
            "num_return_sequences": copies,
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
            torch.manual_seed(derive_seed(sampling.seed, keys))
        with torch.inference_mode():
            seqs = self.model.generate(**enc, **kwargs)
        return self._until_eos(seqs[:, enc["input_ids"].shape[1]:].tolist())

    def _stop(self, stops: list[str] | None) -> Any:
        """`stop(tokens)` for the decode loop: whether a stop string ends the decoded tail (None without stops)."""
        if not stops:
            return None
        tok = self.tokenizer
        window = max(len(s) for s in stops) + 2  # tokens: each decodes to at least one character

        def stop(tokens: list[int]) -> bool:
            tail = tok.decode(tokens[-window:], skip_special_tokens=True)
            return any(s in tail for s in stops)

        return stop

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

    def _until_eos(self, rows: list[list[int]]) -> list[list[int]]:
        """Each row up to and including its end-of-sequence token (not the padding after)."""
        eos, pad = set(self._eos_ids()), self.tokenizer.pad_token_id
        out = []
        for seq in rows:
            n = len(seq)
            for i, token in enumerate(seq):
                if token in eos or token == pad:
                    n = i + 1 if token in eos else i
                    break
            out.append(seq[:n])
        return out
