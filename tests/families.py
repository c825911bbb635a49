"""Tiny random-weight checkpoints of the architectures users bring, built from each family's own config.

Each checkpoint is what a user's folder looks like: `save_pretrained` weights and config, and a tokenizer
with a Qwen-style chat template beside them. The "thinking" families (Qwen3, Qwen3-MoE, DeepSeek-V3 as R1)
get a template that opens `<think>` in the generation prompt, as DeepSeek-R1's and Qwen3's thinking
templates do. Built in well under a second each; `tests/conftest.py` shares them per session.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

IM_START, IM_END, ENDOFTEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
_TURNS = ("{% for m in messages %}" + IM_START + "{{ m['role'] }}\n{{ m['content'] }}" + IM_END + "\n{% endfor %}")
#: Qwen2.5's layout.
CHAT_TEMPLATE = _TURNS + "{% if add_generation_prompt %}" + IM_START + "assistant\n{% endif %}"
#: DeepSeek-R1 / Qwen3-thinking: the generation prompt opens the reasoning (`enable_thinking=False` closes it empty).
THINKING_TEMPLATE = (_TURNS + "{% if add_generation_prompt %}" + IM_START + "assistant\n"
                     "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n"
                     "{% else %}<think>\n{% endif %}{% endif %}")

#: What every family shares: 2 layers, hidden 64, 4 heads (2 KV heads), 4 experts of which 2 per token.
COMMON: dict[str, Any] = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                          "num_key_value_heads": 2, "max_position_embeddings": 512, "tie_word_embeddings": False,
                          "initializer_range": 0.02}
_MLA: dict[str, Any] = {"kv_lora_rank": 16, "q_lora_rank": None, "qk_nope_head_dim": 16, "qk_rope_head_dim": 8,
                        "v_head_dim": 16, "num_key_value_heads": 4, "n_routed_experts": 4, "num_experts_per_tok": 2,
                        "moe_intermediate_size": 32, "n_shared_experts": 1, "first_k_dense_replace": 1, "n_group": 1,
                        "topk_group": 1}


@dataclass(frozen=True)
class Family:
    """One architecture: its `model_type`, the config options that make it tiny, and whether it is MoE."""

    name: str
    model_type: str
    overrides: dict[str, Any] = field(default_factory=dict)
    moe: bool = False
    #: The chat template opens `<think>` in the generation prompt.
    thinking: bool = False


FAMILIES: dict[str, Family] = {f.name: f for f in [
    Family("llama", "llama"),
    Family("qwen2", "qwen2"),
    Family("qwen3", "qwen3", {"head_dim": 16}, thinking=True),
    Family("gemma", "gemma3_text", {"head_dim": 16, "sliding_window": 64}),
    Family("qwen2_moe", "qwen2_moe", {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
                                      "shared_expert_intermediate_size": 64}, moe=True),
    Family("qwen3_moe", "qwen3_moe", {"head_dim": 16, "num_experts": 4, "num_experts_per_tok": 2,
                                      "moe_intermediate_size": 32}, moe=True, thinking=True),
    Family("mixtral", "mixtral", {"num_local_experts": 4, "num_experts_per_tok": 2, "intermediate_size": 32}, moe=True),
    Family("olmoe", "olmoe", {"num_experts": 4, "num_experts_per_tok": 2, "intermediate_size": 32}, moe=True),
    Family("deepseek_v2", "deepseek_v2", {**_MLA, "topk_method": "greedy"}, moe=True),
    Family("deepseek_v3", "deepseek_v3", {**_MLA, "num_nextn_predict_layers": 0}, moe=True, thinking=True),
]}
MOE_FAMILIES = [name for name, f in FAMILIES.items() if f.moe]


def train_chat_tokenizer(vocab_size: int = 384) -> Any:
    """Byte-level BPE on the arithmetic corpus, Qwen's special tokens, `<think>`/`</think>` as added tokens."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from data_pipelines.tasks.arithmetic import corpus

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[ENDOFTEXT, IM_START, IM_END],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), min_frequency=2,
                                  show_progress=False)
    tok.train_from_iterator(corpus(), trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in ("<think>", "</think>")])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=IM_END, pad_token=ENDOFTEXT,
                                   additional_special_tokens=[IM_START], model_max_length=512)


def build_checkpoint(family: Family, tokenizer: Any, out: Path, seed: int = 0, router_logits: bool = False) -> Path:
    """`AutoConfig.for_model(...)` + random init, saved with the tokenizer (and the family's template) in `out`;
    `router_logits` saves an MoE's config with `output_router_logits: true`."""
    import copy

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(family.model_type, **{**COMMON, **family.overrides}, vocab_size=len(tokenizer),
                                  bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
                                  pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = None
    if router_logits:
        model.config.output_router_logits = True
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = THINKING_TEMPLATE if family.thinking else CHAT_TEMPLATE
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
