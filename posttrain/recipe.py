"""Recipe schema and validation: YAML in, a typed `Recipe` out, or every problem at once.

A problem names the file, the YAML line when known, the dotted key, what was expected and what was
found: ``recipes/x.yaml:12: stages[1].trl.learning_rate: expected a number, got 'fast'``
(reporting: `recipe_problems`). Paths in a recipe are relative to its folder, and what it names
beyond the schema (stages, files, rewards, plugins, hub names) is checked before anything runs
(`recipe_check`).
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializationInfo,
    SerializeAsAny,
    TypeAdapter,
    ValidationError,
    model_serializer,
    model_validator,
)

from posttrain.core.errors import RecipeError
from posttrain.recipe_check import check_recipe, resolve_override, resolve_paths, stage_names_of
from posttrain.recipe_limits import check_limits
from posttrain.recipe_problems import (
    Loader,
    Loc,
    Problems,
    describe,
    did_you_mean,
    duplicate_keys,
    node_lines,
    yaml_load,
)
from posttrain.run_folder import RESERVED_STAGE_NAMES, RESERVED_SUFFIXES

#: TRL/transformers options that posttrain sets itself; a recipe may not override them under `trl:`.
RESERVED_TRL_KEYS = {"output_dir": "the stage's folder DIR/<name>/ is used"}


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSpec(StrictModel):
    """The base model: a hub name or local path, or a tiny DeepSeek-V3 built from a config."""

    name_or_path: str | None = None
    #: DeepseekV3Config overrides for a randomly initialised tiny model (see posttrain.tiny).
    tiny: dict[str, Any] | None = None
    revision: str | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    trust_remote_code: bool = False

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        if (self.name_or_path is None) == (self.tiny is None):
            raise ValueError("give exactly one of 'name_or_path' (hub name or path) or 'tiny' (a config)")
        return self


class TokenizerTrainSpec(StrictModel):
    """Train a byte-level BPE tokenizer on a corpus the recipe names (`module:function`)."""

    corpus: str
    corpus_kwargs: dict[str, Any] = Field(default_factory=dict)
    vocab_size: int = Field(512, ge=300, le=200_000)


class TokenizerSpec(StrictModel):
    """Where the tokenizer comes from; by default the model's own."""

    name_or_path: str | None = None
    train: TokenizerTrainSpec | None = None

    @model_validator(mode="after")
    def _at_most_one(self) -> TokenizerSpec:
        if self.name_or_path is not None and self.train is not None:
            raise ValueError("give at most one of 'name_or_path' or 'train'")
        return self


class RewardSpec(StrictModel):
    """One reward of a weighted mix: a built-in name, `module:function`, or an entry point."""

    name: str
    weight: float = 1.0
    #: Options bound to the reward; `model: <stage name>` is replaced by that stage's model folder.
    kwargs: dict[str, Any] = Field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.name.rpartition(":")[2].rpartition(".")[2]


#: `model_dump(context={IDENTITY: True})`: the dump a stage's identity (its config hash) is computed from. Options
#: that say where or how a stage runs, never what it computes (ports, hosts, a machine's rank), are left out or
#: pinned to their old defaults there, so changing them never retrains a stage.
IDENTITY = "identity"


def for_identity(info: SerializationInfo) -> bool:
    return bool(info.context) and bool(info.context.get(IDENTITY))


class LaunchSpec(StrictModel):
    """Run the stage in several processes with `accelerate launch` (DDP, or DeepSpeed/FSDP by config file), on one
    machine or several (accelerate's own multi-node launch: run `posttrain run` on every machine, each with its
    `machine_rank`; recipes/README.md has a SLURM script)."""

    #: Processes in all, over every machine (accelerate's --num_processes): GPUs per machine x machines.
    num_processes: int = Field(1, ge=1)
    #: An accelerate config file, e.g. accelerate/zero2.yaml next to a recipe in recipes/.
    config_file: str | None = None
    #: Rendezvous port of the main process (one machine: a free one by default; several: 29500 by default).
    main_process_port: int | None = Field(None, ge=1, le=65535)
    num_machines: int = Field(1, ge=1)
    #: This machine's rank (0: the main machine, which runs the other stages and writes the run folder).
    machine_rank: int = Field(0, ge=0)
    #: Address of machine 0, reachable from the others (several machines only).
    main_process_ip: str | None = None
    #: GPU memory per process in GB, for `posttrain validate`'s estimate of a micro-batch's logits (default 80).
    gpu_memory_gb: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _machines(self) -> LaunchSpec:
        if self.machine_rank >= self.num_machines:
            raise ValueError(f"machine_rank {self.machine_rank} is not below num_machines {self.num_machines}")
        if self.num_machines > 1:
            if not self.main_process_ip:
                raise ValueError("several machines need main_process_ip: the address of machine 0")
            if self.num_processes % self.num_machines:
                raise ValueError(f"num_processes ({self.num_processes}) counts the processes of all machines: "
                                 f"give a multiple of num_machines ({self.num_machines})")
        return self

    @property
    def processes_per_machine(self) -> int:
        return self.num_processes // self.num_machines

    @model_serializer(mode="wrap")
    def _dump(self, handler: Any, info: SerializationInfo) -> Any:
        """New options are left out at their defaults (stages written before them keep their hash); where this
        machine is and what GPU memory it has never count for the identity."""
        data = handler(self)
        if not isinstance(data, dict):
            return data
        defaults = {"num_machines": 1, "machine_rank": 0, "main_process_ip": None, "gpu_memory_gb": None}
        for key, default in defaults.items():
            if data.get(key) == default or (for_identity(info) and key != "num_machines"):
                data.pop(key, None)
        if for_identity(info):
            data["main_process_port"] = None
        return data


class StageConfig(StrictModel):
    """Options shared by every stage kind; each kind subclasses this with its own typed options."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    kind: str
    launch: LaunchSpec = Field(default_factory=LaunchSpec)
    #: Options passed through to a TRL config class (for kinds that set `trl_config`).
    trl: dict[str, Any] = Field(default_factory=dict)

    #: `module:Class` of the TRL config the `trl:` mapping is passed to, or None if the kind has none.
    trl_config: ClassVar[str | None] = None
    #: Defaults posttrain applies under the user's `trl:` options (the user's values win).
    trl_defaults: ClassVar[dict[str, Any]] = {}
    #: Fields that may name an earlier stage (whose output is then used) instead of a path.
    ref_fields: ClassVar[tuple[str, ...]] = ()
    #: Files (relative to DIR/<name>/) a finished stage must have: a "done" stage missing one runs again.
    required_outputs: ClassVar[tuple[str, ...]] = ()
    #: Options that only choose among what the stage computes (a filter's bounds). When a rerun differs from the
    #: folder it sets aside in nothing else, it starts with that folder's `reusable_outputs` (which the stage
    #: resumes from) instead of computing them again: new bounds cost no new samples.
    selection_fields: ClassVar[tuple[str, ...]] = ()
    reusable_outputs: ClassVar[tuple[str, ...]] = ()

    def trl_kwargs(self) -> dict[str, Any]:
        return {**self.trl_defaults, **self.trl}

    def data_refs(self) -> list[str]:
        """The data the stage reads by name (earlier stages, local files, hub sets), for its log line; the runner
        finds the local files among them by itself (their identity is part of the stage's hash)."""
        return []

    def expected_outputs(self) -> tuple[str, ...]:
        """The required outputs of this stage as configured (a kind whose outputs depend on options overrides it)."""
        return self.required_outputs


class StageKindsLike(Protocol):
    """What the schema needs to know of the stage kinds (`posttrain.stages.KINDS` in the pipeline)."""

    def names(self) -> list[str]: ...

    def config(self, kind: str) -> type[StageConfig]: ...


class Recipe(StrictModel):
    output_dir: str = "runs/default"
    seed: int = 0
    model: ModelSpec
    tokenizer: TokenizerSpec = Field(default_factory=TokenizerSpec)
    stages: list[SerializeAsAny[StageConfig]] = Field(min_length=1)
    #: Overrides `posttrain run --quick` applies (keys addressed as with --set): a CI-sized run of the recipe.
    quick: dict[str, Any] = Field(default_factory=dict)
    #: Experiment trackers (posttrain.tracking): trainer stages' curves and every stage's final metrics.
    report_to: list[Literal["tensorboard", "wandb", "trackio"]] = Field(default_factory=list)

    def stage(self, name: str) -> StageConfig:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(name)

    def stage_names(self) -> list[str]:
        return [s.name for s in self.stages]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


class _RawRecipe(Recipe):
    """First pass: everything but the stages, which are validated per kind afterwards."""

    stages: list[dict[str, Any]] = Field(min_length=1)  # type: ignore[assignment]


# --------------------------------------------------------------------------------------------------
# Loading


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
            _check_trl_options(stage, loc, problems)
        if len(problems) == n_before:
            stages.append(stage)

    if top is None or len(stages) != len(raw_stages) or len(problems):
        return None
    return Recipe(
        output_dir=top.output_dir, seed=top.seed, model=top.model, tokenizer=top.tokenizer, stages=stages,
        quick=top.quick, report_to=top.report_to,
    )


# --------------------------------------------------------------------------------------------------
# TRL pass-through


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


def _check_trl_options(stage: StageConfig, loc: Loc, problems: Problems) -> None:
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
