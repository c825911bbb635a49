from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_pipelines.sources import SourceSpec, load_rows, read_file
from posttrain.core.errors import DataError

ROWS = [
    {"problem": "Compute 1+2.", "answer": "3", "level": 1, "uid": "a"},
    {"problem": "Compute 3+4.", "answer": "7", "level": 2, "uid": "b"},
    {"problem": "Compute 1+2.", "answer": "3", "level": 1, "uid": "c"},  # repeats the first prompt
]


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_function_source_with_column_mapping() -> None:
    spec = SourceSpec(function="tests.data_pipelines.plugins:few_prompts", kwargs={"n": 3, "offset": 1},
                      columns={"prompt": "question", "solution": "answer"}, id_column="uid")
    rows = load_rows(spec)
    assert rows[0] == {"id": "q1", "prompt": "Compute 1+2.", "solution": "3", "difficulty": 1}
    assert [r["id"] for r in rows] == ["q1", "q2", "q3"]


def test_keep_limits_the_carried_columns(tmp_path: Path) -> None:
    spec = SourceSpec(path=str(_jsonl(tmp_path / "d.jsonl", ROWS)), columns={"prompt": "problem", "solution": "answer"},
                      keep=[])
    rows = load_rows(spec)
    assert [set(r) for r in rows] == [{"id", "prompt", "solution"}] * 2
    # Without an id column the id is a hash of the prompt: stable across runs and row orders.
    assert rows[0]["id"] == load_rows(spec)[0]["id"] and rows[0]["id"] != rows[1]["id"]


def test_repeated_prompts_are_dropped(tmp_path: Path) -> None:
    rows = load_rows(SourceSpec(path=str(_jsonl(tmp_path / "d.jsonl", ROWS)), columns={"prompt": "problem"},
                                id_column="uid"))
    assert [r["id"] for r in rows] == ["a", "b"]
    assert rows[1] == {"id": "b", "prompt": "Compute 3+4.", "answer": "7", "level": 2}


def test_parquet_and_json_files(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "d.parquet")
    (tmp_path / "d.json").write_text(json.dumps(ROWS))
    for name in ("d.parquet", "d.json"):
        rows = load_rows(SourceSpec(path=str(tmp_path / name), columns={"prompt": "problem", "solution": "answer"},
                                    id_column="uid", limit=2))
        assert [(r["id"], r["prompt"], r["solution"], r["level"]) for r in rows] == [
            ("a", "Compute 1+2.", "3", 1), ("b", "Compute 3+4.", "7", 2)]


def test_datasets_source_goes_through_load_dataset(tmp_path: Path) -> None:
    folder = tmp_path / "my_dataset"
    folder.mkdir()
    _jsonl(folder / "train.jsonl", ROWS[:2])
    _jsonl(folder / "test.jsonl", ROWS[2:])
    spec = SourceSpec(dataset=str(folder), split="test", columns={"prompt": "problem", "solution": "answer"},
                      id_column="uid")
    assert load_rows(spec) == [{"id": "c", "prompt": "Compute 1+2.", "solution": "3", "level": 1}]


def test_unloadable_dataset_is_a_data_error() -> None:
    with pytest.raises(DataError, match="cannot load data set 'no-such-org/no-such-set'"):
        load_rows(SourceSpec(dataset="no-such-org/no-such-set"))


def test_chat_prompts_and_prompt_template(tmp_path: Path) -> None:
    chat = [{"role": "user", "content": "Compute 1+2."}]
    rows = load_rows(SourceSpec(path=str(_jsonl(tmp_path / "d.jsonl", [{"prompt": chat}, {"prompt": "Compute 2+2."}])),
                                prompt_template="{prompt} Put the answer in \\boxed{}."))
    assert rows[0]["prompt"] == chat
    assert rows[1]["prompt"] == "Compute 2+2. Put the answer in \\boxed{}."


def test_missing_column_names_the_column_and_the_fix(tmp_path: Path) -> None:
    spec = SourceSpec(path=str(_jsonl(tmp_path / "d.jsonl", ROWS)), columns={"solution": "answer"})
    with pytest.raises(DataError, match=r"no column 'prompt' \(columns: problem, answer, level, uid\); fix 'columns:'"):
        load_rows(spec)


def test_bad_rows_are_data_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="prompt must be a string or a list"):
        load_rows(SourceSpec(path=str(_jsonl(tmp_path / "a.jsonl", [{"prompt": 3}]))))
    with pytest.raises(DataError, match="share the id 'x'"):
        load_rows(SourceSpec(path=str(_jsonl(tmp_path / "b.jsonl", [{"prompt": "a", "id": "x"},
                                                                       {"prompt": "b", "id": "x"}]))))
    bad = tmp_path / "c.jsonl"
    bad.write_text('{"prompt": "a"}\n{oops\n')
    with pytest.raises(DataError, match=r"c.jsonl:2: not valid JSON"):
        read_file(bad)
    with pytest.raises(DataError, match="does not exist"):
        read_file(tmp_path / "nope.jsonl")
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(DataError, match="unsupported type"):
        read_file(tmp_path / "d.txt")
    with pytest.raises(DataError, match="has no rows"):
        load_rows(SourceSpec(path=str(_jsonl(tmp_path / "e.jsonl", []))))


def test_spec_needs_exactly_one_origin() -> None:
    with pytest.raises(ValueError, match="exactly one of"):
        SourceSpec()
    with pytest.raises(ValueError, match="exactly one of"):
        SourceSpec(path="a.jsonl", function="m:f")
    with pytest.raises(ValueError, match="written by posttrain"):
        SourceSpec(path="a.jsonl", columns={"completion": "x"})
    with pytest.raises(ValueError, match="must contain"):
        SourceSpec(path="a.jsonl", prompt_template="no placeholder")
