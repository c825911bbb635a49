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
(slot j holds the pair (h_j, token after j)), so one mask serves both. The loop around these steps (finished
rows leave the batch, stop strings, per-row sampling streams) is the decode loop's (`decode.py`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from posttrain.core.compat import with_cache
from posttrain.core.generation.base import DraftStats
from posttrain.core.generation.sampling import ACCEPT, DRAFT, RESIDUAL, TOKEN, sample
from posttrain.core.mtp import mtp_layers

if TYPE_CHECKING:
    from posttrain.core.generation.decode import Picker, RowState

# --------------------------------------------------------------------------------------------------
# The sampling math (exact, per row)


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


def verify(p: torch.Tensor, q: torch.Tensor, draft: torch.Tensor, generator: torch.Generator | None = None,
           u: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(accepted, token): the draft where kept, else a draw from the residual. `token` ~ p exactly.

    `u`: the uniforms of the acceptance test and of the residual draw (from `generator` when not given)."""
    if u is None:
        u = (torch.rand(draft.shape, device=p.device, generator=generator),
             torch.rand(draft.shape, dtype=torch.float64, device=p.device, generator=generator))
    accepted = accept_draft(p, q, draft, u[0].to(p.dtype))
    replacement = sample(residual(p, q), u[1])
    return accepted, torch.where(accepted, draft, replacement)


# --------------------------------------------------------------------------------------------------
# The drafting steps of the decode loop


class MTPDraft:
    """The decode loop's steps when DeepSeek-V3's MTP module drafts (`Decoder(model, draft=True)`).

    Each row carries its last token `x`, the draft `d` after it and the draft's distribution `q`; the MTP block
    keeps its own cache, whose rows leave with the main cache's.
    """

    def __init__(self, model: Any):
        layers = mtp_layers(model)
        if not layers:
            raise ValueError("this model has no MTP layer to draft with")
        self.layer = layers[0]
        self.decoder = model.get_decoder()
        self.head = model.get_output_embeddings()
        self.embed = model.get_input_embeddings()
        impl = getattr(model.config, "_attn_implementation", "sdpa") or "sdpa"
        if impl not in ("sdpa", "eager"):
            raise ValueError(f"speculative decoding builds its own attention masks for sdpa/eager, not {impl!r}")
        self.eager = impl == "eager"
        self.mcache: Any = None

    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, cache: Any, state: RowState,
                pick: Picker) -> dict[str, Any]:
        from transformers import DynamicCache

        self.mcache = DynamicCache()
        attn = attention_mask.bool()
        pos = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)
        mask = self._mask(attn, attn.shape[1])
        hidden = self._main(input_ids, mask, pos, cache)
        x = pick(self.head(hidden[:, -1]).float(), state.rows, state.count)
        ahead = torch.cat([input_ids[:, 1:], x[:, None]], dim=1)
        d, q = self._propose(hidden, ahead, mask, pos, None, pick, state.rows, state.count + 1)
        state.emit(x)
        return {"x": x, "d": d, "q": q, "position": pos[:, -1] + 1, "attn": attn}

    def select(self, keep: torch.Tensor) -> None:
        self.mcache.batch_select_indices(keep)

    def step(self, carry: dict[str, Any], cache: Any, state: RowState, pick: Picker,
             stats: DraftStats) -> dict[str, Any]:
        """Verify the draft in one main pass over (x, d); the MTP block drafts the token after the last kept one."""
        x, d, q, position, rows = carry["x"], carry["d"], carry["q"], carry["position"], state.rows
        n = state.count[rows]  # the index (in the completion) of the token after x
        step_pos = torch.stack([position, position + 1], dim=1)
        attn = torch.cat([carry["attn"], carry["attn"].new_ones(len(rows), 2)], dim=1)
        mask = self._mask(attn, 2)
        hidden = self._main(torch.stack([x, d], dim=1), mask, step_pos, cache)
        logits = self.head(hidden).float()
        if pick.greedy:
            first = logits[:, 0].argmax(-1)
            accepted, second = first == d, logits[:, 1].argmax(-1)
        else:
            p = pick.probs(logits)
            accepted, first = verify(p[:, 0], q, d, u=(pick.draws(rows, n, ACCEPT), pick.draws(rows, n, RESIDUAL)))
            second = sample(p[:, 1], pick.draws(rows, n + 1, TOKEN))
        attn[:, -1] = accepted  # a rejected draft's slot is never attended to again
        stats.drafted += len(rows)
        stats.accepted += int(accepted.sum())
        after = n + 1 + accepted.long()  # the index of the token the next draft stands for
        d, q = self._propose(hidden, torch.stack([first, second], dim=1), mask, step_pos, accepted, pick, rows, after)
        state.emit(first, second, accepted)
        return {"x": torch.where(accepted, second, first), "d": d, "q": q,
                "position": position + 1 + accepted.long(), "attn": attn}

    # -- pieces ------------------------------------------------------------------------------------
    def _main(self, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, cache: Any) -> torch.Tensor:
        out = self.decoder(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                           **with_cache(type(self.decoder).forward, cache))
        return out.last_hidden_state

    def _propose(self, hidden: torch.Tensor, ahead: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor,
                 accepted: torch.Tensor | None, pick: Picker, rows: torch.Tensor,
                 index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Run the MTP block over the new slots; draft from the last valid one (slot 1 if the draft was kept)."""
        pe = self.decoder.rotary_emb(hidden, pos)
        h = self.layer(hidden, self.embed(ahead), position_embeddings=pe, attention_mask=mask, position_ids=pos,
                       cache=self.mcache)
        last = h[:, -1] if accepted is None else h[torch.arange(h.shape[0], device=h.device), accepted.long()]
        logits = self.layer.logits(last, self.head).float()
        if pick.greedy:
            return logits.argmax(-1), None
        q = pick.probs(logits)
        return sample(q, pick.draws(rows, index, DRAFT)), q

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
