"""Prompt sources: a `datasets` data set by hub name, a local jsonl/json/parquet file, or a `module:function`.

Every source yields the same rows: `id`, `prompt` (a string or a chat list) and the columns the
verifiers need (`solution`, `tests`, ...), renamed by the recipe's column mapping::

    source:
      dataset: AI-MO/NuminaMath-TIR        # or path: data/problems.jsonl, or function: pkg.mod:make_rows
      split: train
      columns: {prompt: problem, solution: answer}   # our name: the source's column
      keep: []                                       # other columns to carry along (default: all)
      limit: 1000
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from posttrain.core.errors import DataError

log = logging.getLogger("posttrain.data.sources")

#: Columns the distill outputs define themselves; a source column of that name is not carried.
RESERVED = ("id", "prompt", "prompt_id", "completion", "teacher", "scores", "chosen", "rejected")
#: Placeholder in `prompt_template` for the source's prompt text.
PROMPT_PLACEHOLDER = "{prompt}"


class SourceSpec(BaseModel):
    """Where rows come from: exactly one of `dataset`, `path` or `function`."""

    model_config = ConfigDict(extra="forbid")

    #: A `datasets.load_dataset` name (hub name or a local data set folder).
    dataset: str | None = None
    #: The data set's configuration (subset) name.
    subset: str | None = None
    split: str = "train"
    #: A local .jsonl / .json / .parquet file.
    path: str | None = None
    #: `module:function` returning an iterable of dicts; called with `kwargs`.
    function: str | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)
    #: Our column name -> the source's column name; `prompt` defaults to the source's `prompt`.
    columns: dict[str, str] = Field(default_factory=dict)
    #: Other source columns carried unchanged to the outputs; None carries every column.
    keep: list[str] | None = None
    #: Column holding a stable row id; default `id` when the source has one, else a hash of the prompt.
    id_column: str | None = None
    #: Wraps string prompts, e.g. "{prompt}\nPlease reason step by step, and put your final answer within \\boxed{}."
    prompt_template: str | None = None
    limit: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _one_origin(self) -> SourceSpec:
        given = [k for k in ("dataset", "path", "function") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of 'dataset', 'path' or 'function' (got {given or 'none'})")
        if self.prompt_template is not None and PROMPT_PLACEHOLDER not in self.prompt_template:
            raise ValueError(f"prompt_template must contain {PROMPT_PLACEHOLDER}")
        bad = sorted(set(self.columns) & (set(RESERVED) - {"prompt"}))
        if bad:
            raise ValueError(f"columns: {bad} are written by posttrain itself; map to other names")
        return self

    def describe(self) -> str:
        return self.dataset or self.path or self.function or "?"


def load_rows(spec: SourceSpec) -> list[dict[str, Any]]:
    """The source's rows as `{"id", "prompt", **verifier columns}`; duplicate prompts are dropped (logged)."""
    raw = _raw_rows(spec)
    rows: list[dict[str, Any]] = []
    seen_ids: dict[str, int] = {}
    seen_prompts: set[str] = set()
    dropped = 0
    for i, item in enumerate(raw):
        if spec.limit is not None and len(rows) >= spec.limit:
            break
        if not isinstance(item, dict):
            raise DataError(f"source {spec.describe()!r}: row {i} is a {type(item).__name__}, expected a mapping")
        row = _convert(spec, item, i)
        key = json.dumps(row["prompt"], sort_keys=True)
        if key in seen_prompts:
            dropped += 1
            continue
        seen_prompts.add(key)
        if row["id"] in seen_ids:
            raise DataError(f"source {spec.describe()!r}: rows {seen_ids[row['id']]} and {i} share the id "
                            f"{row['id']!r}; ids must be unique (set id_column, or drop it to hash the prompt)")
        seen_ids[row["id"]] = i
        rows.append(row)
    if dropped:
        log.warning("source %s: dropped %d rows whose prompt repeats an earlier row", spec.describe(), dropped)
    if not rows:
        raise DataError(f"source {spec.describe()!r} has no rows")
    return rows


def _raw_rows(spec: SourceSpec) -> Iterable[Any]:
    if spec.function is not None:
        from posttrain.core.plugins import load_object

        fn = load_object(spec.function)
        try:
            return list(fn(**spec.kwargs))
        except TypeError as exc:
            raise DataError(f"source function {spec.function!r}: bad kwargs {sorted(spec.kwargs)}: {exc}") from exc
    if spec.path is not None:
        return read_file(Path(spec.path))
    return _load_dataset(spec)


def read_file(path: Path) -> list[dict[str, Any]]:
    """Rows of a local .jsonl, .json (a list of rows) or .parquet file."""
    if not path.exists():
        raise DataError(f"data file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if suffix == ".json":
        try:
            data = json.loads(path.read_text())
        except ValueError as exc:
            raise DataError(f"{path}: not valid JSON ({exc})") from None
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON list of rows")
        return data
    if suffix in (".jsonl", ".ndjson"):
        rows = []
        with open(path) as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except ValueError as exc:
                        raise DataError(f"{path}:{lineno}: not valid JSON ({exc})") from None
        return rows
    raise DataError(f"data file {str(path)!r}: unsupported type {suffix!r} (use .jsonl, .json or .parquet)")


def _load_dataset(spec: SourceSpec) -> Iterable[Any]:
    import datasets

    assert spec.dataset is not None
    try:
        ds = datasets.load_dataset(spec.dataset, spec.subset, split=spec.split)
    except Exception as exc:
        raise DataError(
            f"cannot load data set {spec.dataset!r} (subset {spec.subset!r}, split {spec.split!r}): "
            f"{type(exc).__name__}: {exc}. Check the name and split, your network/HF_TOKEN, or use a local "
            "file with 'path:'"
        ) from None
    if spec.limit is not None:
        ds = ds.select(range(min(len(ds), spec.limit * 2)))  # some rows may be dropped as repeats
    return ds


def _convert(spec: SourceSpec, item: dict[str, Any], index: int) -> dict[str, Any]:
    mapping = {"prompt": "prompt", **spec.columns}
    missing = [src for src in mapping.values() if src not in item]
    if missing:
        raise DataError(f"source {spec.describe()!r}: row {index} has no column {missing[0]!r} "
                        f"(columns: {', '.join(map(str, item))}); fix 'columns:' in the recipe")
    prompt = item[mapping["prompt"]]
    if isinstance(prompt, str):
        if spec.prompt_template is not None:
            prompt = spec.prompt_template.replace(PROMPT_PLACEHOLDER, prompt)
    elif not (isinstance(prompt, list) and all(isinstance(m, dict) and "content" in m for m in prompt)):
        raise DataError(f"source {spec.describe()!r}: row {index}: the prompt must be a string or a list of "
                        f"{{role, content}} messages, got {type(prompt).__name__}")
    row: dict[str, Any] = {"id": _row_id(spec, item, prompt), "prompt": prompt}
    for ours, theirs in mapping.items():
        if ours != "prompt":
            row[ours] = item[theirs]
    used = set(mapping.values()) | {spec.id_column or "id"}
    carry = spec.keep if spec.keep is not None else [k for k in item if k not in used and k not in RESERVED]
    for col in carry:
        if col not in item:
            raise DataError(f"source {spec.describe()!r}: 'keep' names column {col!r}, which row {index} lacks")
        if col in RESERVED:
            raise DataError(f"source {spec.describe()!r}: column {col!r} cannot be kept: posttrain writes it")
        row.setdefault(col, item[col])
    try:
        json.dumps(row)
    except TypeError as exc:
        raise DataError(f"source {spec.describe()!r}: row {index} has a value that is not JSON ({exc}); "
                        "drop that column with 'keep:'") from None
    return row


def _row_id(spec: SourceSpec, item: dict[str, Any], prompt: Any) -> str:
    if spec.id_column is not None:
        if spec.id_column not in item:
            raise DataError(f"source {spec.describe()!r}: no id column {spec.id_column!r}")
        return str(item[spec.id_column])
    if "id" in item and item["id"] is not None:
        return str(item["id"])
    return "p" + hashlib.sha256(json.dumps(prompt, sort_keys=True).encode()).hexdigest()[:12]
