"""The recipe's typed shape: the top level (`Recipe`), the base model and tokenizer, rewards, and what every stage
kind's `Config` is built on (`StageConfig`). Loading and validation are in `loading.py`; each kind adds its own
options in its stage module."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, Protocol

import yaml
from pydantic import ConfigDict, Field, SerializeAsAny, model_validator

from posttrain.core.identity import ADDED, PLACEMENT, MarkedModel, Placement, selection_fields

#: TRL/transformers options that posttrain sets itself; a recipe may not override them under `trl:`.
RESERVED_TRL_KEYS = {"output_dir": "the stage's folder DIR/<name>/ is used"}


class StrictModel(MarkedModel):
    model_config = ConfigDict(extra="forbid")


class ModelSpec(StrictModel):
    """The base model: a hub name or local path, or a tiny DeepSeek-V3 built from a config."""

    name_or_path: str | None = None
    #: DeepseekV3Config overrides for a randomly initialised tiny model (see posttrain.core.tiny).
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
    #: Add DeepSeek-V3's tool-call tokens and use its tool-call chat template and parser (stages with `tools`).
    tool_calls: Annotated[bool, ADDED] = False


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


class LaunchSpec(StrictModel):
    """Run the stage in several processes with `accelerate launch` (DDP, or DeepSpeed/FSDP by config file), on one
    machine or several (accelerate's own multi-node launch: run `posttrain run` on every machine, each with its
    `machine_rank`; docs/gpu.md has a SLURM script)."""

    #: Processes in all, over every machine (accelerate's --num_processes): GPUs per machine x machines.
    num_processes: int = Field(1, ge=1)
    #: An accelerate config file, e.g. accelerate/zero2.yaml next to a recipe in recipes/.
    config_file: str | None = None
    #: Rendezvous port of the main process (one machine: a free one by default; several: 29500 by default).
    main_process_port: Annotated[int | None, Placement(pin=None)] = Field(None, ge=1, le=65535)
    num_machines: Annotated[int, ADDED] = Field(1, ge=1)
    #: This machine's rank (0: the main machine, which runs the other stages and writes the run folder).
    machine_rank: Annotated[int, ADDED, PLACEMENT] = Field(0, ge=0)
    #: Address of machine 0, reachable from the others (several machines only).
    main_process_ip: Annotated[str | None, ADDED, PLACEMENT] = None
    #: GPU memory per process in GB, for `posttrain validate`'s estimate of a micro-batch's logits (default 80).
    gpu_memory_gb: Annotated[float | None, ADDED, PLACEMENT] = Field(None, gt=0)

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


class StageConfig(StrictModel):
    """Options shared by every stage kind; each kind subclasses this with its own typed options.

    Each option's role in the stage's identity (what reruns it) is declared on the option (`posttrain.core.identity`:
    no mark counts; `ADDED` for options added later, `PLACEMENT` for where it runs, `SELECTION` for a filter's
    bounds); the one serializer below applies the marks of the config and of every model nested in it.
    """

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
    #: Outputs a rerun may start from when only `SELECTION` options changed (a filter's bounds): it resumes from the
    #: set-aside folder's copies instead of computing them again, so new bounds cost no new samples.
    reusable_outputs: ClassVar[tuple[str, ...]] = ()

    @property
    def selection_fields(self) -> tuple[str, ...]:
        """The options that only choose among what the stage computes (marked `SELECTION`)."""
        return selection_fields(type(self))

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
    #: Experiment trackers (posttrain.training.tracking): trainer stages' curves and every stage's final metrics.
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
