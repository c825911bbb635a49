"""Loading models and tokenizers by hub name or path, the same way for a built tiny model and a real one."""

from __future__ import annotations

import contextlib
from typing import Any


def torch_dtype(name: str) -> Any:
    import torch

    if name == "auto":
        return "auto"
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def load_causal_lm(name_or_path: str, spec: Any = None, **kwargs: Any) -> Any:
    """`AutoModelForCausalLM.from_pretrained` with the recipe's dtype/revision/trust_remote_code, keeping the
    multi-token-prediction layers of a DeepSeek-V3 checkpoint (ours or DeepSeek's), which transformers drops."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from posttrain.core.mtp import quiet_mtp_keys, restore_mtp

    if spec is not None:
        kwargs.setdefault("dtype", torch_dtype(spec.dtype))
        kwargs.setdefault("revision", spec.revision)
        kwargs.setdefault("trust_remote_code", spec.trust_remote_code)
    hub = {k: kwargs[k] for k in ("revision", "trust_remote_code", "token", "cache_dir", "local_files_only")
           if kwargs.get(k) is not None}
    if "config" not in kwargs:
        # An adapter folder has no config of its own: from_pretrained resolves it.
        with contextlib.suppress(OSError, ValueError):
            kwargs["config"] = AutoConfig.from_pretrained(name_or_path, **hub)
    with quiet_mtp_keys(kwargs.get("config")):
        model = AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)
    restore_mtp(model, name_or_path, **hub)
    without_router_logits(model)
    return model


def without_router_logits(model: Any) -> Any:
    """Switch off `output_router_logits` in the model's config (and its text config); returns the model.

    An MoE that returns its router logits also computes its load-balancing loss in every forward, and in
    `generate` with a KV cache that loss pairs the new token's router logits with the whole attention
    mask: `RuntimeError: The size of tensor a (24) must match the size of tensor b (264)` (Qwen2/3-MoE,
    Mixtral, OLMoE). TRL's SFTTrainer saves the flag on, so every model it wrote crashed generation. Training
    asks for router logits per forward (TRL passes `output_router_logits=True` where it wants the aux loss);
    the config default stays off, so no generate, eval, judge or rollout path ever computes the loss.
    """
    config = getattr(model, "config", None)
    if config is None:
        return model
    configs = [config]
    if hasattr(config, "get_text_config"):
        configs.append(config.get_text_config())
    for c in configs:
        if getattr(c, "output_router_logits", False):
            c.output_router_logits = False
    return model


def with_sequence_classification(name_or_path: str, **kwargs: Any) -> None:
    """Make `AutoModelForSequenceClassification` load this checkpoint's family, for the families transformers ships
    without a `...ForSequenceClassification` (OLMoE): `GenericForSequenceClassification` on the family's own
    `PreTrainedModel`, which is how transformers defines the class for Qwen3-MoE, Llama and the rest. A family
    that has one, or a config that cannot be read, is left alone (loading then says what is wrong)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification
    from transformers.modeling_layers import GenericForSequenceClassification

    try:
        config = AutoConfig.from_pretrained(name_or_path, **kwargs)
    except (OSError, ValueError):
        return
    mapping = AutoModelForSequenceClassification._model_mapping
    if type(config) in mapping or type(config) not in AutoModelForCausalLM._model_mapping:
        return
    causal = AutoModelForCausalLM._model_mapping[type(config)]
    base = next((c for c in causal.__mro__ if c.__name__.endswith("PreTrainedModel") and c is not causal), None)
    if base is None:
        return
    name = causal.__name__.replace("ForCausalLM", "ForSequenceClassification")
    cls = type(name, (GenericForSequenceClassification, base), {"__module__": causal.__module__})
    AutoModelForSequenceClassification.register(type(config), cls, exist_ok=True)


def load_tokenizer(name_or_path: str, padding_side: str = "left", **kwargs: Any) -> Any:
    """A tokenizer that can pad (pad = eos when the model has no pad token); left padding for generation."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = padding_side
    return tok
