"""Resolve `module:attr` / `module.attr` references: how users plug their own code into a recipe."""

from __future__ import annotations

import importlib
from typing import Any

from posttrain.errors import PluginError


def load_object(ref: str) -> Any:
    """Import `pkg.mod:attr` (or `pkg.mod.attr`) and return the attribute.

    >>> load_object("os.path:join")("a", "b")
    'a/b'
    """
    if ":" in ref:
        module_name, _, attr_path = ref.partition(":")
    elif "." in ref:
        module_name, _, attr_path = ref.rpartition(".")
    else:
        raise PluginError(f"{ref!r} is not an importable reference: use 'module:function'")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise PluginError(f"cannot import module {module_name!r} for {ref!r}: {exc}") from exc
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise PluginError(f"module {module_name!r} has no attribute {attr_path!r} (from {ref!r})") from None
    return obj
