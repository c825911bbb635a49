"""Loading models and tokenizers by hub name or path, the same way for a built tiny model and a real one.

`trust_remote_code` is honoured for every tokenizer (a checkpoint's own tokenizer class, e.g. Moonlight's
tiktoken one, needs it). For the model, transformers' built-in architecture wins over the checkpoint's
own modeling code whenever transformers knows the checkpoint's `model_type`: remote DeepSeek-V3 code
cannot train (its MoE forward is inference-only) and its routers escape posttrain's balancing hooks.
A WARNING says when that replaces the remote code the flag asked for.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from posttrain.core.compat import register_auto_model

log = logging.getLogger("posttrain.models")

#: Checkpoints already warned about (one WARNING per checkpoint and process).
_warned: set[str] = set()


def torch_dtype(name: str) -> Any:
    import torch

    if name == "auto":
        return "auto"
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def model_remote_code(name_or_path: str, trust_remote_code: bool, **hub: Any) -> bool:
    """Whether the model itself may load the checkpoint's own code: only when asked, and only when transformers
    has no built-in architecture for its `model_type` (then it loads that one, with a WARNING)."""
    if not trust_remote_code:
        return False
    from transformers import PretrainedConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    try:
        config, _ = PretrainedConfig.get_config_dict(name_or_path, **hub)
    except (OSError, ValueError):
        return True  # no config.json (an adapter folder): from_pretrained decides
    model_type, auto_map = config.get("model_type"), config.get("auto_map")
    if not auto_map or model_type not in CONFIG_MAPPING:
        return True
    if name_or_path not in _warned:
        _warned.add(name_or_path)
        log.warning("%s ships its own modeling code (auto_map) for model_type %r, which transformers has built in: "
                    "loading transformers' %s instead (remote code cannot be trained here and its MoE routers "
                    "escape the load-balancing hooks); trust_remote_code still applies to the tokenizer",
                    name_or_path, model_type, CONFIG_MAPPING[model_type].__name__.replace("Config", ""))
    return False


def load_causal_lm(name_or_path: str, spec: Any = None, **kwargs: Any) -> Any:
    """`AutoModelForCausalLM.from_pretrained` with the recipe's dtype/revision/trust_remote_code (built-in
    architectures preferred, see `model_remote_code`), keeping the multi-token-prediction layers of a
    DeepSeek-V3 checkpoint (ours or DeepSeek's), which transformers drops."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from posttrain.core.mtp import quiet_mtp_keys, restore_mtp

    if spec is not None:
        kwargs.setdefault("dtype", torch_dtype(spec.dtype))
        kwargs.setdefault("revision", spec.revision)
        kwargs.setdefault("trust_remote_code", spec.trust_remote_code)
    hub = {k: kwargs[k] for k in ("revision", "token", "cache_dir", "local_files_only") if kwargs.get(k) is not None}
    builtin_over_remote = bool(kwargs.get("trust_remote_code")) and not model_remote_code(name_or_path, True, **hub)
    if builtin_over_remote:
        kwargs["trust_remote_code"] = False
    if kwargs.get("trust_remote_code"):
        hub["trust_remote_code"] = True
    if "config" not in kwargs:
        # An adapter folder has no config of its own: from_pretrained resolves it.
        with contextlib.suppress(OSError, ValueError):
            kwargs["config"] = AutoConfig.from_pretrained(name_or_path, **hub)
    if builtin_over_remote and hasattr(kwargs.get("config"), "auto_map"):
        # Saved models are the built-in architecture: no pointer to code they do not ship (vLLM would follow it).
        del kwargs["config"].auto_map
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


def load_sequence_classifier(name_or_path: str, hub: dict[str, Any], **model_kwargs: Any) -> Any:
    """A checkpoint as a sequence classifier (a reward model), for every family (see
    `with_sequence_classification`). `hub`: where and how to read the checkpoint (revision, trust_remote_code,
    local_files_only), for the config and the model alike; `model_kwargs` go to the model only."""
    from transformers import AutoModelForSequenceClassification

    with_sequence_classification(name_or_path, **hub)
    return AutoModelForSequenceClassification.from_pretrained(name_or_path, **hub, **model_kwargs)


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
    register_auto_model(AutoModelForSequenceClassification, type(config), cls)


def load_tokenizer(name_or_path: str, padding_side: str = "left", trust_remote_code: bool = False,
                   **kwargs: Any) -> Any:
    """A tokenizer that can pad (pad = eos when the model has no pad token); left padding for generation.
    `trust_remote_code` lets a checkpoint's own tokenizer class load (a saved stage model keeps that class)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, **kwargs)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = padding_side
    return tok
