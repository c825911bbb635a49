"""Speculative decoding with a model's own multi-token-prediction (MTP) module as the draft.

Each step the main model verifies, in one forward pass over two new positions, the token it sampled last
and the token the MTP module drafted after it; the MTP module then drafts the next token from the main
model's hidden states of that same pass (DeepSeek-V3 keeps its MTP module for exactly this). Per step:
one main pass (2 positions) and one MTP-block pass, for 1 token plus the draft when it is accepted.

Sampling is exact (Leviathan et al. 2023; Chen et al. 2023): with p the main model's and q the draft's
distribution after temperature/top-k/top-p, the draft d ~ q is kept with probability min(1, p(d)/q(d)),
else a token is drawn from the residual max(0, p - q) / Σ max(0, p - q); every emitted token is then
distributed exactly as p. Greedy: the draft is kept when it is the main model's argmax, so the output
is the main model's greedy output.

Batching: every sequence adds two KV-cache slots per step whatever happened; a rejected draft's slot is
masked out of attention from then on (and positions are per sequence), so rows that accept and rows that
reject stay in one batch without re-padding. The MTP block keeps its own cache with the same slots
(slot j holds the pair (h_j, token after j)), so one mask serves both. Finished rows leave the batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from posttrain.core.compat import with_cache
from posttrain.core.generation.base import DraftStats
from posttrain.core.mtp import mtp_layers

# --------------------------------------------------------------------------------------------------
# The sampling math (exact, per row)


def filter_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Logits (float32) after temperature, top-k and top-p, with transformers' semantics (top-p keeps the
    smallest set of most likely tokens whose mass reaches `top_p`; at least one)."""
    logits = logits.float() / temperature
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=False, dim=-1)
        drop = sorted_logits.softmax(-1).cumsum(-1) <= 1 - top_p
        drop[..., -1:] = False
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def sample(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One draw per row of `probs` (B, V), by inverting the CDF (in float64): exact, and on a CPU ~10x faster
    than `torch.multinomial` at rollout sizes, which matters when a step samples three times."""
    cdf = probs.double().cumsum(-1)
    u = torch.rand(probs.shape[0], 1, dtype=torch.float64, device=probs.device, generator=generator)
    return torch.searchsorted(cdf, u * cdf[:, -1:], right=True).squeeze(-1).clamp_max(probs.shape[-1] - 1)


def accept_draft(p: torch.Tensor, q: torch.Tensor, draft: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Rows whose draft is kept: u < p(d)/q(d), i.e. with probability min(1, p(d)/q(d)) for u ~ U[0, 1).

    p, q: (B, V) probabilities; draft: (B,) tokens drawn from q; u: (B,) uniforms.
    """
    index = draft.unsqueeze(-1)
    return u * q.gather(-1, index).squeeze(-1) < p.gather(-1, index).squeeze(-1)


def residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """max(0, p - q), normalised per row: where a rejected draft's replacement is drawn from. A row with
    no mass (p == q, where rejection cannot happen) gets p."""
    r = (p - q).clamp_min(0)
    mass = r.sum(-1, keepdim=True)
    return torch.where(mass > 0, r / mass.clamp_min(1e-30), p)


def verify(p: torch.Tensor, q: torch.Tensor, draft: torch.Tensor,
           generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(accepted, token): the draft where kept, else a draw from the residual. `token` ~ p exactly."""
    u = torch.rand(draft.shape, device=p.device, generator=generator)
    accepted = accept_draft(p, q, draft, u)
    replacement = sample(residual(p, q), generator)
    return accepted, torch.where(accepted, draft, replacement)


# --------------------------------------------------------------------------------------------------
# The decoding loop


class MTPDecoder:
    """Batched decoding of a DeepSeek-V3-architecture model with its MTP module drafting one token a step.

    `draft=False` runs the same loop without drafting (one main pass per token): the reference that
    separates the gain of drafting from the loop's own overhead.
    """

    def __init__(self, model: Any, draft: bool = True):
        layers = mtp_layers(model)
        if draft and not layers:
            raise ValueError("this model has no MTP layer to draft with")
        self.model = model
        self.draft = draft
        self.layer = layers[0] if draft else None
        self.decoder = model.get_decoder()
        self.head = model.get_output_embeddings()
        self.embed = model.get_input_embeddings()
        impl = getattr(model.config, "_attn_implementation", "sdpa") or "sdpa"
        if impl not in ("sdpa", "eager"):
            raise ValueError(f"speculative decoding builds its own attention masks for sdpa/eager, not {impl!r}")
        self.eager = impl == "eager"
        self.stats = DraftStats()

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
    ) -> list[list[int]]:
        """New tokens per row (left-padded `input_ids`), each up to and including its end-of-sequence token.

        `stop(tokens)` is asked after each step for unfinished rows (e.g. "a stop string was generated").
        """
        device = input_ids.device
        batch = input_ids.shape[0]
        greedy = temperature == 0
        eos = torch.tensor(sorted(set(eos_token_ids)) or [-1], device=device)
        self._sample = self._greedy if greedy else (lambda lg: self._draw(lg, temperature, top_k, top_p))
        self._probs = None if greedy else (lambda lg: filter_logits(lg, temperature, top_k, top_p).softmax(-1))
        out = torch.zeros(batch, max_new_tokens + 2, dtype=torch.long, device=device)
        count = torch.zeros(batch, dtype=torch.long, device=device)
        rows = torch.arange(batch, device=device)  # original index of each row still in the batch
        stats = DraftStats()

        from transformers import DynamicCache

        cache, mcache = DynamicCache(), DynamicCache()
        attn = attention_mask.bool()
        pos = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)
        mask = self._mask(attn, attn.shape[1])
        hidden = self._main(input_ids, mask, pos, cache)
        x, _ = self._sample(self.head(hidden[:, -1]))
        position = pos[:, -1] + 1  # where x goes
        d = q = None
        if self.draft:
            ahead = torch.cat([input_ids[:, 1:], x[:, None]], dim=1)
            d, q = self._propose(hidden, ahead, mask, pos, mcache, None)
        out[:, 0] = x
        count += 1
        done = torch.isin(x, eos) | (count >= max_new_tokens)
        while True:
            if stop is not None:
                done |= self._stopped(stop, out, count, rows, done)
            if bool(done.any()):
                keep = (~done).nonzero().squeeze(-1)
                if keep.numel() == 0:
                    break
                rows, x, position, attn = rows[keep], x[keep], position[keep], attn[keep]
                d, q = (d[keep] if d is not None else None), (q[keep] if q is not None else None)
                cache.batch_select_indices(keep)
                mcache.batch_select_indices(keep)
            stats.steps += 1
            if not self.draft:
                attn = torch.cat([attn, attn.new_ones(len(rows), 1)], dim=1)
                hidden = self._main(x[:, None], self._mask(attn, 1), position[:, None], cache)
                x, _ = self._sample(self.head(hidden[:, -1]))
                out[rows, count[rows]] = x
                count[rows] += 1
                position = position + 1
                done = torch.isin(x, eos) | (count[rows] >= max_new_tokens)
                continue
            assert d is not None
            step_pos = torch.stack([position, position + 1], dim=1)
            attn = torch.cat([attn, attn.new_ones(len(rows), 2)], dim=1)
            mask = self._mask(attn, 2)
            hidden = self._main(torch.stack([x, d], dim=1), mask, step_pos, cache)
            logits = self.head(hidden)
            accepted, first, second = self._verify(logits, d, q)
            attn[:, -1] = accepted  # a rejected draft's slot is never attended to again
            stats.drafted += len(rows)
            stats.accepted += int(accepted.sum())
            d, q = self._propose(hidden, torch.stack([first, second], dim=1), mask, step_pos, mcache, accepted)
            n = count[rows]
            out[rows, n] = first
            out[rows, n + 1] = second  # past the count (so overwritten next step) where the draft was rejected
            count[rows] = n + 1 + accepted.long()
            hit_eos = torch.isin(first, eos) | (accepted & torch.isin(second, eos))
            x = torch.where(accepted, second, first)
            position = position + 1 + accepted.long()
            done = hit_eos | (count[rows] >= max_new_tokens)
        result = []
        for i in range(batch):
            tokens = out[i, : min(int(count[i]), max_new_tokens)].tolist()
            cut = next((j for j, t in enumerate(tokens) if t in eos_token_ids), None)
            result.append(tokens if cut is None else tokens[: cut + 1])
        stats.tokens = sum(len(t) for t in result)
        self.stats.add(stats)
        self.last_stats = stats
        return result

    # -- pieces ------------------------------------------------------------------------------------
    def _main(self, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, cache: Any) -> torch.Tensor:
        out = self.decoder(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                           **with_cache(type(self.decoder).forward, cache))
        return out.last_hidden_state

    def _propose(self, hidden: torch.Tensor, ahead: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor,
                 mcache: Any, accepted: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Run the MTP block over the new slots; draft from the last valid one (slot 1 if the draft was kept)."""
        assert self.layer is not None
        pe = self.decoder.rotary_emb(hidden, pos)
        h = self.layer(hidden, self.embed(ahead), position_embeddings=pe, attention_mask=mask, position_ids=pos,
                       cache=mcache)
        last = h[:, -1] if accepted is None else h[torch.arange(h.shape[0], device=h.device), accepted.long()]
        return self._sample(self.layer.logits(last, self.head))

    def _verify(self, logits: torch.Tensor, d: torch.Tensor,
                q: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(accepted, token after x, token after the draft): the main model's verdict on the draft."""
        if self._probs is None:  # greedy
            first = logits[:, 0].argmax(-1)
            return first == d, first, logits[:, 1].argmax(-1)
        assert q is not None
        p = self._probs(logits)
        accepted, first = verify(p[:, 0], q, d)
        second = sample(p[:, 1])
        return accepted, first, second

    def _greedy(self, logits: torch.Tensor) -> tuple[torch.Tensor, None]:
        return logits.argmax(-1), None

    def _draw(self, logits: torch.Tensor, temperature: float, top_k: int,
              top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
        probs = filter_logits(logits, temperature, top_k, top_p).softmax(-1)
        return sample(probs), probs

    def _mask(self, attn: torch.Tensor, q_len: int) -> torch.Tensor:
        """(B, 1, q, kv) mask: causal over cache slots, padding and rejected drafts masked; every slot sees
        itself (a padded or rejected slot's own output is never used, but must not be NaN)."""
        kv = attn.shape[1]
        keys = torch.arange(kv, device=attn.device)
        queries = torch.arange(kv - q_len, kv, device=attn.device)[:, None]
        allowed = ((keys <= queries) & attn[:, None, :]) | (keys == queries)
        allowed = allowed[:, None]
        if not self.eager:
            return allowed
        dtype = self.head.weight.dtype
        return torch.zeros(allowed.shape, dtype=dtype, device=attn.device).masked_fill(
            ~allowed, torch.finfo(dtype).min)

    def _stopped(self, stop: Callable[[list[int]], bool], out: torch.Tensor, count: torch.Tensor,
                 rows: torch.Tensor, done: torch.Tensor) -> torch.Tensor:
        flags = [bool(not done[i]) and stop(out[r, : int(count[r])].tolist()) for i, r in enumerate(rows.tolist())]
        return torch.tensor(flags, dtype=torch.bool, device=done.device)
