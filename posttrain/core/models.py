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
    return model


def load_tokenizer(name_or_path: str, padding_side: str = "left", **kwargs: Any) -> Any:
    """A tokenizer that can pad (pad = eos when the model has no pad token); left padding for generation."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = padding_side
    return tok
