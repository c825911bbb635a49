"""Loading models and tokenizers by hub name or path, the same way for a built tiny model and a real one."""

from __future__ import annotations

from typing import Any


def torch_dtype(name: str) -> Any:
    import torch

    if name == "auto":
        return "auto"
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def load_causal_lm(name_or_path: str, spec: Any = None, **kwargs: Any) -> Any:
    """`AutoModelForCausalLM.from_pretrained` with the recipe's dtype/revision/trust_remote_code."""
    from transformers import AutoModelForCausalLM

    if spec is not None:
        kwargs.setdefault("dtype", torch_dtype(spec.dtype))
        kwargs.setdefault("revision", spec.revision)
        kwargs.setdefault("trust_remote_code", spec.trust_remote_code)
    return AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)


def load_tokenizer(name_or_path: str, padding_side: str = "left", **kwargs: Any) -> Any:
    """A tokenizer that can pad (pad = eos when the model has no pad token); left padding for generation."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = padding_side
    return tok
