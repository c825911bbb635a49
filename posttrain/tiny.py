"""The recipe's base model and tokenizer, materialised once per run in DIR/base_model/.

Weights cannot always be downloaded, so a recipe may build its base: a DeepSeek-V3-architecture
model (MLA attention, shared + routed experts, sigmoid routing with `e_score_correction_bias`, first
dense layers) from a scaled-down `DeepseekV3Config`, random init, and a byte-level BPE tokenizer
trained on the recipe's own corpus. Both are saved with `save_pretrained`, so every later stage
loads them by path like any hub model.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from posttrain.recipe import ModelSpec, Recipe, TokenizerSpec
from posttrain.run_folder import BASE_DIR, BASE_STAMP

log = logging.getLogger("posttrain.tiny")

THINK_TOKENS = ("<think>", "</think>")
BOS, EOS, PAD = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜pad｜>"
USER, ASSISTANT = "<｜User｜>", "<｜Assistant｜>"
#: DeepSeek-style chat template; `<think>` stays ordinary text inside the assistant turn.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ m['content'] }}\n"
    "{% elif m['role'] == 'user' %}" + USER + "{{ m['content'] }}"
    "{% elif m['role'] == 'assistant' %}" + ASSISTANT + "{{ m['content'] }}{{ eos_token }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}" + ASSISTANT + "{% endif %}"
)

#: ~1.1M parameters (1,071,616 with the tiny recipe's 297-token vocabulary): trains at ~15k tokens/s on 2 CPU
#: cores (see shared/FINDINGS.md).
TINY_DEFAULTS: dict[str, Any] = {
    "hidden_size": 128,
    "intermediate_size": 384,
    "moe_intermediate_size": 64,
    "num_hidden_layers": 4,
    "first_k_dense_replace": 1,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "n_routed_experts": 8,
    "num_experts_per_tok": 2,
    "n_shared_experts": 1,
    "n_group": 1,
    "topk_group": 1,
    "q_lora_rank": None,
    "kv_lora_rank": 32,
    "qk_nope_head_dim": 16,
    "qk_rope_head_dim": 16,
    "v_head_dim": 32,
    "routed_scaling_factor": 1.0,
    "norm_topk_prob": True,
    # What vLLM's DeepSeek-V3 loader reads (vllm/model_executor/models/deepseek_v2.py) and transformers' config
    # lacks: without `topk_method: noaux_tc` vLLM builds no correction bias, without `scoring_func` it routes
    # with softmax. transformers' DeepseekV3 always routes this way and ignores the keys (same weights, same model).
    "topk_method": "noaux_tc",
    "scoring_func": "sigmoid",
    "moe_layer_freq": 1,
    "max_position_embeddings": 512,
    "num_nextn_predict_layers": 0,
    "tie_word_embeddings": False,
    "initializer_range": 0.02,
}


def train_tokenizer(texts: Iterable[str], vocab_size: int = 512) -> Any:
    """Byte-level BPE with digits split one per token (arithmetic stays learnable) and
    `<think>`/`</think>` as ordinary added tokens (TRL strips special tokens from completions)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    specials = [BOS, EOS, PAD, USER, ASSISTANT]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINK_TOKENS])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
        additional_special_tokens=[USER, ASSISTANT], model_max_length=TINY_DEFAULTS["max_position_embeddings"],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_model(tokenizer: Any, overrides: dict[str, Any] | None = None, seed: int = 0) -> Any:
    """A randomly initialised DeepseekV3ForCausalLM sized for a CPU (with MTP layers when
    `num_nextn_predict_layers` >= 1)."""
    import torch
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    cfg = {**TINY_DEFAULTS, **(overrides or {})}
    config = DeepseekV3Config(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **cfg,
    )
    torch.manual_seed(seed)
    model = DeepseekV3ForCausalLM(config)
    if cfg.get("num_nextn_predict_layers", 0) >= 1:  # DeepSeek-V3's multi-token prediction module
        from posttrain.core.mtp import attach_mtp

        attach_mtp(model)
    return model


def base_fingerprint(recipe: Recipe) -> str:
    payload = {"model": recipe.model.model_dump(mode="json"), "tokenizer": recipe.tokenizer.model_dump(mode="json"),
               "seed": recipe.seed if _builds_something(recipe) else None}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _builds_something(recipe: Recipe) -> bool:
    return recipe.model.tiny is not None or recipe.tokenizer.train is not None


def base_model_ref(recipe: Recipe, run_dir: Path) -> str:
    """Where stages load the base model from: DIR/base_model when built, else the hub name/path."""
    if _builds_something(recipe):
        return str(run_dir / BASE_DIR)
    assert recipe.model.name_or_path is not None
    return recipe.model.name_or_path


def materialize_base(recipe: Recipe, run_dir: Path) -> tuple[str, str]:
    """Build (or reuse) the base model + tokenizer; return (reference, fingerprint)."""
    fingerprint = base_fingerprint(recipe)
    ref = base_model_ref(recipe, run_dir)
    if not _builds_something(recipe):
        return ref, fingerprint
    out = Path(ref)
    stamp = out / BASE_STAMP
    if stamp.exists() and json.loads(stamp.read_text()).get("fingerprint") == fingerprint:
        return ref, fingerprint
    log.info("building the base model in %s", out)
    tokenizer = _make_tokenizer(recipe.tokenizer, recipe.model)
    if recipe.model.tiny is not None:
        model = build_tiny_model(tokenizer, recipe.model.tiny, seed=recipe.seed)
    else:
        from posttrain.core.models import load_causal_lm

        model = load_causal_lm(recipe.model.name_or_path or "", recipe.model)
        model.resize_token_embeddings(len(tokenizer))
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    n_params = sum(p.numel() for p in model.parameters())
    stamp.write_text(json.dumps({"fingerprint": fingerprint, "parameters": n_params}))
    log.info("base model: %s, %.2fM parameters, vocabulary %d", type(model).__name__, n_params / 1e6,
             len(tokenizer))
    return ref, fingerprint


def _make_tokenizer(spec: TokenizerSpec, model: ModelSpec) -> Any:
    if spec.train is not None:
        from posttrain.core.plugins import load_object

        corpus = load_object(spec.train.corpus)(**spec.train.corpus_kwargs)
        return train_tokenizer(corpus, spec.train.vocab_size)
    from transformers import AutoTokenizer

    name = spec.name_or_path or model.name_or_path
    if name is None:
        from posttrain.core.errors import RecipeError

        raise RecipeError(["tokenizer: a tiny model needs 'tokenizer.train' or 'tokenizer.name_or_path'"])
    return AutoTokenizer.from_pretrained(name, trust_remote_code=model.trust_remote_code)
