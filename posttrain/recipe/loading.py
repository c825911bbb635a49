"""YAML in, a typed `Recipe` out, or every problem at once.

A problem names the file, the YAML line when known, the dotted key, what was expected and what was
found: ``recipes/x.yaml:12: stages[1].trl.learning_rate: expected a number, got 'fast'``
(reporting: `problems.py`). Paths in a recipe are relative to its folder, and what it names
beyond the schema (stages, files, rewards, plugins, hub names) is checked before anything runs
(`check.py`, `limits.py`, `teachers.py`). `quick:` and `--set` overrides are applied to the raw YAML first.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError

from posttrain.core.errors import RecipeError
from posttrain.core.run_folder import RESERVED_STAGE_NAMES, RESERVED_SUFFIXES
from posttrain.recipe.check import check_recipe, resolve_override, resolve_paths, stage_names_of
from posttrain.recipe.limits import check_limits
from posttrain.recipe.problems import Loader, Loc, Problems, did_you_mean, duplicate_keys, node_lines, yaml_load
from posttrain.recipe.schema import Recipe, StageConfig, StageKindsLike
from posttrain.recipe.teachers import check_teachers
from posttrain.recipe.trl import check_trl_options


class _RawRecipe(Recipe):
    """First pass: everything but the stages, which are validated per kind afterwards."""

    stages: list[dict[str, Any]] = Field(min_length=1)  # type: ignore[assignment]


def load_recipe(
    path: str | Path,
    overrides: typing.Sequence[str] = (),
    output_dir: str | None = None,
    quick: bool = False,
    *,
    kinds: StageKindsLike,
    check: bool = True,
    hub: bool = False,
    notes: list[str] | None = None,
) -> Recipe:
    """Read, override (`quick:` when asked, then `--set`), and validate a recipe; raise `RecipeError` with every
    problem. Its relative paths are resolved against its folder (`--set` values against the working directory);
    `check`, `hub`, `notes`: as for `parse_recipe`."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise RecipeError([f"{path}: cannot read recipe: {exc.strerror or exc}"]) from None
    return parse_recipe(text, source=str(path), overrides=overrides, output_dir=output_dir, quick=quick, kinds=kinds,
                        base_dir=path.absolute().parent, check=check, hub=hub, notes=notes)


def parse_recipe(
    text: str,
    source: str = "<recipe>",
    overrides: typing.Sequence[str] = (),
    output_dir: str | None = None,
    quick: bool = False,
    *,
    kinds: StageKindsLike,
    base_dir: Path | None = None,
    check: bool = True,
    hub: bool = False,
    notes: list[str] | None = None,
) -> Recipe:
    """Validate a recipe's text. `base_dir`: resolve its relative paths against this folder (None: leave them);
    `check`: also check what it names (stages, files, rewards, plugins); `hub`: and hub names, when reachable.
    Notes that are not problems (checks skipped offline) are appended to `notes`."""
    try:
        node = yaml.compose(text, Loader=Loader)
        raw = yaml_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}" if mark else source
        raise RecipeError([f"{where}: invalid YAML: {exc.problem or exc}"]) from None
    except yaml.YAMLError as exc:
        raise RecipeError([f"{source}: invalid YAML: {exc}"]) from None
    if not isinstance(raw, dict):
        raise RecipeError([f"{source}: expected a mapping at the top level, got {type(raw).__name__}"])

    lines = node_lines(node) if node is not None else {}
    problems = Problems(source, lines)
    for loc, key, first, again in duplicate_keys(node) if node is not None else []:
        problems.add(loc + (key,), f"key {key!r} is given twice (lines {first} and {again}); YAML keeps only the "
                     "last one: merge them")
    stage_names = stage_names_of(raw)
    if base_dir is not None:
        resolve_paths(raw, base_dir, stage_names)
    if quick:
        shrink = raw.get("quick")
        if not isinstance(shrink, dict) or not shrink:
            problems.add_raw("--quick: the recipe has no `quick:` mapping of overrides")
        else:
            for key, value in shrink.items():
                if base_dir is not None:
                    value = resolve_override(str(key), value, base_dir, stage_names)
                _set_value(raw, str(key), value, problems, "quick")
    for override in overrides:
        _apply_override(raw, override, problems, Path.cwd() if base_dir is not None else None, stage_names)
    if output_dir is not None:
        raw["output_dir"] = output_dir
    problems.raise_if_any()

    recipe = _validate(raw, problems, kinds)
    problems.raise_if_any()
    assert recipe is not None
    if check:
        check_recipe(recipe, problems, hub=hub)
        check_limits(recipe, problems, hub=hub)
        check_teachers(recipe, problems, hub=hub)
        problems.raise_if_any()
    if notes is not None:
        notes += problems.notes
    return recipe


def _validate(raw: dict[str, Any], problems: Problems, kinds: StageKindsLike) -> Recipe | None:
    top: _RawRecipe | None = None
    try:
        top = _RawRecipe.model_validate(raw)
    except ValidationError as exc:
        problems.add_pydantic(exc, (), _RawRecipe)

    raw_stages = raw.get("stages")
    if not isinstance(raw_stages, list):
        return None
    stages: list[StageConfig] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(raw_stages):
        loc: Loc = ("stages", i)
        if not isinstance(item, dict):
            continue  # already reported by the first pass
        name, kind = item.get("name"), item.get("kind")
        if isinstance(name, str):
            if name in seen:
                problems.add(loc + ("name",), f"duplicate stage name {name!r} (also stages[{seen[name]}])")
            elif name in RESERVED_STAGE_NAMES:
                problems.add(loc + ("name",), f"{name!r} is reserved for posttrain's own outputs")
            elif name.endswith(RESERVED_SUFFIXES):
                problems.add(loc + ("name",), f"{name!r}: names ending in {', '.join(RESERVED_SUFFIXES)} are "
                             "reserved for posttrain's backups and temporary folders")
            seen.setdefault(name, i)
        if kind is None:
            problems.add(loc, f"missing 'kind': expected one of {', '.join(kinds.names())}")
            continue
        if not isinstance(kind, str) or kind not in kinds.names():
            hint = did_you_mean(str(kind), kinds.names())
            problems.add(loc + ("kind",), f"unknown stage kind {kind!r}: expected one of "
                         f"{', '.join(kinds.names())}{hint}")
            continue
        config_cls = kinds.config(kind)
        try:
            stage = config_cls.model_validate(item)
        except ValidationError as exc:
            problems.add_pydantic(exc, loc, config_cls)
            continue
        n_before = len(problems)
        if stage.trl and config_cls.trl_config is None:
            problems.add(loc + ("trl",), f"stage kind {kind!r} takes no TRL options")
        elif config_cls.trl_config is not None:
            check_trl_options(stage, loc, problems)
        if len(problems) == n_before:
            stages.append(stage)

    if top is None or len(stages) != len(raw_stages) or len(problems):
        return None
    return Recipe(
        output_dir=top.output_dir, seed=top.seed, model=top.model, tokenizer=top.tokenizer, stages=stages,
        quick=top.quick, report_to=top.report_to,
    )


# --------------------------------------------------------------------------------------------------
# --set overrides


def _apply_override(raw: dict[str, Any], override: str, problems: Problems, base_dir: Path | None,
                    stage_names: frozenset[str]) -> None:
    """`stages.sft.trl.learning_rate=3e-5` (a stage by its name) or `seed=1` (any other path)."""
    key, sep, value_text = override.partition("=")
    if not sep or not key:
        problems.add_raw(f"--set {override!r}: expected KEY=VALUE, e.g. --set seed=1")
        return
    try:
        value = yaml_load(value_text) if value_text.strip() else ""
    except yaml.YAMLError:
        value = value_text
    if base_dir is not None:
        value = resolve_override(key, value, base_dir, stage_names)
    _set_value(raw, key, value, problems)


def _set_value(raw: dict[str, Any], key: str, value: Any, problems: Problems, origin: str = "--set") -> None:
    parts = key.split(".")
    target: Any = raw
    if parts[0] == "stages":
        if len(parts) < 3:
            problems.add_raw(f"{origin} {key}: address a stage option as stages.<name>.<key>")
            return
        stages = raw.get("stages") or []
        matches = [s for s in stages if isinstance(s, dict) and s.get("name") == parts[1]]
        if not matches:
            names = [s.get("name") for s in stages if isinstance(s, dict)]
            problems.add_raw(f"{origin} {key}: no stage named {parts[1]!r} (stages: {', '.join(map(str, names))})")
            return
        target, parts = matches[0], parts[2:]
    for part in parts[:-1]:
        nxt = target.get(part)
        if nxt is None:
            nxt = target[part] = {}
        if not isinstance(nxt, dict):
            problems.add_raw(f"{origin} {key}: {part!r} is not a mapping")
            return
        target = nxt
    target[parts[-1]] = value
