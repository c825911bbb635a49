"""The recipe reference (docs/recipe-reference.md), generated from the schema itself: every key of the top level and
of each stage kind, its type, its default, its role in the stage's identity and the comment written above it in the
code. A test keeps the page current; `make docs` rewrites it. The schema is handed the stage kinds, as ever.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
import typing
from functools import cache
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from posttrain.core.identity import role
from posttrain.recipe.schema import Recipe, StageConfig, StageKindsLike

HEADER = """# Recipe reference

Generated from the schema (`make docs`; a test checks that this page is current). A recipe is YAML: the top
level below, then `stages:`, a list of stages, each with a `name`, a `kind` and that kind's keys. Options of a
TRL config (SFTConfig, GRPOConfig, ...) go under a stage's `trl:` and are passed through: TRL's own documentation
lists them. *Identity* says what a change to a key does to a finished stage: **counts** (it runs again), **added**
(counts; left out while at its default, so older runs keep their hash), **placement** (where it runs: never reruns
it), **selection** (reruns only the selection, reusing outputs).
"""


@cache
def _comments(cls: type) -> dict[str, str]:
    """The `#:` comment above each field in the class body's source."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    lines = source.splitlines()
    out = {}
    for node in ast.parse(source).body[0].body:  # type: ignore[attr-defined]
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            doc, i = [], node.lineno - 2
            while i >= 0 and lines[i].strip().startswith("#:"):
                doc.insert(0, lines[i].strip()[2:].strip())
                i -= 1
            if doc:
                out[node.target.id] = " ".join(doc)
    return out


def _comment(model: type[BaseModel], name: str) -> str:
    for cls in model.__mro__:
        if isinstance(cls, type) and issubclass(cls, BaseModel) and name in _comments(cls):
            return _comments(cls)[name]
    return ""


def _type_name(annotation: Any) -> str:
    text = str(annotation) if not isinstance(annotation, type) else annotation.__name__
    for noise in ("typing.", "posttrain.", "rewards.", "data_pipelines.", "NoneType"):
        text = text.replace(noise, "None" if noise == "NoneType" else "")
    for module in ("on_policy_distill.", "distill_term.", "core.generation.base.", "recipe.schema.", "training.",
                   "stages.", "core.", "filters.",
                   "decontamination.", "sources.", "rejection_sampling.", "pass_rate_filter.", "data_mix.", "lora.",
                   "moe_balance.", "mtp.", "dynamic_sampling.", "grpo.", "eval.", "distill.", "reward_model.", "dpo.",
                   "tools."):
        text = text.replace(module, "")
    return text.replace("|", "\\|")


def _default(field: Any) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True) if field.default is PydanticUndefined else field.default
    if isinstance(value, BaseModel):
        return "(its defaults)"
    text = repr(value)
    return f"`{text}`" if len(text) <= 40 else "(see the code)"


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def _table(model: type[BaseModel], skip: tuple[str, ...] = (), identity: bool = True) -> list[str]:
    rows = ["| key | type | default | identity | what it is |", "|---|---|---|---|---|"]
    if not identity:
        rows = ["| key | type | default | what it is |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        if name in skip:
            continue
        cells = [f"`{name}`", _type_name(field.annotation), _default(field)]
        cells += [role(model, name)] if identity else []
        rows.append("| " + " | ".join([*cells, _comment(model, name).replace("|", "/")]) + " |")
    return rows


def _nested(model: type[BaseModel], seen: set[type]) -> list[type[BaseModel]]:
    out = []
    for field in model.model_fields.values():
        for nested in _models_in(field.annotation):
            if nested not in seen:
                seen.add(nested)
                out.append(nested)
                out += _nested(nested, seen)
    return out


def render(kinds: StageKindsLike) -> str:
    """The whole page."""
    parts = [HEADER, "## The top level", "", *_table(Recipe, skip=("stages",), identity=False), ""]
    seen: set[type] = {Recipe, StageConfig}
    nested = _nested(Recipe, seen)
    parts += ["## Keys of every stage", "", *_table(StageConfig), ""]
    for kind in kinds.names():
        config = kinds.config(kind)
        if not config.__module__.startswith("posttrain."):
            continue  # a plugin's kind documents itself
        doc = inspect.getdoc(config.__mro__[0]) if config.__doc__ else ""
        own = tuple(n for n in config.model_fields if n in StageConfig.model_fields)
        parts += [f"## Stage kind `{kind}`", ""]
        if doc and config.__doc__ not in (StageConfig.__doc__,):
            parts += [doc.splitlines()[0], ""]
        if config.trl_config:
            parts += [f"`trl:` options: `{config.trl_config.replace('trl:', 'trl.')}`.", ""]
        parts += [*_table(config, skip=own), ""]
        nested += _nested(config, seen)
    parts += ["## Sections used above", ""]
    for model in nested:
        own = model.__dict__.get("__doc__") or ""  # not BaseModel's, for a model without a docstring
        doc = inspect.cleandoc(own).split("\n\n")[0].replace("\n", " ")
        parts += [f"### `{model.__name__}`", "", doc, "", *_table(model), ""]
    return "\n".join(parts).rstrip() + "\n"
