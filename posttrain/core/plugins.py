"""Resolve `module:attr` / `module.attr` references: how users plug their own code into a recipe."""

from __future__ import annotations

import importlib
import logging
import os
import sys
from typing import Any

from posttrain.core.errors import PluginError

log = logging.getLogger("posttrain.plugins")


def _import_module(name: str) -> Any:
    """Import `name`; a module that only the working directory holds is found too.

    `python -m` puts the working directory on sys.path but the `posttrain` console script does
    not, so `--reward my_rewards:score` next to my_rewards.py would fail for no visible reason.
    The directory goes last: an installed module of the same name still wins.
    """
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        cwd = os.getcwd()
        if exc.name != name.split(".")[0] or cwd in sys.path or "" in sys.path:
            raise
        sys.path.append(cwd)
        log.debug("%s: not on sys.path; found it in the working directory %s", name, cwd)
        return importlib.import_module(name)


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
        obj: Any = _import_module(module_name)
    except ImportError as exc:
        raise PluginError(f"cannot import module {module_name!r} for {ref!r}: {exc}") from exc
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise PluginError(f"module {module_name!r} has no attribute {attr_path!r} (from {ref!r})") from None
    return obj
