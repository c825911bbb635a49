"""TRL pass-through: a stage's `trl:` mapping checked against its TRL config class (names, types, TRL's own
`__post_init__`) and turned into that class, with the settings a CPU or GPU needs that TRL would get wrong."""

from __future__ import annotations

import dataclasses
import functools
import typing
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from posttrain.recipe.problems import Loc, Problems, describe, did_you_mean
from posttrain.recipe.schema import RESERVED_TRL_KEYS, StageConfig


@functools.cache
def trl_config_class(ref: str) -> type:
    from posttrain.core.plugins import load_object

    return load_object(ref)


def trl_fields(stage: StageConfig) -> frozenset[str]:
    """The option names of the stage's TRL config class (none for a stage without one)."""
    ref = type(stage).trl_config
    return _trl_field_names(ref) if ref else frozenset()


@functools.cache
def _trl_field_names(ref: str) -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(trl_config_class(ref)))


@functools.cache
def _trl_field_types(ref: str) -> dict[str, Any]:
    cls = trl_config_class(ref)
    try:
        hints = typing.get_type_hints(cls)
    except Exception:
        hints = {}
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls) if f.init}


@functools.cache
def _adapter(tp: Any) -> TypeAdapter[Any] | None:
    try:
        return TypeAdapter(tp)
    except Exception:
        return None


def check_trl_options(stage: StageConfig, loc: Loc, problems: Problems) -> None:
    ref = type(stage).trl_config
    assert ref is not None
    fields = _trl_field_types(ref)
    cls_name = ref.rpartition(":")[2]
    ok = True
    for key, value in stage.trl.items():
        key_loc = loc + ("trl", key)
        if key in RESERVED_TRL_KEYS:
            problems.add(key_loc, f"set by posttrain: {RESERVED_TRL_KEYS[key]}")
            ok = False
        elif key not in fields:
            problems.add(key_loc, f"unknown option for {cls_name}{did_you_mean(key, fields)}")
            ok = False
        else:
            adapter = _adapter(fields[key])
            if adapter is None:
                continue
            try:
                adapter.validate_python(value)
            except ValidationError as exc:
                err = exc.errors()[0]
                problems.add(key_loc, describe(err, value))
                ok = False
    if ok:
        try:
            build_trl_config(stage, "/tmp/posttrain-validate")
        except (ValueError, TypeError) as exc:
            problems.add(loc + ("trl",), f"{cls_name} rejected these options: {exc}")


def build_trl_config(stage: StageConfig, output_dir: str | Path, **extra: Any) -> Any:
    """Instantiate the stage's TRL config from its `trl:` options (plus posttrain's own settings)."""
    ref = type(stage).trl_config
    if ref is None:
        raise TypeError(f"stage kind {stage.kind!r} has no TRL config")
    kwargs = {**stage.trl_kwargs(), **extra, "output_dir": str(output_dir)}
    cls = trl_config_class(ref)
    fields = _trl_field_names(ref)
    for old, new in (("gradient_checkpointing", "activation_checkpointing"),
                     ("gradient_checkpointing_kwargs", "activation_checkpointing_kwargs")):
        if old in kwargs and new not in kwargs and new in fields:  # renamed in transformers 5.x; the old name warns
            kwargs[new] = kwargs.pop(old)
    if "bf16" not in kwargs and "fp16" not in kwargs:
        kwargs["bf16"] = _has_bf16()  # TRL defaults to bf16=True, which fails on a CPU
    if "dataloader_pin_memory" not in kwargs and "dataloader_pin_memory" in fields and not _has_cuda():
        kwargs["dataloader_pin_memory"] = False  # nothing to pin to without CUDA; torch warns every epoch
    return cls(**kwargs)


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _has_bf16() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
