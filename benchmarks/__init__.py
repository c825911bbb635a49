"""Benchmarks: each module measures one thing side by side with the reference it is compared with.

`make bench` (`python -m benchmarks.run`) runs every module here that defines

    def run(quick: bool = False) -> dict

and prints one table. The returned dict (see README.md in this folder) is::

    {"rows": [{"name": str, "ours": float | None, "reference": float | None, "unit": str,
               "higher_is_better": bool, "ratio": float | None, "note": str}, ...],
     "params": {...},      # optional: the sizes used (rows, workers, steps...), to compare runs
     "details": {...},     # optional: anything else worth keeping in the JSON
     "skipped": str}       # optional, instead of rows: why nothing was measured (e.g. no bwrap)

Only `name`, `ours` and `unit` are required in a row. `ratio` defaults to ours / reference;
`higher_is_better` defaults to True for rates (a unit ending in "/s") and False otherwise.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, TypedDict


class Row(TypedDict, total=False):
    """One measured figure and its reference; `ratio` is ours / reference unless given."""

    name: str
    ours: float | None
    reference: float | None
    unit: str
    higher_is_better: bool
    ratio: float | None
    note: str


class Result(TypedDict, total=False):
    rows: list[Row]
    params: dict[str, Any]
    details: dict[str, Any]
    skipped: str


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """torch on one thread while measuring: fair on a shared 2-core machine, restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
