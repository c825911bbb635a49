"""How a recipe's problems are found in its YAML and reported: line numbers, dotted keys, duplicate keys.

A problem names the file, the YAML line when known, the dotted key, what was expected and what was
found: ``recipes/x.yaml:12: stages[1].trl.learning_rate: expected a number, got 'fast'``.
"""

from __future__ import annotations

import difflib
import re
import typing
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from posttrain.core.errors import RecipeError

Loc = tuple[str | int, ...]


class Loader(yaml.SafeLoader):
    """SafeLoader that reads `3e-5` as a float (YAML 1.2), as users mean it; PyYAML reads a string."""


Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*)?(?:\.\d*)?[eE][-+]?\d+$|^[-+]?\d[\d_]*\.\d*$|^[-+]?\.\d+$"
               r"|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$"),
    list("-+0123456789."),
)


def yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=Loader)


class Problems:
    """Every problem found in one recipe, each located by file, line and dotted key."""

    def __init__(self, source: str, lines: dict[Loc, int]):
        self.source, self.lines, self.items = source, lines, []  # type: list[str]
        #: Things worth saying that are not problems (e.g. checks skipped offline).
        self.notes: list[str] = []

    def __len__(self) -> int:
        return len(self.items)

    def add(self, loc: Loc, message: str) -> None:
        line = self.line_for(loc)
        where = f"{self.source}:{line}" if line else self.source
        self.items.append(f"{where}: {dotted(loc) or '<top level>'}: {message}")

    def add_raw(self, message: str) -> None:
        self.items.append(f"{self.source}: {message}")

    def add_pydantic(self, exc: ValidationError, prefix: Loc, model: type[BaseModel]) -> None:
        for err in exc.errors():
            loc = tuple(x for x in err["loc"] if not (isinstance(x, str) and x.startswith("function-")))
            message = describe(err, err.get("input"))
            if err["type"] == "extra_forbidden":
                message += did_you_mean(str(loc[-1]), fields_at(model, loc[:-1]))
            self.add(prefix + loc, message)

    def raise_if_any(self) -> None:
        if self.items:
            raise RecipeError(self.items)

    def line_for(self, loc: Loc) -> int | None:
        while loc:
            if loc in self.lines:
                return self.lines[loc]
            loc = loc[:-1]
        return None


def dotted(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


_EXPECTED = {
    "float_parsing": "expected a number",
    "float_type": "expected a number",
    "int_parsing": "expected an integer",
    "int_type": "expected an integer",
    "int_from_float": "expected an integer",
    "bool_parsing": "expected true or false",
    "bool_type": "expected true or false",
    "string_type": "expected a string",
    "dict_type": "expected a mapping",
    "model_type": "expected a mapping",
    "model_attributes_type": "expected a mapping",
    "list_type": "expected a list",
    "missing": "required key is missing",
    "extra_forbidden": "unknown key",
}


def describe(err: Any, found: Any) -> str:
    kind = err["type"]
    if kind in ("missing", "extra_forbidden"):
        return _EXPECTED[kind]
    if kind == "literal_error":
        message = f"expected one of {err.get('ctx', {}).get('expected', '')}"
    elif kind == "value_error":
        message = str(err["msg"]).removeprefix("Value error, ")
    else:
        message = _EXPECTED.get(kind) or f"expected {err['msg'][0].lower()}{err['msg'][1:]}"
    if isinstance(found, dict | list) and len(repr(found)) > 80:
        return f"{message}, got a {type(found).__name__}"
    return f"{message}, got {found!r}"


def did_you_mean(word: str, options: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def fields_at(model: type[BaseModel], loc: Loc) -> list[str]:
    cls: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        field = getattr(cls, "model_fields", {}).get(part)
        if field is None:
            return []
        sub = [a for a in typing.get_args(field.annotation) or (field.annotation,)
               if isinstance(a, type) and issubclass(a, BaseModel)]
        if not sub:
            return []
        cls = sub[0]
    return list(getattr(cls, "model_fields", {}))


def node_lines(node: yaml.Node, loc: Loc = ()) -> dict[Loc, int]:
    """Map each dotted location of a composed YAML document to its 1-based line."""
    out: dict[Loc, int] = {loc: node.start_mark.line + 1}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value
            out[loc + (key,)] = key_node.start_mark.line + 1
            for sub_loc, line in node_lines(value_node, loc + (key,)).items():
                out.setdefault(sub_loc, line)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out.update(node_lines(item, loc + (i,)))
    return out


def duplicate_keys(node: yaml.Node, loc: Loc = ()) -> list[tuple[Loc, str, int, int]]:
    """(where, key, first line, repeated line) for every key given twice in one mapping, at any depth.

    YAML loaders keep the last value silently: a second `trl:` block would replace the first.
    """
    found: list[tuple[Loc, str, int, int]] = []
    if isinstance(node, yaml.MappingNode):
        first: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value
            line = key_node.start_mark.line + 1
            if isinstance(key_node, yaml.ScalarNode) and key != "<<":
                if key in first:
                    found.append((loc, key, first[key], line))
                else:
                    first[key] = line
            found += duplicate_keys(value_node, loc + (key,))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            found += duplicate_keys(item, loc + (i,))
    return found
