"""The decode loop every in-process rollout goes through: the `hf` backend (eval, the pass-rate filter,
distillation teachers, generative judges) and GRPO's in-process rollouts.

Why not `model.generate`: on small models per-token overhead decides the speed, and `generate` keeps every
row of a batch to the end, finished or not, and runs a general loop (logits processors, stopping criteria,
cache and mask bookkeeping) around each step. Here

- a finished row leaves the batch (its cache rows are dropped), so a batch costs what its live rows cost;
- a step is one model call plus argmax or one inverse-CDF draw (`sampling.py`);
- the KV cache is transformers' own: dynamic by default, or pre-allocated (`cache="static"`, transformers'
  `StaticCache`, for families it marks compileable), whose rows are dropped the same way;
- with `draft=True` the model's DeepSeek-V3 MTP module drafts one token a step, verified in the same pass
  as the model's own next token (`speculative.py`): same distribution, fewer main-model passes.

Greedy decoding is `generate`'s token for token on every family (the same model calls: a 2D attention mask
from which the model builds its own masks, sliding windows included; `generate`'s position ids; the mask
left out when nothing is padded). Sampling draws each row from its own counter-based stream, so a
completion does not depend on its batch (`sampling.py`). Logits processors other than temperature, top-k
and top-p are not applied: `unsupported` names the settings that need `generate`, whose callers fall back to it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch

from posttrain.core.compat import with_cache
from posttrain.core.generation.base import DraftStats
from posttrain.core.generation.sampling import TOKEN, filter_logits, row_seeds, sample, uniforms

#: GenerationConfig fields that need a logits processor or a search the loop lacks, with their neutral value
#: (besides None and transformers' default).
NEEDS_GENERATE: dict[str, Any] = {
    "repetition_penalty": 1.0, "encoder_repetition_penalty": 1.0, "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0, "bad_words_ids": None, "min_length": 0, "min_new_tokens": 0, "min_p": 0.0,
    "typical_p": 1.0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0, "suppress_tokens": None,
    "begin_suppress_tokens": None, "forced_bos_token_id": None, "forced_eos_token_id": None, "sequence_bias": None,
    "exponential_decay_length_penalty": None, "guidance_scale": 1.0, "watermarking_config": None, "num_beams": 1,
    "penalty_alpha": 0.0, "diversity_penalty": 0.0, "top_h": None, "top_n_sigma": None,
}

Cache = Literal["dynamic", "static"]


def unsupported(model: Any, generation_config: Any = None) -> str | None:
    """Why the loop cannot stand in for `generate` on `model` with `generation_config` (default: the model's
    own), or None. Temperature, top-k and top-p are the caller's and are not looked at."""
    from transformers import GenerationConfig

    config = getattr(model, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False):
        return "not a decoder-only model"
    gen = generation_config if generation_config is not None else getattr(model, "generation_config", None)
    if gen is None:
        return None
    default = GenerationConfig()
    asks = [f"{name}={value!r}" for name, neutral in NEEDS_GENERATE.items()
            if (value := getattr(gen, name, None)) not in (None, [], {}, neutral, getattr(default, name, None))]
    return f"its generation config sets {', '.join(asks)}" if asks else None


def supports_static_cache(model: Any) -> bool:
    """Whether transformers pre-allocates this family's cache (`StaticCache`; it marks such models compileable)."""
    return bool(getattr(model, "_can_compile_fullgraph", False))


class Decoder:
    """Batched decoding of a causal LM with a KV cache; finished rows leave the batch.

    `draft=True`: DeepSeek-V3's MTP module drafts one token a step (`speculative.MTPDraft`); `cache`: the
    KV cache kind (`static` where `supports_static_cache`, else dynamic).
    """

    def __init__(self, model: Any, draft: bool = False, cache: Cache = "dynamic"):
        if hasattr(model, "get_base_model"):  # peft: its adapters live inside the base model's modules
            model = model.get_base_model()
        self.model = model
        self.drafter = None
        if draft:
            from posttrain.core.generation.speculative import MTPDraft

            self.drafter = MTPDraft(model)
        self.cache = cache if cache == "dynamic" or supports_static_cache(model) else "dynamic"
        self._forward = type(model).forward
        self._keep = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(self._forward).parameters else {}
        self.stats = DraftStats()
        self.last_stats = DraftStats()

    @torch.inference_mode()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        eos_token_ids: Sequence[int] = (),
        stop: Callable[[list[int]], bool] | None = None,
        seeds: torch.Tensor | None = None,
    ) -> list[list[int]]:
        """New tokens per row of the left-padded `input_ids`, each up to and including its end-of-sequence token.

        `seeds` (B,) int64: each row's sampling stream (drawn from torch's global generator when None).
        `stop(tokens)` is asked after each step for the unfinished rows (e.g. "a stop string was generated").
        """
        device = input_ids.device
        batch = input_ids.shape[0]
        greedy = temperature == 0
        if seeds is None:
            seeds = row_seeds(batch, device) if not greedy else torch.zeros(batch, dtype=torch.long, device=device)
        pick = Picker(greedy, temperature, top_k, top_p, seeds.to(device))
        state = RowState(batch, max_new_tokens, eos_token_ids, device)
        stepper = self.drafter or self
        cache = self._new_cache(input_ids.shape[1] + max_new_tokens + 2)
        stats = DraftStats()
        carry = stepper.prefill(input_ids, attention_mask, cache, state, pick)
        while True:
            keep = state.finish(stop)
            if keep is not None:
                if keep.numel() == 0:
                    break
                carry = {k: v[keep] if isinstance(v, torch.Tensor) else v for k, v in carry.items()}
                select_rows(cache, keep)
                stepper.select(keep)
            stats.steps += 1
            carry = stepper.step(carry, cache, state, pick, stats)
        result = state.result()
        stats.tokens = sum(len(t) for t in result)
        self.stats.add(stats)
        self.last_stats = stats
        return result

    # -- one token a step (the drafter's steps are in speculative.py) --------------------------------
    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, cache: Any, state: RowState,
                pick: Picker) -> dict[str, Any]:
        attn = attention_mask.long()
        # generate's choice: no mask at all when nothing is padded (sdpa then runs causal without one)
        self._masked = self.cache == "static" or not bool(attn.all())
        position = attn.cumsum(-1) - 1
        position = position.masked_fill(attn == 0, 0)
        logits = self.logits(input_ids, attn if self._masked else None, position, cache)
        x = pick(logits, state.rows, state.count)
        state.emit(x)
        return {"x": x, "position": position[:, -1] + 1, "attn": attn}

    def step(self, carry: dict[str, Any], cache: Any, state: RowState, pick: Picker,
             stats: DraftStats) -> dict[str, Any]:
        x, position = carry["x"], carry["position"]
        attn = torch.cat([carry["attn"], carry["attn"].new_ones(len(x), 1)], dim=1)
        logits = self.logits(x[:, None], attn if self._masked else None, position[:, None], cache)
        x = pick(logits, state.rows, state.count[state.rows])
        state.emit(x)
        return {"x": x, "position": position + 1, "attn": attn}

    def select(self, keep: torch.Tensor) -> None:
        """Per-row state beyond the carry and the cache: none here (the drafter has its own cache)."""

    def logits(self, ids: torch.Tensor, attn: torch.Tensor | None, position: torch.Tensor, cache: Any) -> torch.Tensor:
        """float32 logits of the last position, as `generate` computes them (the model's own head and masks)."""
        out = self.model(input_ids=ids, attention_mask=attn, position_ids=position, use_cache=True, return_dict=True,
                         **self._keep, **with_cache(self._forward, cache))
        return out.logits[:, -1].float()

    def _new_cache(self, length: int) -> Any:
        from transformers import DynamicCache, StaticCache

        config = self.model.config.get_text_config(decoder=True)
        if self.cache == "static" and self.drafter is None:
            return StaticCache(config=config, max_cache_len=length)
        return DynamicCache(config=config)


def select_rows(cache: Any, keep: torch.Tensor) -> None:
    """Keep only rows `keep` of every layer of `cache` (dynamic layers have a method; static ones are sliced)."""
    for layer in cache.layers:
        if not getattr(layer, "is_initialized", True):
            continue
        if getattr(layer, "is_compileable", False):
            layer.keys, layer.values = layer.keys[keep], layer.values[keep]
            if hasattr(layer, "batch_size"):
                layer.batch_size = len(keep)
        else:
            layer.batch_select_indices(keep)


class Picker:
    """The next token from float32 logits: argmax (greedy), or one draw from each row's own stream."""

    def __init__(self, greedy: bool, temperature: float, top_k: int, top_p: float, seeds: torch.Tensor):
        self.greedy, self.temperature, self.top_k, self.top_p, self.seeds = greedy, temperature, top_k, top_p, seeds

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        return filter_logits(logits, self.temperature, self.top_k, self.top_p).softmax(-1)

    def __call__(self, logits: torch.Tensor, rows: torch.Tensor, index: torch.Tensor, purpose: int = TOKEN
                 ) -> torch.Tensor:
        """Tokens for the live `rows` (original indices), their `index`-th draw of kind `purpose`."""
        if self.greedy:
            return logits.argmax(-1)
        return sample(self.probs(logits), uniforms(self.seeds[rows], index, purpose))

    def draws(self, rows: torch.Tensor, index: torch.Tensor, purpose: int) -> torch.Tensor:
        return uniforms(self.seeds[rows], index, purpose)


class RowState:
    """What the loop keeps per row: its tokens so far, how many, and which rows are still live."""

    def __init__(self, batch: int, max_new_tokens: int, eos_token_ids: Sequence[int], device: torch.device):
        self.max_new = max_new_tokens
        self.eos_ids = list(eos_token_ids)
        self.eos = torch.tensor(sorted(set(eos_token_ids)) or [-1], device=device)
        self.out = torch.zeros(batch, max_new_tokens + 2, dtype=torch.long, device=device)
        self.count = torch.zeros(batch, dtype=torch.long, device=device)
        self.rows = torch.arange(batch, device=device)  # the original index of each live row
        self.done = torch.zeros(batch, dtype=torch.bool, device=device)

    def emit(self, x: torch.Tensor, second: torch.Tensor | None = None, accepted: torch.Tensor | None = None) -> None:
        """Append `x` (and, where `accepted`, `second`) to the live rows; mark those that ended."""
        n = self.count[self.rows]
        self.out[self.rows, n] = x
        hit = torch.isin(x, self.eos)
        if second is None or accepted is None:
            self.count[self.rows] = n + 1
        else:
            self.out[self.rows, n + 1] = second  # past the count (overwritten next step) where the draft was rejected
            self.count[self.rows] = n + 1 + accepted.long()
            hit = hit | (accepted & torch.isin(second, self.eos))
        self.done = hit | (self.count[self.rows] >= self.max_new)

    def finish(self, stop: Callable[[list[int]], bool] | None) -> torch.Tensor | None:
        """Drop the rows that ended: the positions (among the live rows) of those kept, or None if all are kept."""
        if stop is not None:
            self.done |= self._stopped(stop)
        if not bool(self.done.any()):
            return None
        keep = (~self.done).nonzero().squeeze(-1)
        self.rows = self.rows[keep]
        return keep

    def _stopped(self, stop: Callable[[list[int]], bool]) -> torch.Tensor:
        rows, done = self.rows.tolist(), self.done.tolist()
        flags = [not d and stop(self.out[r, : int(self.count[r])].tolist()) for r, d in zip(rows, done, strict=True)]
        return torch.tensor(flags, dtype=torch.bool, device=self.done.device)

    def result(self) -> list[list[int]]:
        out = []
        for tokens, n in zip(self.out.tolist(), self.count.tolist(), strict=True):
            tokens = tokens[: min(n, self.max_new)]
            cut = next((j for j, t in enumerate(tokens) if t in self.eos_ids), None)
            out.append(tokens if cut is None else tokens[: cut + 1])
        return out
