"""The preset registry and what every preset shares: names, local files in the hub shape, plugins, options."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from posttrain.core.errors import DataError, PluginError
from posttrain.eval_presets import Benchmark, benchmark_names, get_benchmark, read_rows


class Echo(Benchmark):
    """A plugin preset: every row's `q` as the prompt, scored by `math` against `a`; rows without `q` left out."""

    name = "echo"
    title = "Echo"
    source = "nobody/echo"

    def convert(self, row: dict[str, Any], index: int) -> dict[str, Any] | None:
        return {"id": row.get("id", f"echo-{index}"), "prompt": row["q"], "solution": row["a"]} if "q" in row else None

    def rewards(self) -> list[dict[str, Any]]:
        return [{"name": "math"}]


def test_the_contract_names() -> None:
    assert benchmark_names() == sorted(["math500", "aime24", "gsm8k", "gpqa", "mmlu", "humaneval", "livecodebench"])
    with pytest.raises(PluginError, match="unknown benchmark 'math50': expected one of aime24, gpqa"):
        get_benchmark("math50")
    with pytest.raises(ValidationError, match="style"):
        get_benchmark("humaneval", {"style": "chatty"})
    with pytest.raises(ValidationError, match="Extra inputs"):
        get_benchmark("math500", {"shuffle_seed": 1})


def test_a_plugin_preset_with_limit_ids_and_skipped_rows(tmp_path: Path) -> None:
    rows = [{"q": "1+1?", "a": "2", "id": 7}, {"skip": True}, {"q": "2+2?", "a": "4", "id": 7}, {"q": "3?", "a": "3"}]
    data = tmp_path / "echo.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    preset = get_benchmark("tests.posttrain.eval_presets.test_presets:Echo")
    out = preset.rows(data)
    assert [r["id"] for r in out] == ["7", "7#2", "echo-3"]  # ids are unique strings
    assert [r["prompt"] for r in preset.rows(data, limit=2)] == ["1+1?", "2+2?"]  # the limit counts kept rows
    with pytest.raises(PluginError, match=r"not a posttrain\.eval_presets\.Benchmark"):
        get_benchmark("json:loads")
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"skip": 1}) + "\n")
    with pytest.raises(DataError, match="no rows to evaluate"):
        preset.rows(empty)


def test_local_files_in_every_format(tmp_path: Path) -> None:
    import datasets

    rows = [{"q": "a", "n": 1}, {"q": "b", "n": 2}]
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "r.json").write_text(json.dumps(rows))
    with gzip.open(tmp_path / "r.jsonl.gz", "wt") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "r.parquet"))
    for name in ("r.jsonl", "r.json", "r.jsonl.gz", "r.parquet"):
        assert read_rows(tmp_path / name) == rows, name
    (tmp_path / "bad.jsonl").write_text('{"q": 1}\nnot json\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2: not valid JSON"):
        read_rows(tmp_path / "bad.jsonl")
