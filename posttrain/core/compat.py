"""Names that differ between the transformers releases posttrain runs on: the `vllm` extra resolves transformers
5.17 (vLLM 0.31 pins < 5.18), the default install 5.2x. In 5.17 a model and `create_causal_mask` take the KV cache
as `past_key_values`; later releases call it `cache` (and 5.17's DeepSeek-V3 silently swallows an unknown `cache=`
in `**kwargs`, decoding without one). Read the name off the function itself, never off a version number."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any


def cache_keyword(fn: Callable[..., Any]) -> str:
    """The keyword `fn` takes its KV cache by: `cache` or `past_key_values`.

    >>> def new(x, cache=None): ...
    >>> def old(x, past_key_values=None, **kwargs): ...
    >>> cache_keyword(new), cache_keyword(old)
    ('cache', 'past_key_values')
    """
    return _keyword(getattr(fn, "__func__", fn))  # a bound method: its function (one answer per class)


@functools.cache
def _keyword(fn: Callable[..., Any]) -> str:
    params = inspect.signature(fn).parameters
    if "cache" in params:
        return "cache"
    if "past_key_values" in params:
        return "past_key_values"
    raise TypeError(f"{getattr(fn, '__qualname__', fn)} takes neither `cache` nor `past_key_values`")


def with_cache(fn: Callable[..., Any], cache: Any) -> dict[str, Any]:
    """`{keyword: cache}` for a call of `fn` (or of a module whose `forward` is `fn`)."""
    return {cache_keyword(fn): cache}


def register_auto_model(auto_class: Any, config_class: type, model_class: type) -> None:
    """`auto_class.register(config_class, model_class)` for a config transformers ships (OLMoE's, to give it a
    sequence-classification class). 5.2x registers it with `exist_ok=True`; 5.17 skips every config whose module is
    transformers' own (to keep remote code from shadowing built-in classes) and registers nothing. Whether it took is
    read off the mapping afterwards; where it did not, the entry goes where `register` puts it (`_extra_content`,
    which `from_pretrained` reads first in both)."""
    auto_class.register(config_class, model_class, exist_ok=True)
    mapping = auto_class._model_mapping
    if config_class not in mapping:
        mapping._extra_content[config_class] = model_class
