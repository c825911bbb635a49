"""Weighted mixes of training sources: `data: [{source: distill, weight: 0.7}, {source: extra.jsonl, weight: 0.3}]`.

DeepSeek-V3's SFT set mixes domains (reasoning data distilled from R1, non-reasoning data from V2.5,
human-checked) in chosen proportions; a trainer stage's `data:` takes such a mix. The weights are the
shares of the mixed set, whose size is the sum of the sources' sizes (or `mix_size`): a source with
fewer rows than its share is repeated (each repeat in a fresh order), one with more is subsampled.
Which rows are picked and their order follow from the recipe's seed only, so a rerun reads the same
mix. A plain string (`data: distill`) is one source, read as before, untouched.
"""

from __future__ import annotations

import random
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from posttrain.core.errors import DataError


class DataSource(BaseModel):
    """One source of a mix: an earlier stage, a local jsonl/parquet file or a hub data set, and its weight."""

    model_config = ConfigDict(extra="forbid")

    source: str
    #: Share of the mixed set, relative to the other sources' weights.
    weight: float = Field(1.0, gt=0)
    #: File in an earlier stage's folder (default: the stage's `data_file`).
    data_file: str | None = None
    #: Split of a hub data set (default: the stage's `split`).
    split: str | None = None


def source_refs(data: str | list[DataSource]) -> list[str]:
    """The names a `data:` value reads (stage names, paths or hub names)."""
    return [data] if isinstance(data, str) else [s.source for s in data]


def shares(weights: list[float], total: int) -> list[int]:
    """Row counts per source: `total` split in proportion to `weights` (largest remainders get the leftovers).

    >>> shares([0.7, 0.3], 10), shares([1, 1, 1], 10)
    ([7, 3], [4, 3, 3])
    """
    exact = [w / sum(weights) * total for w in weights]
    counts = [int(x) for x in exact]
    order = sorted(range(len(exact)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return counts


def pick(n_rows: int, count: int, rng: random.Random) -> list[int]:
    """`count` row indices out of `n_rows`: a shuffled pass over all rows, repeated (reshuffled) as needed."""
    out: list[int] = []
    while len(out) < count:
        order = list(range(n_rows))
        rng.shuffle(order)
        out += order[: count - len(out)]
    return out


def mix(parts: list[tuple[str, Any]], weights: list[float], seed: int,
        total: int | None = None) -> tuple[Any, list[int]]:
    """(mixed `datasets.Dataset`, rows taken from each source) from (name, dataset) pairs; the columns every
    source has.

    Deterministic in `seed`: the same sources and weights give the same rows in the same order.
    """
    import datasets

    empty = [name for name, ds in parts if len(ds) == 0]
    if empty:
        raise DataError(f"data mix: source(s) {empty} have no rows")
    common = [c for c in parts[0][1].column_names if all(c in ds.column_names for _, ds in parts)]
    if not common:
        raise DataError("data mix: the sources share no column: " +
                        "; ".join(f"{name}: {ds.column_names}" for name, ds in parts))
    total = total if total is not None else sum(len(ds) for _, ds in parts)
    counts = shares(weights, total)
    chosen = []
    for i, ((name, ds), count) in enumerate(zip(parts, counts, strict=True)):
        rng = random.Random(f"mix-{seed}-{i}-{name}")
        chosen.append(ds.select_columns(common).select(pick(len(ds), count, rng)))
    try:
        mixed = datasets.concatenate_datasets([ds for ds in chosen if len(ds)])
    except ValueError as exc:
        raise DataError(f"data mix: the sources' shared columns {common} differ in type: {exc}") from None
    order = list(range(len(mixed)))
    random.Random(f"mix-{seed}").shuffle(order)
    return mixed.select(order), counts

