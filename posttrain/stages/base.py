"""What a stage receives (`StageContext`) and returns (`StageResult`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from posttrain.core.errors import StageError
from posttrain.core.generation.base import GenerationSpec
from posttrain.core.run_folder import DATA_FILE, METRICS_FILE, MODEL_DIR, append_jsonl, read_jsonl
from posttrain.core.tools import ToolOptions, ToolSpec
from posttrain.recipe import Recipe, RewardSpec, StageConfig

if TYPE_CHECKING:
    from rewards.mix import RewardMix


def resolve_model(recipe: Recipe, run_dir: Path, base_model: str, ref: str | None, needed_by: str) -> str:
    """`None`/`"base"` → the base model; an earlier stage's name → its `model/`; else a path or hub name."""
    if ref is None or ref == "base":
        return base_model
    if ref in recipe.stage_names():
        path = run_dir / ref / MODEL_DIR
        if not (path / "config.json").exists():
            raise StageError(
                f"{needed_by} needs the model of stage {ref!r}, but {path} has none: "
                f"run stage {ref!r} first (posttrain run RECIPE --stages {ref})"
            )
        return str(path)
    return ref


@dataclass
class StageResult:
    metrics: dict[str, Any] = field(default_factory=dict)
    #: Named outputs (paths) for later stages, e.g. {"model": ".../sft/model"}.
    outputs: dict[str, str] = field(default_factory=dict)


@dataclass
class StageContext:
    recipe: Recipe
    config: StageConfig
    run_dir: Path
    #: Hub name or local path of the recipe's base model (a built tiny model lives in DIR/base_model).
    base_model: str
    log: logging.Logger
    #: Process rank and count when the stage runs under `accelerate launch`.
    process_index: int = 0
    num_processes: int = 1

    @property
    def stage_dir(self) -> Path:
        return self.run_dir / self.config.name

    @property
    def seed(self) -> int:
        return self.recipe.seed

    @property
    def is_main_process(self) -> bool:
        return self.process_index == 0

    def stage_output(self, name: str) -> Path:
        """Folder of an earlier stage of this recipe."""
        if name not in self.recipe.stage_names():
            raise StageError(f"stage {self.config.name!r}: no stage named {name!r} in the recipe")
        return self.run_dir / name

    def resolve_model(self, ref: str | None) -> str:
        """`None`/`"base"` → the base model; an earlier stage's name → its `model/`; else a path or hub name."""
        return resolve_model(self.recipe, self.run_dir, self.base_model, ref, f"stage {self.config.name!r}")

    def with_remote_code(self, spec: GenerationSpec, ours: bool) -> GenerationSpec:
        """`spec` with `trust_remote_code` decided: unset, it follows the recipe's `model.trust_remote_code` when the
        generator loads `ours` (the base model or an earlier stage's, which keep the base's tokenizer), else off."""
        if spec.trust_remote_code is not None:
            return spec
        return spec.model_copy(update={"trust_remote_code": ours and self.recipe.model.trust_remote_code})

    def resolve_data(self, ref: str, filename: str = DATA_FILE) -> Path:
        """An earlier stage's name → its `filename`; else a local file path."""
        if ref in self.recipe.stage_names():
            path = self.run_dir / ref / filename
            if not path.exists():
                raise StageError(
                    f"stage {self.config.name!r} needs {filename} from stage {ref!r}, but {path} does not "
                    f"exist: run stage {ref!r} first"
                )
            return path
        path = Path(ref)
        if not path.exists():
            raise StageError(f"stage {self.config.name!r}: data file {ref!r} does not exist")
        return path

    def load_dataset(self, ref: str, filename: str = DATA_FILE, split: str = "train") -> Any:
        """A `datasets.Dataset` from an earlier stage's `filename`, a local jsonl/json/parquet file, or a hub name."""
        import datasets

        if ref in self.recipe.stage_names():
            path = self.resolve_data(ref, filename)
        elif Path(ref).exists():
            path = Path(ref)
        else:
            try:
                return datasets.load_dataset(ref, split=split)
            except Exception as exc:
                raise StageError(f"stage {self.config.name!r}: {ref!r} is neither a stage of this recipe, a local "
                                 f"file, nor a loadable data set ({type(exc).__name__}: {exc})") from None
        if path.suffix == ".parquet":
            return datasets.Dataset.from_parquet(str(path))
        rows = read_jsonl(path)
        if not rows:
            raise StageError(f"stage {self.config.name!r}: {path} has no rows")
        return datasets.Dataset.from_list(rows)

    def build_rewards(self, specs: list[RewardSpec]) -> RewardMix:
        """The weighted mix of the specs' rewards (labelled by name, unique), with `model:` kwargs naming a stage
        resolved to its model, each set up (its model loaded) so that one that cannot load fails the stage before
        it starts."""
        from rewards.mix import RewardMix, unique_labels
        from rewards.registry import get_reward, takes_option

        out = []
        for label, spec in zip(unique_labels([s.label for s in specs]), specs, strict=True):
            kwargs = dict(spec.kwargs)
            if isinstance(kwargs.get("model"), str) and kwargs["model"] in self.recipe.stage_names():
                kwargs["model"] = self.resolve_model(kwargs["model"])
            if self.recipe.model.trust_remote_code and "trust_remote_code" not in kwargs and \
                    takes_option(spec.name, "trust_remote_code"):
                kwargs["trust_remote_code"] = True  # a reward's tokenizer/model follows the recipe's choice
            reward = get_reward(spec.name, **kwargs)
            reward.setup()  # a reward model or judge that cannot load fails the stage here, not row by row
            out.append((label, reward, spec.weight))
        return RewardMix(out)

    def logged(self, key: str) -> list[dict[str, Any]]:
        """The rows of DIR/<stage>/metrics.jsonl that hold a number under `key`, in order (none: no file yet)."""
        path = self.stage_dir / METRICS_FILE
        return [r for r in read_jsonl(path) if isinstance(r.get(key), float | int)] if path.exists() else []

    def build_tools(self, specs: list[ToolSpec]) -> list[Any]:
        """The sandbox tools the specs name (`rewards/sandbox/tool.py`), each checked now: a language whose toolchain is
        missing, or no sandbox on this machine, fails the stage before it starts (naming the fix), never mid-run."""
        from rewards.sandbox.tool import SandboxTool

        names = [spec.name for spec in specs]
        if len(set(names)) != len(names):
            raise StageError(f"stage {self.config.name!r}: tools {names} have the same name twice")
        return [SandboxTool.from_spec(spec) for spec in specs]

    def tool_loop(self, generator: Any, options: ToolOptions) -> Any:
        """`generator` as a tool loop over the stage's tools (`posttrain/core/generation/tool_loop.py`); an engine that
        renders the chat template itself gets its tokenizer ready to render and parse calls (or the stage fails,
        saying why the template cannot)."""
        from posttrain.core.generation import ToolLoop
        from posttrain.core.tool_calls import enable_tool_calls

        tokenizer = getattr(generator, "tokenizer", None)
        if tokenizer is not None:
            enable_tool_calls(tokenizer)
        return ToolLoop(generator, self.build_tools(options.tools), options.max_turns)

    def append_metrics(self, row: dict[str, Any]) -> None:
        """One JSON line per logging step in DIR/<stage>/metrics.jsonl (main process only)."""
        if self.is_main_process:
            append_jsonl(self.stage_dir / METRICS_FILE, row)

