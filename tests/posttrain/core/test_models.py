"""Loading users' checkpoints: no router loss in generation, a reward-model head for every family."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from posttrain.core.generation import GenerationSpec, HFGenerator, SamplingParams
from posttrain.core.models import load_causal_lm, load_tokenizer, with_sequence_classification

#: The families whose forward computes a load-balancing loss when `output_router_logits` is on.
WITH_ROUTER_LOSS = ["qwen2_moe", "qwen3_moe", "mixtral", "olmoe"]


@pytest.mark.parametrize("name", WITH_ROUTER_LOSS)
def test_generation_never_computes_the_router_loss(name: str, family_base: Callable[[str], Path]) -> None:
    from transformers import AutoModelForCausalLM

    base = str(family_base(name))  # saved with output_router_logits: true, as TRL's SFTTrainer saved MoEs
    tok = load_tokenizer(base)
    model = AutoModelForCausalLM.from_pretrained(base)  # a user's own loading: the flag stays on
    assert model.config.output_router_logits
    enc = tok(["Compute 1+2.", "Compute 10+20."], return_tensors="pt", padding=True)
    with pytest.raises(RuntimeError, match="must match the size"):  # the crash eval, distill and judges hit
        model.generate(**enc, max_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id)

    gen = HFGenerator(model, tok, GenerationSpec(backend="hf"))
    out = gen.generate(["Compute 1+2.", [{"role": "user", "content": "Compute 3+4."}]], n=2,
                       sampling=SamplingParams(temperature=1.0, max_new_tokens=4, seed=0))
    assert [len(r) for r in out] == [2, 2] and not model.config.output_router_logits
    # Loading through posttrain switches it off too; a training forward still returns the loss when asked.
    loaded = load_causal_lm(base)
    assert not loaded.config.output_router_logits
    assert loaded(**enc, output_router_logits=True).aux_loss is not None


def test_a_family_without_a_sequence_classification_class_gets_one(family_base: Callable[[str], Path]) -> None:
    from transformers import AutoModelForSequenceClassification

    base = str(family_base("olmoe"))
    with_sequence_classification(base)
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)
    assert type(model).__name__ == "OlmoeForSequenceClassification"
    tok = load_tokenizer(base)
    model.config.pad_token_id = tok.pad_token_id
    scores = model(**tok(["Compute 1+2.", "Compute 10+20."], return_tensors="pt", padding=True)).logits
    assert scores.shape == (2, 1) and torch.isfinite(scores).all()
    with_sequence_classification(str(family_base("qwen3_moe")))  # has its own class: left alone
    assert AutoModelForSequenceClassification.from_pretrained(
        str(family_base("qwen3_moe")), num_labels=1).__class__.__module__.endswith("modeling_qwen3_moe")
