"""The decode loop (posttrain/core/generation/decode.py) against transformers `generate`, on every family.

Greedy: token for token what `generate` gives, with padding, end-of-sequence and (Gemma) a sliding window,
with the dynamic and the pre-allocated cache. Sampling: the distribution of `generate`'s samples (a two-sample
chi-square test, with a control that fails), each row drawing from its own seeded stream whatever its batch.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from posttrain.core.generation import GenerationSpec, HFGenerator, SamplingParams
from posttrain.core.generation.decode import Decoder, supports_static_cache, unsupported
from posttrain.core.generation.sampling import filter_logits, mix64, reference_mix64, uniforms
from posttrain.core.models import load_causal_lm, load_tokenizer, without_router_logits
from tests.families import FAMILIES
from tests.posttrain.core.test_speculative import _critical, _two_sample_chi2

PROMPTS = ["Compute 1+2.", "Compute 365+75, then add 12 and 5.", "Compute 9+9.", "7"]
NEW = 80  # past Gemma's sliding window of 64 with the longest prompt


def _load(path: Path) -> tuple[Any, Any]:
    model = without_router_logits(load_causal_lm(str(path)).eval())
    model.config.use_cache = True
    return model, load_tokenizer(str(path))


def _until(rows: list[list[int]], eos: int | None) -> list[list[int]]:
    out = []
    for row in rows:
        cut = row.index(eos) + 1 if eos in row else len(row)
        out.append(row[:cut])
    return out


@pytest.mark.parametrize("name", list(FAMILIES))
def test_greedy_decoding_is_generates_token_for_token(name: str, family_base: Callable[[str], Path]) -> None:
    model, tok = _load(family_base(name))
    enc = tok(PROMPTS, padding=True, return_tensors="pt")
    assert not bool(enc["attention_mask"].all())  # left padding is exercised
    with torch.inference_mode():
        free = model.generate(**enc, max_new_tokens=NEW, do_sample=False, pad_token_id=tok.pad_token_id,
                              eos_token_id=None)[:, enc["input_ids"].shape[1]:]
    # An end-of-sequence token that some rows produce early and others never: rows finish at different steps.
    eos = int(free[:, 3].mode().values)
    with torch.inference_mode():
        ref = model.generate(**enc, max_new_tokens=NEW, do_sample=False, pad_token_id=tok.pad_token_id,
                             eos_token_id=eos)[:, enc["input_ids"].shape[1]:]
    expected = _until(ref.tolist(), eos)
    assert len({len(r) for r in expected}) > 1
    for cache in ("dynamic", "static"):
        decoder = Decoder(model, cache=cache)
        assert decoder.cache == (cache if supports_static_cache(model) else "dynamic")
        got = decoder.generate(enc["input_ids"], enc["attention_mask"], NEW, temperature=0, eos_token_ids=[eos])
        assert got == expected, (name, cache)
    single = tok(PROMPTS[1:2], return_tensors="pt")  # nothing padded: generate drops the mask, so do we
    with torch.inference_mode():
        ref = model.generate(**single, max_new_tokens=20, do_sample=False, pad_token_id=tok.pad_token_id,
                             eos_token_id=None)[:, single["input_ids"].shape[1]:]
    assert Decoder(model).generate(single["input_ids"], single["attention_mask"], 20, temperature=0) == ref.tolist()


def test_finished_rows_leave_the_batch(tiny_base: Path) -> None:
    model, tok = _load(tiny_base)
    enc = tok(PROMPTS, padding=True, return_tensors="pt")
    free = Decoder(model).generate(enc["input_ids"], enc["attention_mask"], 12, temperature=0)
    eos = free[0][2]  # row 0 ends after 3 tokens; rows that never produce it run to the end
    sizes: list[int] = []
    handle = model.get_decoder().register_forward_pre_hook(
        lambda m, args, kwargs: sizes.append(kwargs["input_ids"].shape[0]), with_kwargs=True)
    try:
        out = Decoder(model).generate(enc["input_ids"], enc["attention_mask"], 12, temperature=0, eos_token_ids=[eos])
    finally:
        handle.remove()
    assert out == _until(free, eos)
    lengths = [len(r) for r in out]
    assert sizes[0] == len(PROMPTS) and sizes == sorted(sizes, reverse=True) and min(sizes) < len(PROMPTS)
    assert sum(sizes) == sum(lengths)  # one row-step per generated token, nothing for finished rows


# --------------------------------------------------------------------------------------------------
# Sampling


def test_the_mixer_is_splitmix64() -> None:
    values = [0, 1, 2**40 + 7, -1, -(2**62)]
    assert [int(v) & (2**64 - 1) for v in mix64(torch.tensor(values))] == [reference_mix64(v) for v in values]
    u = uniforms(torch.arange(200_000), 3)
    assert float(u.min()) >= 0 and float(u.max()) < 1 and abs(float(u.mean()) - 0.5) < 0.005
    assert not torch.equal(uniforms(torch.arange(10), 3), uniforms(torch.arange(10), 4))


@pytest.fixture(scope="module")
def peaked(tiny_base: Path) -> tuple[Any, Any]:
    """The tiny model with a sharper head (fewer likely tokens per position)."""
    model, tok = _load(tiny_base)
    with torch.no_grad():
        model.lm_head.weight.mul_(6)
    return model, tok


def _sampled_by_generate(model: Any, tok: Any, prompt: str, new: int,
                         **sampling: Any) -> tuple[torch.Tensor, torch.Tensor, list[list[int]]]:
    """`prompt` 2,000 times, and `new` tokens for each sampled by transformers `generate` (top-k off)."""
    enc = tok([prompt], return_tensors="pt")
    ids, mask = enc["input_ids"].expand(2000, -1), enc["attention_mask"].expand(2000, -1)
    torch.manual_seed(0)
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, do_sample=True, top_k=0,
                             pad_token_id=tok.pad_token_id, eos_token_id=None, **sampling)
    return ids, mask, out[:, ids.shape[1]:].tolist()


def test_sampled_tokens_have_generates_distribution(peaked: tuple[Any, Any]) -> None:
    model, tok = peaked
    ids, mask, plain = _sampled_by_generate(model, tok, "Compute", 3)
    torch.manual_seed(1)
    ours = Decoder(model).generate(ids, mask, 3, temperature=1.0)
    for position in range(3):
        stat, df = _two_sample_chi2(Counter(r[position] for r in plain), Counter(r[position] for r in ours))
        assert df >= 20 and stat < _critical(df), (position, stat, df)
    # Control: the same check rejects samples at another temperature.
    hotter = Decoder(model).generate(ids, mask, 1, temperature=1.5)
    stat, df = _two_sample_chi2(Counter(r[0] for r in plain), Counter(r[0] for r in hotter))
    assert stat > _critical(df), (stat, df)


def test_top_p_keeps_generates_distribution(peaked: tuple[Any, Any]) -> None:
    model, tok = peaked
    ids, mask, plain = _sampled_by_generate(model, tok, "Compute 1", 2, top_p=0.7, temperature=0.8)
    ours = Decoder(model).generate(ids, mask, 2, temperature=0.8, top_p=0.7)
    for position in range(2):
        stat, df = _two_sample_chi2(Counter(r[position] for r in plain), Counter(r[position] for r in ours))
        assert df >= 5 and stat < _critical(df), (position, stat, df)
    with torch.inference_mode():
        first = model(input_ids=ids[:1], attention_mask=mask[:1]).logits[0, -1]
    nucleus = set(torch.isfinite(filter_logits(first[None], 0.8, 0, 0.7))[0].nonzero().flatten().tolist())
    assert {r[0] for r in ours} <= nucleus and {r[0] for r in plain} <= nucleus and len(nucleus) < 100


def test_a_rows_samples_depend_on_its_seed_only(tiny_base: Path) -> None:
    model, tok = _load(tiny_base)
    enc = tok(PROMPTS, padding=True, return_tensors="pt")
    seeds = torch.tensor([11, 22, 33, 44])
    together = Decoder(model).generate(enc["input_ids"], enc["attention_mask"], 10, seeds=seeds)
    order = [2, 0, 3, 1]
    shuffled = Decoder(model).generate(enc["input_ids"][order], enc["attention_mask"][order], 10,
                                       seeds=seeds[order])
    assert [shuffled[order.index(i)] for i in range(4)] == together
    alone = tok(PROMPTS[1:2], return_tensors="pt")  # no batch, no padding
    assert Decoder(model).generate(alone["input_ids"], alone["attention_mask"], 10, seeds=seeds[1:2]) == together[1:2]
    other = Decoder(model).generate(enc["input_ids"], enc["attention_mask"], 10, seeds=seeds + 1)
    assert other != together


def test_hf_samples_do_not_depend_on_batching(tiny_base: Path) -> None:
    gen = HFGenerator.from_pretrained(str(tiny_base), GenerationSpec(backend="hf", batch_size=3))
    sampling = SamplingParams(temperature=1.0, max_new_tokens=8, seed=5)
    out = gen.generate(PROMPTS, n=3, sampling=sampling)
    assert gen.generate(PROMPTS[::-1], n=3, sampling=sampling)[::-1] == out
    assert gen.generate(PROMPTS[2:3], n=3, sampling=sampling)[0] == out[2]


# --------------------------------------------------------------------------------------------------
# What needs `generate`


def test_a_repetition_penalty_is_left_to_generate(tiny_base: Path) -> None:
    model, tok = _load(tiny_base)
    assert unsupported(model) is None
    model.generation_config.repetition_penalty = 1.3
    assert "repetition_penalty=1.3" in (unsupported(model) or "")
    gen = HFGenerator(model, tok, GenerationSpec(backend="hf"))
    assert gen.fallback is not None
    greedy = SamplingParams(temperature=0, max_new_tokens=10)
    (row,) = gen.generate(["Compute 12+34."], n=1, sampling=greedy)
    enc = tok(["Compute 12+34."], return_tensors="pt")
    with torch.inference_mode():
        ref = model.generate(**enc, max_new_tokens=10, do_sample=False, pad_token_id=tok.pad_token_id)
    assert row == [tok.decode(ref[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)]
    # the penalty changed the output, so it was applied (by generate)
    model.generation_config.repetition_penalty = 1.0
    assert unsupported(model) is None
    assert HFGenerator(model, tok, GenerationSpec(backend="hf")).generate(["Compute 12+34."], n=1,
                                                                           sampling=greedy)[0] != row
