"""What a recipe names beyond its own schema, resolved and checked before anything runs.

Paths in a recipe are relative to the recipe's folder: `resolve_paths` makes them absolute at load
time (a `--set` value is relative to the working directory, as on any command line). `check_recipe`
then finds what would otherwise fail only when the run reaches it: stage references that do not
exist or run later, local files that are missing, rewards and `module:function` plugins that do not
import or are not callable, unknown `tiny:` options, values no trainer can use (`max_steps: 0`,
a negative learning rate), and hub names, these only where the hub can be reached.

Fields are recognised by their key wherever they sit (a teacher's `model`, a reward's `kwargs.model`),
so a new stage kind gets these checks by naming its fields like the others.
"""

from __future__ import annotations

import functools
import inspect
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from posttrain.core.errors import PosttrainError
from posttrain.core.hub import hub_repo_exists, hub_unreachable
from posttrain.recipe.problems import Loc, Problems, did_you_mean

#: Keys whose string value is a local file (or folder).
FILE_KEYS = frozenset({"path", "config_file", "deepspeed"})
#: Keys whose value is an earlier stage, a local path, a hub name or a built-in name.
REF_KEYS = frozenset({"model", "data", "name_or_path", "dataset", "tokenizer", "template", "reference", "source",
                      "teacher"})
#: Keys of a hub *data set* (the others name models; `source`: an entry of a weighted data mix).
DATASET_KEYS = frozenset({"data", "dataset", "source"})
#: Keys whose value is a `module:function` that must import and be callable.
PLUGIN_KEYS = frozenset({"function", "corpus"})
#: Lists of reward specs (`{name, weight, kwargs}`).
REWARD_LISTS = frozenset({"rewards", "verifiers"})
#: Sub-mappings handed to user code as they are: never rewritten or checked.
OPAQUE_KEYS = frozenset({"options", "corpus_kwargs", "columns", "quick"})
#: Suffixes that mark a string as a file even without a slash (`data: rows.jsonl`).
FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".txt", ".yaml", ".yml", ".jinja", ".j2", ".arrow")
#: Generation backends whose `model` is not a weights reference.
_NOT_WEIGHTS = {"openai": "served", "scripted": "plugin"}

#: `tiny:` options posttrain sets itself from the tokenizer.
TINY_SET_BY_POSTTRAIN = ("vocab_size", "bos_token_id", "eos_token_id", "pad_token_id")


# --------------------------------------------------------------------------------------------------
# Walking a recipe's values by key


def _context(parent: dict[str, Any], key: str, value: str, stages: frozenset[str]) -> str | None:
    """What the string `value` under `key` is: 'file', 'ref', 'stage', 'plugin', 'served' or None (other)."""
    if key in FILE_KEYS:
        return "file"
    if key in PLUGIN_KEYS:
        return "plugin"
    if key not in REF_KEYS:
        return None
    if value in stages or value == "base":
        return "stage"
    if key == "model" and parent.get("backend") in _NOT_WEIGHTS:
        return _NOT_WEIGHTS[parent["backend"]]
    if ":" in value and "://" not in value and not looks_like_path(value):
        return "plugin"
    return "ref"


def _walk(obj: Any, loc: Loc, stages: frozenset[str]) -> Iterator[tuple[dict[str, Any], str, str, Loc, str]]:
    """(parent mapping, key, value, location, context) for every classified string in `obj`."""
    if isinstance(obj, dict):
        user_kwargs = "function" in obj  # a source's `kwargs` go to the user's function unchanged
        for key, value in list(obj.items()):
            if not isinstance(key, str) or key in OPAQUE_KEYS or (key == "kwargs" and user_kwargs):
                continue
            if isinstance(value, str):
                context = _context(obj, key, value, stages)
                if context is not None:
                    yield obj, key, value, loc + (key,), context
            else:
                yield from _walk(value, loc + (key,), stages)
    elif isinstance(obj, list):
        for i, item in enumerate(obj):
            yield from _walk(item, loc + (i,), stages)


def looks_like_path(value: str) -> bool:
    """A value that can only mean a local file: `/abs`, `./x`, `../x`, `~/x`, or a data file's suffix."""
    return value.startswith(("/", "./", "../", "~")) or value.lower().endswith(FILE_SUFFIXES)


def stage_names_of(raw: Any) -> frozenset[str]:
    stages = raw.get("stages") if isinstance(raw, dict) else None
    return frozenset(s["name"] for s in stages or [] if isinstance(s, dict) and isinstance(s.get("name"), str))


# --------------------------------------------------------------------------------------------------
# Recipe-relative paths


def resolve_paths(obj: Any, base_dir: Path, stages: frozenset[str]) -> None:
    """Make the relative local paths in `obj` (a raw recipe or part of one) absolute against `base_dir`, in place.

    A file key's value is always a path. A reference (`data`, `model`, ...) is a path when it looks like
    one or exists next to the recipe; otherwise it stays a stage name, hub name or built-in name.
    """
    for parent, key, value, _, context in list(_walk(obj, (), stages)):
        resolved = resolve_value(value, context, base_dir)
        if resolved != value:
            parent[key] = resolved


def resolve_value(value: str, context: str | None, base_dir: Path) -> str:
    if context not in ("file", "ref") or "://" in value:
        return value
    path = Path(value).expanduser()
    if path.is_absolute():
        return str(path)
    candidate = base_dir / path
    if context == "file" or looks_like_path(value) or candidate.exists():
        return os.path.abspath(candidate)
    return value


def resolve_override(key: str, value: Any, base_dir: Path, stages: frozenset[str]) -> Any:
    """A `--set`/`quick:` value, its paths resolved against `base_dir` (`key` is the dotted key it sets)."""
    last = key.rpartition(".")[2]
    if isinstance(value, str):
        return resolve_value(value, _context({}, last, value, stages), base_dir)
    if isinstance(value, dict | list):
        holder = {last: value}
        resolve_paths(holder, base_dir, stages)
        return holder[last]
    return value


# --------------------------------------------------------------------------------------------------
# Checks


def check_recipe(recipe: Any, problems: Problems, *, hub: bool = False) -> None:
    """Everything about `recipe` (a validated `Recipe`) that can be known without running it."""
    names = recipe.stage_names()
    stages = frozenset(names)
    hub_names: list[tuple[Loc, str, str]] = []
    top = recipe.model_dump(mode="json", exclude={"stages", "quick"})
    items = [(key, value, loc, context) for _, key, value, loc, context in _walk(top, (), frozenset())]
    for i, stage in enumerate(recipe.stages):
        later = frozenset(names[i:])
        dump = stage.model_dump(mode="json")
        for _, key, value, loc, context in _walk(dump, ("stages", i), stages):
            if context == "stage" and value in later:
                problems.add(loc, f"refers to stage {value!r}, which does not run before this one: "
                             "move that stage earlier or fix the name")
            else:
                items.append((key, value, loc, context))
        _check_trl_values(stage.trl, ("stages", i, "trl"), problems)
    for key, value, loc, context in items:
        if context == "file":
            _check_file(value, loc, problems)
        elif context == "plugin":
            _check_plugin(value, loc, problems)
        elif context == "ref":
            if looks_like_path(value) or Path(value).is_absolute():
                _check_file(value, loc, problems)
            elif key == "template":
                continue  # a built-in template name (the reward checks it)
            elif "/" not in value and (hint := did_you_mean(value, names)):
                problems.add(loc, f"no stage, file or hub name {value!r}{hint}")
            else:
                hub_names.append((loc, value, "dataset" if key in DATASET_KEYS else "model"))
    _check_rewards(recipe, problems)
    _check_tools(recipe, problems, hub)
    if recipe.model.tiny:
        _check_tiny(recipe.model.tiny, problems)
    if hub and hub_names:
        _check_hub(hub_names, problems)


def _check_file(value: str, loc: Loc, problems: Problems) -> None:
    path = Path(value).expanduser()
    if not path.exists():
        problems.add(loc, f"file not found: {path} (paths in a recipe are relative to the recipe's folder)")


def _check_plugin(ref: str, loc: Loc, problems: Problems) -> None:
    from posttrain.core.plugins import load_object

    try:
        obj = load_object(ref)
    except PosttrainError as exc:
        problems.add(loc, str(exc))
        return
    if not callable(obj):
        problems.add(loc, f"{ref!r} is a {type(obj).__name__}, not a function or class")


def _check_rewards(recipe: Any, problems: Problems) -> None:
    from rewards.registry import resolve

    for loc, name in _reward_names(recipe):
        try:
            target = resolve(name)
        except PosttrainError as exc:
            problems.add(loc, str(exc))
            continue
        except Exception as exc:  # the user's module raised while importing
            problems.add(loc, f"reward {name!r} failed to load: {type(exc).__name__}: {exc}")
            continue
        if not callable(target):
            problems.add(loc, f"reward {name!r} is a {type(target).__name__}, not a function or class")


def _reward_names(recipe: Any) -> Iterator[tuple[Loc, str]]:
    def walk(obj: Any, loc: Loc) -> Iterator[tuple[Loc, str]]:
        if isinstance(obj, dict):
            for key, value in obj.items():
                if key in REWARD_LISTS and isinstance(value, list):
                    for j, spec in enumerate(value):
                        if isinstance(spec, dict) and isinstance(spec.get("name"), str):
                            yield loc + (key, j, "name"), spec["name"]
                elif key not in OPAQUE_KEYS:
                    yield from walk(value, loc + (key,))
        elif isinstance(obj, list):
            for j, item in enumerate(obj):
                yield from walk(item, loc + (j,))

    for i, stage in enumerate(recipe.stages):
        yield from walk(stage.model_dump(mode="json"), ("stages", i))


def _check_tools(recipe: Any, problems: Problems, hub: bool) -> None:
    """A stage with `tools`: each names a sandbox language whose toolchain is here, and the engine's chat template
    can render a tool call and read it back (the recipe's trained tokenizer has the tool-call tokens)."""
    from rewards.sandbox.languages import TABLE, missing_toolchain, normalize_language

    verdicts: dict[str, str | None] = {}
    for i, stage in enumerate(recipe.stages):
        tools = getattr(stage, "tools", None) or []
        for j, tool in enumerate(tools):
            field = "language" if tool.language else "name"
            try:
                language = normalize_language(tool.sandbox_language)
            except PosttrainError:
                problems.add(("stages", i, "tools", j, field), f"no sandbox language {tool.sandbox_language!r}; "
                             f"a tool runs one of {sorted(TABLE)} (set `language` when the name is another)")
                continue
            if (why := missing_toolchain(language)) is not None:
                problems.add(("stages", i, "tools", j, field), why)
        if not tools:
            continue
        for ref in _tokenizer_refs(recipe, stage):
            if ref not in verdicts:
                verdicts[ref] = _tool_template_problem(recipe, ref, hub)
            if verdicts[ref] is not None:
                problems.add(("stages", i, "tools"), f"the model's chat template ({ref}) cannot run tools: "
                             f"{verdicts[ref]}")


def _tokenizer_refs(recipe: Any, stage: Any) -> list[str]:
    """The tokenizers whose templates a stage's tool loop renders: its model's (the base's, for the base or an earlier
    stage), each weights-loading teacher's or engine's; none for a served or scripted engine."""
    engines = [t for t in getattr(stage, "teachers", [])] or [getattr(stage, "generation", None)]
    models = [e.model if e is not None and e.model else getattr(stage, "model", None)
              for e in engines if e is None or e.loads_weights]
    names = recipe.stage_names()
    return list(dict.fromkeys("base" if m in (None, "base") or m in names else m for m in models))


def _tool_template_problem(recipe: Any, ref: str, hub: bool) -> str | None:
    """Why `ref`'s tokenizer cannot render and parse tool calls (`base`: the recipe's), or None (also when it cannot
    be loaded here: the run says so)."""
    from posttrain.core.tool_calls import ToolFormatError, enable_tool_calls

    if ref == "base" and recipe.tokenizer.train is not None:
        return None if recipe.tokenizer.train.tool_calls else (
            "the tokenizer the recipe trains has no tool-call tokens: set tokenizer.train.tool_calls: true")
    name = (recipe.tokenizer.name_or_path or recipe.model.name_or_path) if ref == "base" else ref
    if not name or not (looks_like_path(name) or Path(name).is_dir() or hub):
        return None
    try:
        from posttrain.core.models import load_tokenizer

        tokenizer = load_tokenizer(name, trust_remote_code=recipe.model.trust_remote_code)
    except Exception:  # not loadable from here (no network, a private repo): the run checks it
        return None
    try:
        enable_tool_calls(tokenizer)
    except ToolFormatError as exc:
        return str(exc)
    return None


@functools.cache
def tiny_options() -> frozenset[str]:
    """Every option `DeepseekV3Config` knows (its arguments, attributes and aliases)."""
    from transformers import DeepseekV3Config

    known = set(inspect.signature(DeepseekV3Config.__init__).parameters) - {"self", "kwargs"}
    known |= set(DeepseekV3Config().to_dict()) | set(getattr(DeepseekV3Config, "attribute_map", {}))
    return frozenset(known)


def _check_tiny(tiny: dict[str, Any], problems: Problems) -> None:
    known = tiny_options()
    for key in tiny:
        loc: Loc = ("model", "tiny", key)
        if key in TINY_SET_BY_POSTTRAIN:
            problems.add(loc, "set by posttrain from the tokenizer; remove it")
        elif key not in known:
            problems.add(loc, f"unknown DeepseekV3Config option{did_you_mean(key, known)}")


#: TRL/transformers options with a range no run can use: key -> (is it fine?, what is expected).
_TRL_RANGES: dict[str, tuple[Callable[[float], bool], str]] = {
    "max_steps": (lambda v: v > 0 or v == -1, "a number of steps > 0 (or -1: use num_train_epochs)"),
    "num_train_epochs": (lambda v: v > 0, "a number > 0"),
    "learning_rate": (lambda v: v > 0, "a number > 0"),
    "per_device_train_batch_size": (lambda v: v >= 1, "an integer >= 1"),
    "per_device_eval_batch_size": (lambda v: v >= 1, "an integer >= 1"),
    "gradient_accumulation_steps": (lambda v: v >= 1, "an integer >= 1"),
    "logging_steps": (lambda v: v > 0, "a number > 0"),
    "save_steps": (lambda v: v > 0, "a number > 0"),
    "eval_steps": (lambda v: v > 0, "a number > 0"),
    "save_total_limit": (lambda v: v >= 1, "an integer >= 1 (or null: keep every checkpoint)"),
    "warmup_steps": (lambda v: v >= 0, "a number >= 0"),
    "warmup_ratio": (lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    "weight_decay": (lambda v: v >= 0, "a number >= 0"),
    "max_grad_norm": (lambda v: v >= 0, "a number >= 0"),
    "temperature": (lambda v: v >= 0, "a number >= 0"),
    "top_p": (lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "beta": (lambda v: v >= 0, "a number >= 0"),
    "num_generations": (lambda v: v >= 2, "an integer >= 2 (GRPO compares completions within a group)"),
    "max_length": (lambda v: v >= 1, "an integer >= 1"),
    "max_prompt_length": (lambda v: v >= 1, "an integer >= 1"),
    "max_completion_length": (lambda v: v >= 1, "an integer >= 1"),
}


def _check_trl_values(trl: dict[str, Any], loc: Loc, problems: Problems) -> None:
    for key, value in trl.items():
        rule = _TRL_RANGES.get(key)
        if rule is None or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        ok, expected = rule
        if not math.isfinite(value) or not ok(value):
            problems.add(loc + (key,), f"expected {expected}, got {value!r}")


# --------------------------------------------------------------------------------------------------
# The hub (only where it can be reached; never a long wait: posttrain/core/hub.py)


def _check_hub(names: list[tuple[Loc, str, str]], problems: Problems) -> None:
    why = hub_unreachable()
    if why is not None:
        shown = ", ".join(sorted({name for _, name, _ in names}))
        problems.notes.append(f"hub names not checked ({why}): {shown}")
        return
    for loc, name, kind in names:
        found = hub_repo_exists(name, kind)
        if found is False:
            problems.add(loc, f"no stage, local file or hub {kind} named {name!r}")
        elif found is None:
            problems.notes.append(f"{name}: the hub did not answer; not checked")
