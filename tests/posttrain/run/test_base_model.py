from __future__ import annotations

import json
from pathlib import Path

import torch

from data_pipelines.tasks.arithmetic import solution_text
from posttrain.core.models import load_causal_lm, load_tokenizer
from posttrain.recipe import parse_recipe
from posttrain.run.base_model import materialize_base
from posttrain.stages import KINDS


def test_tokenizer_round_trips_and_keeps_think_ordinary(tiny_base: Path) -> None:
    tok = load_tokenizer(str(tiny_base))
    text = "Compute 365+75." + solution_text(365, 75)
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text
    # Digits are single tokens; <think> is one token that survives skip_special_tokens.
    assert tok.convert_ids_to_tokens(tok("365")["input_ids"]) == ["3", "6", "5"]
    assert len(tok("<think>")["input_ids"]) == 1
    assert "<think>" in tok.decode(ids, skip_special_tokens=True)
    assert tok.decode(tok("naïve 中文 ∫x")["input_ids"]) == "naïve 中文 ∫x"  # byte-level: nothing is lost
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert chat.endswith("<｜Assistant｜>") and "hi" in chat


def test_tiny_model_is_deepseek_v3_moe_and_loads_by_path(tiny_base: Path) -> None:
    model = load_causal_lm(str(tiny_base))
    cfg = model.config
    assert cfg.model_type == "deepseek_v3" and cfg.n_routed_experts == 8 and cfg.first_k_dense_replace == 1
    layer = model.model.layers[1]
    assert hasattr(layer.mlp, "gate") and hasattr(layer.mlp, "shared_experts")  # routed + shared experts
    assert hasattr(layer.self_attn, "kv_a_proj_with_mqa")  # MLA
    n = sum(p.numel() for p in model.parameters())
    assert 0.5e6 < n < 5e6
    tok = load_tokenizer(str(tiny_base))
    batch = tok(["Compute 1+2.", "Compute 12+345."], return_tensors="pt", padding=True)
    out = model.generate(**batch, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape == (2, batch["input_ids"].shape[1] + 4)


def test_materialize_base_is_cached_and_deterministic(tmp_path: Path) -> None:
    text = """
output_dir: {out}
seed: 5
model: {{tiny: {{num_hidden_layers: 2}}}}
tokenizer: {{train: {{corpus: "data_pipelines.tasks.arithmetic:corpus", corpus_kwargs: {{n: 200}}}}}}
stages: [{{name: s, kind: counting}}]
"""
    recipe_a = parse_recipe(text.format(out=tmp_path / "a"), kinds=KINDS)
    ref, digest = materialize_base(recipe_a, tmp_path / "a")
    stamp = Path(ref) / "posttrain_base.json"
    before = stamp.stat().st_mtime_ns
    assert materialize_base(recipe_a, tmp_path / "a") == (ref, digest)
    assert stamp.stat().st_mtime_ns == before  # reused, not rebuilt
    ref_b, digest_b = materialize_base(parse_recipe(text.format(out=tmp_path / "b"), kinds=KINDS), tmp_path / "b")
    assert digest_b == digest
    a, b = load_causal_lm(ref), load_causal_lm(ref_b)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert json.loads(stamp.read_text())["parameters"] > 0
    assert a.config.num_hidden_layers == 2


def test_the_saved_config_carries_what_vllms_deepseek_loader_reads(tmp_path: Path) -> None:
    text = """
output_dir: {out}
model: {{tiny: {{num_hidden_layers: 2}}}}
tokenizer: {{train: {{corpus: "data_pipelines.tasks.arithmetic:corpus", corpus_kwargs: {{n: 200}}}}}}
stages: [{{name: s, kind: counting}}]
"""
    ref, _ = materialize_base(parse_recipe(text.format(out=tmp_path), kinds=KINDS), tmp_path)
    cfg = json.loads((Path(ref) / "config.json").read_text())
    # vllm/model_executor/models/deepseek_v2.py (0.31): the correction bias exists only for noaux_tc, routing
    # is softmax unless scoring_func says sigmoid, grouped top-k reads n_group/topk_group.
    assert cfg["model_type"] == "deepseek_v3" and cfg["topk_method"] == "noaux_tc"
    assert cfg["scoring_func"] == "sigmoid" and cfg["hidden_act"] == "silu"
    assert cfg["n_routed_experts"] % cfg["n_group"] == 0 and cfg["topk_group"] <= cfg["n_group"]
    assert cfg["norm_topk_prob"] is True and cfg["routed_scaling_factor"] == 1.0
    assert cfg["moe_layer_freq"] == 1 and cfg["first_k_dense_replace"] == 1 and cfg["q_lora_rank"] is None


def test_the_vllm_keys_change_neither_the_weights_nor_the_training() -> None:
    """The demo's figures depend on the base model: the keys vLLM reads must not change what transformers builds."""
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    from posttrain.core.tiny import TINY_DEFAULTS

    vllm_only = ("topk_method", "scoring_func", "moe_layer_freq")
    models = []
    for cfg in (TINY_DEFAULTS, {k: v for k, v in TINY_DEFAULTS.items() if k not in vllm_only}):
        torch.manual_seed(3)
        models.append(DeepseekV3ForCausalLM(DeepseekV3Config(vocab_size=300, **{**cfg, "num_hidden_layers": 2})))
    a, b = models
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    ids = torch.randint(0, 300, (2, 16))
    for model in models:
        model(input_ids=ids, labels=ids).loss.backward()
    for (name, x), y in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(x.grad, y.grad), name
