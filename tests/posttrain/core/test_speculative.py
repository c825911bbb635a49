"""Speculative decoding with the MTP module (posttrain/core/generation/speculative.py and the hf backend).

The distribution is checked twice: exactly, on hand-made distributions (acceptance and residual give back
p), and empirically, by a two-sample chi-square test of the tokens sampled with and without drafting on a
fixed prompt — with a control showing that the same test rejects samples from the draft's distribution.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch

from posttrain.core.generation import GenerationSpec, HFGenerator, SamplingParams, SpeculativeSpec
from posttrain.core.generation.decode import Decoder
from posttrain.core.generation.sampling import filter_logits, sample
from posttrain.core.generation.speculative import accept_draft, residual, verify
from posttrain.core.models import load_causal_lm, load_tokenizer
from posttrain.core.mtp import mtp_layers

# --------------------------------------------------------------------------------------------------
# The sampling math, exactly


HAND_MADE = [
    ([0.5, 0.3, 0.2, 0.0], [0.1, 0.1, 0.1, 0.7]),   # the draft puts most mass where p has none
    ([0.25, 0.25, 0.25, 0.25], [0.25, 0.25, 0.25, 0.25]),  # identical: every draft is kept
    ([0.9, 0.05, 0.05, 0.0], [0.0, 0.5, 0.5, 0.0]),   # the draft never proposes p's favourite
    ([0.0, 0.0, 1.0, 0.0], [0.3, 0.3, 0.2, 0.2]),
]


@pytest.mark.parametrize(("p", "q"), HAND_MADE)
def test_accepting_with_min_1_p_over_q_then_resampling_the_residual_gives_p(p: list[float], q: list[float]) -> None:
    p_t, q_t = torch.tensor([p]), torch.tensor([q])
    grid = (torch.arange(100_000, dtype=torch.float64) + 0.5) / 100_000  # u ~ U[0, 1), exactly integrated
    accept_prob = []
    for d in range(len(p)):
        kept = accept_draft(p_t.double().expand(len(grid), -1), q_t.double().expand(len(grid), -1),
                            torch.full((len(grid),), d), grid)
        accept_prob.append(kept.double().mean().item())
        if q[d] > 0:
            assert accept_prob[d] == pytest.approx(min(1.0, p[d] / q[d]), abs=1e-4)
    rejected = 1 - sum(qd * a for qd, a in zip(q, accept_prob, strict=True))
    res = residual(p_t, q_t)[0].tolist()
    emitted = [qd * a + rejected * r for qd, a, r in zip(q, accept_prob, res, strict=True)]
    assert emitted == pytest.approx(p, abs=1e-4)
    assert sum(res) == pytest.approx(1.0)


def test_sample_draws_each_row_from_its_distribution() -> None:
    probs = torch.tensor([[0.0, 0.2, 0.0, 0.5, 0.3], [1.0, 0.0, 0.0, 0.0, 0.0]]).repeat(50_000, 1)
    draws = sample(probs, generator=torch.Generator().manual_seed(0)).view(-1, 2)
    assert torch.all(draws[:, 1] == 0)
    freq = torch.bincount(draws[:, 0], minlength=5).double() / len(draws)
    assert freq.tolist() == pytest.approx([0.0, 0.2, 0.0, 0.5, 0.3], abs=4 * math.sqrt(0.25 / len(draws)))
    assert freq[0] == freq[2] == 0  # never a token without mass


def test_verify_samples_p_whatever_the_draft() -> None:
    p = torch.tensor([0.5, 0.3, 0.2, 0.0])
    q = torch.tensor([0.1, 0.1, 0.1, 0.7])
    n = 200_000
    gen = torch.Generator().manual_seed(0)
    draft = torch.multinomial(q, n, replacement=True, generator=gen)
    accepted, token = verify(p.expand(n, -1), q.expand(n, -1), draft, generator=gen)
    freq = torch.bincount(token, minlength=4).double() / n
    assert freq.tolist() == pytest.approx(p.tolist(), abs=4 * math.sqrt(0.25 / n))
    assert accepted.double().mean().item() == pytest.approx(torch.minimum(p, q).sum().item(), abs=0.01)


def test_filter_logits_matches_transformers_top_k_and_top_p() -> None:
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(1))
    ours = filter_logits(logits, temperature=0.7, top_k=10, top_p=0.8)
    ref = TopPLogitsWarper(0.8)(None, TopKLogitsWarper(10)(None, TemperatureLogitsWarper(0.7)(None, logits.clone())))
    assert torch.equal(torch.isinf(ours), torch.isinf(ref))
    assert torch.allclose(ours[~torch.isinf(ours)], ref[~torch.isinf(ref)])


# --------------------------------------------------------------------------------------------------
# The decoding loop on a real tiny model


def _generator(path: Path, speculative: bool) -> HFGenerator:
    spec = GenerationSpec(backend="hf", model=str(path), batch_size=16,
                          speculative=SpeculativeSpec() if speculative else None)
    return HFGenerator.from_pretrained(str(path), spec)


PROMPTS = ["Compute 1+2.", "Compute 365+75.", "Compute 12+345.", "Compute 9+9.", "Compute 100+250.",
           "Compute 7+58.", "Compute 481+19."]


def test_greedy_outputs_are_identical_with_and_without_drafting(mtp_base: Path) -> None:
    plain, drafted = _generator(mtp_base, False), _generator(mtp_base, True)
    greedy = SamplingParams(temperature=0, max_new_tokens=20)
    assert drafted.speculative and not plain.speculative
    assert drafted.generate(PROMPTS, n=1, sampling=greedy) == plain.generate(PROMPTS, n=1, sampling=greedy)
    assert drafted.draft_stats.drafted > 0  # it did draft (and, untrained, was mostly rejected)


def test_drafting_stops_at_eos_and_at_stop_strings_like_plain_decoding(mtp_base: Path) -> None:
    plain, drafted = _generator(mtp_base, False), _generator(mtp_base, True)
    tok = plain.tokenizer
    # Pick the fourth greedy token of a prompt as a "stop string" and as the end-of-sequence token.
    (row,) = plain.generate(["Compute 1+2."], n=1, sampling=SamplingParams(temperature=0, max_new_tokens=6))[0]
    ids = tok(row, add_special_tokens=False)["input_ids"]
    stop = tok.decode(ids[3:4])
    sampling = SamplingParams(temperature=0, max_new_tokens=12, stop=[stop])
    assert drafted.generate(PROMPTS, n=1, sampling=sampling) == plain.generate(PROMPTS, n=1, sampling=sampling)
    for gen in (plain, drafted):
        gen.model.generation_config.eos_token_id = ids[3]
    sampling = SamplingParams(temperature=0, max_new_tokens=12)
    assert drafted.generate(PROMPTS, n=1, sampling=sampling) == plain.generate(PROMPTS, n=1, sampling=sampling)


def test_without_an_mtp_module_the_backend_decodes_plainly(tiny_base: Path) -> None:
    gen = _generator(tiny_base, True)
    assert not gen.speculative
    out = gen.generate(["Compute 1+2."], n=2, sampling=SamplingParams(temperature=1.0, max_new_tokens=4, seed=0))
    assert len(out[0]) == 2 and gen.draft_stats.drafted == 0


def _two_sample_chi2(a: Counter, b: Counter) -> tuple[float, int]:
    """Two-sample chi-square statistic over categories with at least 10 samples in all (the rest pooled)."""
    na, nb = sum(a.values()), sum(b.values())
    big = [k for k in set(a) | set(b) if a[k] + b[k] >= 10]
    cells = [(a[k], b[k]) for k in big]
    cells.append((na - sum(c[0] for c in cells), nb - sum(c[1] for c in cells)))
    cells = [c for c in cells if c[0] + c[1] > 0]
    stat = sum((x * math.sqrt(nb / na) - y * math.sqrt(na / nb)) ** 2 / (x + y) for x, y in cells)
    return stat, len(cells) - 1


def _critical(df: int, z: float = 3.09) -> float:
    """The chi-square quantile at 1 - 0.001 (Wilson-Hilferty; z = the normal's 0.999 quantile)."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


@pytest.fixture(scope="module")
def peaked(mtp_base: Path) -> tuple[Any, torch.Tensor, torch.Tensor, list[list[int]]]:
    """The tiny model with a sharper head (fewer likely tokens per position), a fixed one-token prompt
    repeated 2,000 times, and three tokens sampled for each by plain `model.generate`."""
    model = load_causal_lm(str(mtp_base)).eval()
    tok = load_tokenizer(str(mtp_base))
    with torch.no_grad():
        model.lm_head.weight.mul_(6)
    enc = tok(["Compute"], return_tensors="pt")
    ids, mask = enc["input_ids"].expand(2000, -1), enc["attention_mask"].expand(2000, -1)
    torch.manual_seed(0)
    with torch.no_grad():
        plain = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=3, do_sample=True, top_k=0,
                               pad_token_id=tok.pad_token_id, eos_token_id=None)[:, ids.shape[1]:]
    return model, ids, mask, plain.tolist()


def test_sampled_tokens_have_the_same_distribution_with_and_without_drafting(peaked: Any) -> None:
    model, ids, mask, plain = peaked
    decoder = Decoder(model, draft=True)
    torch.manual_seed(1)
    drafted = decoder.generate(ids, mask, 3, temperature=1.0)
    acceptance = decoder.stats.acceptance
    assert acceptance is not None and 0.1 < acceptance < 0.9  # both paths (kept draft, residual) are exercised
    # Token 1 is the verified one (the kept draft or a residual draw); token 2 is the bonus token after a
    # kept draft, or the next step's verified token, drafted from the MTP block's updated cache.
    for position in (1, 2):
        stat, df = _two_sample_chi2(Counter(r[position] for r in plain), Counter(r[position] for r in drafted))
        assert df >= 20 and stat < _critical(df), (position, stat, df)


def test_the_chi_square_check_detects_sampling_from_the_draft(peaked: Any) -> None:
    """Control: tokens drawn from q (the MTP's distribution) instead of p fail the same check."""
    model, ids, _, plain = peaked
    first = torch.tensor([r[0] for r in plain])[:, None]
    with torch.no_grad():
        hidden = model.model(input_ids=ids).last_hidden_state
        (layer,) = mtp_layers(model)
        h = layer(hidden, model.get_input_embeddings()(first), attention_mask=None,
                  position_embeddings=model.model.rotary_emb(hidden, torch.zeros(1, 1, dtype=torch.long)))
        q = layer.logits(h[:, -1], model.lm_head).softmax(-1)
    torch.manual_seed(2)
    from_q = torch.multinomial(q, 1).squeeze(-1).tolist()
    stat, df = _two_sample_chi2(Counter(r[1] for r in plain), Counter(from_q))
    assert stat > _critical(df), (stat, df)
