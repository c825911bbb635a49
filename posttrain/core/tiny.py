"""A tiny DeepSeek-V3 and its tokenizer, built from a config with random weights.

Weights cannot always be downloaded, so a recipe may build its base: a DeepSeek-V3-architecture
model (MLA attention, shared + routed experts, sigmoid routing with `e_score_correction_bias`, first
dense layers) from a scaled-down `DeepseekV3Config`, random init, and a byte-level BPE tokenizer
trained on the recipe's own corpus (`posttrain.run.base_model` saves both where every later stage loads them).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from posttrain.core.tool_calls import (
    CALLS_BEGIN,
    CALLS_END,
    DEEPSEEK_V3_CALL,
    DEEPSEEK_V3_RESPONSE_TEMPLATE,
    DEEPSEEK_V3_TOOL_TOKENS,
    OUTPUT_BEGIN,
    OUTPUT_END,
    OUTPUTS_BEGIN,
    OUTPUTS_END,
)

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
#: The same, with DeepSeek-V3's tool calls (`posttrain/core/tool_calls.py`): an assistant turn's `tool_calls` after
#: its content, the tool outputs after it, and the model going on after `<｜tool▁outputs▁end｜>` without a new header
#: (as DeepSeek-V3 does). Renders exactly as `CHAT_TEMPLATE` where there is no tool; the assistant's part (its end of
#: turn included) is marked for TRL's `assistant_only_loss`, so SFT learns the calls and not the tools' outputs.
TOOLS_CHAT_TEMPLATE = (
    "{{ bos_token }}{% set ns = namespace(tool=false) %}{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ m['content'] }}\n"
    "{% elif m['role'] == 'user' %}{% if ns.tool %}" + OUTPUTS_END + "{% set ns.tool = false %}{% endif %}"
    + USER + "{{ m['content'] }}"
    "{% elif m['role'] == 'assistant' %}"
    "{% if ns.tool %}" + OUTPUTS_END + "{% set ns.tool = false %}{% else %}" + ASSISTANT + "{% endif %}"
    "{% generation %}{{ m['content'] or '' }}"
    "{% if m['tool_calls'] %}" + CALLS_BEGIN + "{% for tc in m['tool_calls'] %}{% if not loop.first %}\n{% endif %}"
    "{{ " + DEEPSEEK_V3_CALL + " }}{% endfor %}" + CALLS_END + "{% endif %}"
    "{{ eos_token }}{% endgeneration %}"
    "{% elif m['role'] == 'tool' %}{% if not ns.tool %}" + OUTPUTS_BEGIN + "{% set ns.tool = true %}{% endif %}"
    + OUTPUT_BEGIN + "{{ m['content'] }}" + OUTPUT_END +
    "{% endif %}{% endfor %}"
    "{% if ns.tool %}" + OUTPUTS_END + "{% elif add_generation_prompt %}" + ASSISTANT + "{% endif %}"
)

#: ~1.1M parameters (1,071,616 with the tiny recipe's 297-token vocabulary): trains at ~15k tokens/s on 2 CPU
#: cores (docs/results.md has what it learns and how fast).
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


def train_tokenizer(texts: Iterable[str], vocab_size: int = 512, tool_calls: bool = False) -> Any:
    """Byte-level BPE with digits split one per token (arithmetic stays learnable) and
    `<think>`/`</think>` as ordinary added tokens (TRL strips special tokens from completions).

    `tool_calls`: DeepSeek-V3's tool-call tokens are added the same way, and the chat template and response parser
    are DeepSeek-V3's tool-call format (the corpus should hold some calls, so that BPE learns their JSON)."""
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
    if tool_calls:
        tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in DEEPSEEK_V3_TOOL_TOKENS])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
        additional_special_tokens=[USER, ASSISTANT], model_max_length=TINY_DEFAULTS["max_position_embeddings"],
    )
    fast.chat_template = TOOLS_CHAT_TEMPLATE if tool_calls else CHAT_TEMPLATE
    if tool_calls:
        fast.response_template = DEEPSEEK_V3_RESPONSE_TEMPLATE
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
