"""What a config option says about its stage's identity, declared on the option itself.

A stage's identity is the hash of its config (with its inputs' stamps): a finished stage whose hash is unchanged is
skipped, a changed one runs again. So every option has one of four roles, and the role is written where the option
is declared, as `Annotated` metadata that one serializer reads (`MarkedModel`, applying `identity_dump`):

- *counts* (no mark): what the stage computes. Changing it reruns the stage.
- `ADDED`: an option added after stages were written out. It counts, but is left out of every dump while it keeps
  its default, so a stage written before the option existed keeps its hash. **Every new option gets this mark** (or
  `PLACEMENT`); tests/posttrain/run/test_identity.py lists each option's role and fails on one it does not know.
- `PLACEMENT` (or `Placement(pin=old_default)`): where or how the stage runs, never what it computes (a port, a host,
  a machine's rank). It is no part of the identity: left out of the identity dump, or pinned there to the value
  stages were first hashed with.
- `SELECTION`: it only chooses among what the stage computed (a filter's bounds). It counts, but a rerun that
  differs from the folder it sets aside in nothing else may start from that folder's reusable outputs.

    >>> from typing import Annotated
    >>> class Spec(MarkedModel):
    ...     lr: float = 1e-3
    ...     warmup: Annotated[int, ADDED] = 0
    ...     port: Annotated[int, PLACEMENT] = 8000
    >>> Spec().model_dump(), Spec(port=9).model_dump(context={IDENTITY: True})
    ({'lr': 0.001, 'port': 8000}, {'lr': 0.001})
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, SerializationInfo, model_serializer

#: `model_dump(context={IDENTITY: True})`: the dump a stage's identity (its config hash) is computed from.
IDENTITY = "identity"

Role = Literal["counts", "added", "placement", "selection"]


class _Omit:
    def __repr__(self) -> str:
        return "omitted"


_OMIT: Any = _Omit()


@dataclass(frozen=True)
class Added:
    """Counts, but is left out of every dump while it keeps its default (stages written before it keep their hash)."""


@dataclass(frozen=True)
class Placement:
    """No part of the identity: left out of the identity dump, or pinned there to `pin`."""

    pin: Any = _OMIT


@dataclass(frozen=True)
class Selection:
    """Counts, but only chooses among what the stage computed: a change to it alone may reuse earlier outputs."""


ADDED = Added()
PLACEMENT = Placement()
SELECTION = Selection()


class MarkedModel(BaseModel):
    """A model whose dumps apply its options' marks (and those of every model nested in it): the one serializer.
    Recipe sections derive from it, so a section dumped on its own hides its new options as the stage does."""

    @model_serializer(mode="wrap")
    def _marked_dump(self, handler: Any, info: SerializationInfo) -> Any:
        return identity_dump(self, handler(self), info)


def for_identity(info: SerializationInfo) -> bool:
    """Whether this dump is the one a stage's identity is computed from."""
    return bool(info.context) and bool(info.context.get(IDENTITY))


def _mark(model: type[BaseModel], name: str, kind: type) -> Any:
    return next((m for m in model.model_fields[name].metadata if isinstance(m, kind)), None)


def role(model: type[BaseModel], name: str) -> Role:
    """The role option `name` of `model` plays in its stage's identity."""
    if _mark(model, name, Placement) is not None:
        return "placement"
    if _mark(model, name, Selection) is not None:
        return "selection"
    return "added" if _mark(model, name, Added) is not None else "counts"


def selection_fields(model: type[BaseModel]) -> tuple[str, ...]:
    """The options of `model` marked `SELECTION`."""
    return tuple(name for name in model.model_fields if _mark(model, name, Selection) is not None)


def identity_dump(model: BaseModel, data: Any, info: SerializationInfo) -> Any:
    """`data` (the plain dump of `model`) with the marks of `model`'s options, and of every model nested in it,
    applied: `ADDED` options at their defaults left out, and in the identity dump `PLACEMENT` options left out or
    pinned. Called by the one serializer of a stage's config (`StageConfig`)."""
    if isinstance(data, dict):
        _apply(model, data, for_identity(info))
    return data


def _apply(model: BaseModel, data: dict[str, Any], identity: bool) -> None:
    cls = type(model)
    for name, field in cls.model_fields.items():
        if name not in data:
            continue
        value = getattr(model, name)
        if _mark(cls, name, Added) is not None and value == field.get_default(call_default_factory=True):
            del data[name]
            continue
        placement = _mark(cls, name, Placement)
        if identity and placement is not None:
            if placement.pin is _OMIT:
                del data[name]
            else:
                data[name] = placement.pin
            continue
        _nested(value, data[name], identity)


def _nested(value: Any, dumped: Any, identity: bool) -> None:
    if isinstance(value, BaseModel) and isinstance(dumped, dict):
        _apply(value, dumped, identity)
    elif isinstance(value, list | tuple) and isinstance(dumped, list | tuple):
        for item, item_dump in zip(value, dumped, strict=False):
            _nested(item, item_dump, identity)
    elif isinstance(value, dict) and isinstance(dumped, dict):
        for key, item in value.items():
            if key in dumped:
                _nested(item, dumped[key], identity)
